//! The simulated cluster: N nodes, each a real openraft `Raft` over
//! router-raft's log and state-machine stores on a [`Disk`] that loses
//! unsynced writes on a crash. Elections are driven by the simulation (a
//! seeded failure detector per node) instead of openraft's own randomized
//! timer, whose randomness the seed could not control.

use crate::disk::Disk;
use crate::net::{Net, NetFactory};
use openraft::ServerState;
use rand::Rng;
use rand::rngs::StdRng;
use router_core::State;
use router_raft::{NodeAddr, NodeId, Raft};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tokio::time::Instant;

pub struct SimNode {
    pub id: NodeId,
    pub disk: Disk,
    pub raft: Option<Raft>,
    pub state: Option<Arc<RwLock<State>>>,
    /// Failure detector: when this node last heard a leader, and how long it waits.
    last_heard: Instant,
    patience_ms: u64,
    /// Processes started on this node.
    pub boots: u32,
    /// Disks this node lost (`wipe`): each makes a new incarnation.
    pub wipes: u32,
}

impl SimNode {
    /// The incarnation this node runs as: a new one after every wipe
    /// (routerd draws it at random; here it is derived, to replay).
    pub fn incarnation(&self) -> u64 {
        (self.id << 32) | u64::from(self.wipes + 1)
    }
}

pub struct Cluster {
    pub nodes: Vec<SimNode>,
    pub net: Net,
    config: Arc<openraft::Config>,
    /// Who led each term, as observed; a second leader for a term is a violation.
    pub leaders: BTreeMap<u64, NodeId>,
    pub violations: Vec<String>,
    /// Nodes that lost their disk and are not readmitted yet.
    pub wiped: std::collections::BTreeSet<NodeId>,
    lying_disks: bool,
}

pub(crate) fn addr(id: NodeId) -> NodeAddr {
    NodeAddr { peer: format!("sim-{id}:7412"), provider: format!("sim-{id}:7411") }
}

impl Cluster {
    pub async fn start(n: u64, net: Net, rng: &mut StdRng, lying_disks: bool) -> Cluster {
        let config = openraft::Config {
            cluster_name: "sim".into(),
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            // The simulation triggers elections itself (see `tick`).
            enable_elect: false,
            max_payload_entries: 64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(60),
            max_in_snapshot_log_to_keep: 10,
            install_snapshot_timeout: 2_000,
            ..Default::default()
        }
        .validate()
        .expect("sim raft config");
        let mut c = Cluster {
            nodes: Vec::new(),
            net,
            config: Arc::new(config),
            leaders: BTreeMap::new(),
            violations: Vec::new(),
            wiped: Default::default(),
            lying_disks,
        };
        for id in 1..=n {
            c.nodes.push(SimNode {
                id,
                disk: Disk::new(lying_disks),
                raft: None,
                state: None,
                last_heard: Instant::now(),
                patience_ms: rng.gen_range(300..700),
                boots: 0,
                wipes: 0,
            });
            c.boot(id).await;
        }
        let members: BTreeMap<NodeId, NodeAddr> = (1..=n).map(|id| (id, addr(id))).collect();
        c.raft(1).expect("node 1 up").initialize(members).await.expect("initialize");
        c
    }

    fn node(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node exists")
    }

    pub fn raft(&self, id: NodeId) -> Option<Raft> {
        self.nodes.iter().find(|n| n.id == id).and_then(|n| n.raft.clone())
    }

    pub fn up_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|n| n.raft.is_some()).map(|n| n.id).collect()
    }

    pub fn down_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|n| n.raft.is_none()).map(|n| n.id).collect()
    }

    /// Starts a new incarnation of `id` on what its disk kept. A node that
    /// cannot start on its own disk is a violation (routerd would refuse to run).
    pub async fn boot(&mut self, id: NodeId) {
        if let Err(e) = self.try_boot(id).await {
            self.violations.push(format!("node {id} cannot restart on what its disk kept: {e}"));
        }
    }

    async fn try_boot(&mut self, id: NodeId) -> Result<(), String> {
        let config = self.config.clone();
        let net = self.net.clone();
        let node = self.node(id);
        let (log, sm) = router_raft::open(node.disk.mount()).map_err(|e| e.to_string())?;
        let state = sm.state();
        let raft = Raft::new(id, config, NetFactory { from: id, net: net.clone() }, log, sm)
            .await
            .map_err(|e| e.to_string())?;
        node.raft = Some(raft.clone());
        node.state = Some(state.clone());
        node.boots += 1;
        node.last_heard = Instant::now();
        let incarnation = node.incarnation();
        let mut n = net.lock();
        n.up.insert(id, raft);
        n.incarnations.insert(id, incarnation);
        n.replicas.insert(id, state);
        Ok(())
    }

    /// Power cut on `id`: the network forgets it, its disk drops unsynced
    /// writes beyond `keep`, and the dead incarnation is shut down. Returns how
    /// many writes were lost.
    pub async fn crash(&mut self, id: NodeId, keep: usize) -> usize {
        {
            let mut n = self.net.lock();
            n.up.remove(&id);
            n.replicas.remove(&id);
            n.incarnations.remove(&id);
        }
        let node = self.node(id);
        let lost = node.disk.crash(keep);
        node.state = None;
        if let Some(raft) = node.raft.take() {
            // Its tasks stop at their next await; its disk is fenced meanwhile.
            tokio::spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
        lost
    }

    /// Disk loss on `id`: the process dies, a new empty disk goes in, and
    /// the node starts on it as a new incarnation.
    pub async fn wipe(&mut self, id: NodeId) {
        self.crash(id, 0).await;
        let lying = self.lying_disks;
        let node = self.node(id);
        node.disk = Disk::new(lying);
        node.wipes += 1;
        self.wiped.insert(id);
        self.boot(id).await;
    }

    /// Every node's incarnation, for the setup's `SetIncarnation` commands.
    pub fn incarnations(&self) -> Vec<(NodeId, u64)> {
        self.nodes.iter().map(|n| (n.id, n.incarnation())).collect()
    }

    /// The failure detector and the leader-per-term observer, run every few
    /// milliseconds of simulated time.
    pub async fn tick(&mut self, rng: &mut StdRng) {
        let now = Instant::now();
        let mut leaders_now = Vec::new();
        for n in &self.nodes {
            if let Some(raft) = &n.raft {
                let m = raft.metrics().borrow().clone();
                if m.state == ServerState::Leader {
                    leaders_now.push((n.id, m.current_term));
                }
            }
        }
        for &(id, term) in &leaders_now {
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    self.violations.push(format!("two leaders in term {term}: node {other} and node {id}"))
                }
                _ => {
                    self.leaders.insert(term, id);
                }
            }
        }
        let mut elect = Vec::new();
        for n in &mut self.nodes {
            let Some(raft) = &n.raft else { continue };
            let hears = leaders_now.iter().any(|&(l, _)| l == n.id || self.net.link_up(l, n.id));
            if hears {
                n.last_heard = now;
            } else if now.duration_since(n.last_heard).as_millis() as u64 > n.patience_ms {
                n.last_heard = now;
                n.patience_ms = rng.gen_range(300..700);
                elect.push(raft.clone());
            }
        }
        for raft in elect {
            let _ = raft.trigger().elect().await;
        }
    }

    /// The node every up node agrees leads, if any.
    pub fn agreed_leader(&self) -> Option<NodeId> {
        let mut leader = None;
        for n in &self.nodes {
            let raft = n.raft.as_ref()?;
            let l = raft.metrics().borrow().current_leader?;
            if *leader.get_or_insert(l) != l {
                return None;
            }
        }
        leader.filter(|l| self.raft(*l).is_some())
    }

    /// A snapshot of the replica of `id`, if it is up.
    pub fn state_of(&self, id: NodeId) -> Option<State> {
        let n = self.nodes.iter().find(|n| n.id == id)?;
        let s = n.state.as_ref()?;
        Some(s.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    pub fn applied(&self, id: NodeId) -> Option<u64> {
        let raft = self.raft(id)?;
        let m = raft.metrics().borrow().clone();
        Some(m.last_applied.map_or(0, |l| l.index))
    }

    pub async fn shutdown(&mut self) {
        for n in &mut self.nodes {
            if let Some(raft) = n.raft.take() {
                let _ = raft.shutdown().await;
            }
        }
        let mut n = self.net.lock();
        n.up.clear();
        n.replicas.clear();
    }
}
