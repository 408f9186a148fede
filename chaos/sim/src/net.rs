//! The simulated network: openraft's RPCs between in-process nodes, through
//! links the simulation can cut (both ways or one way), slow down, or make
//! lossy. Every request is bincode-encoded and decoded on the way, as on the
//! wire. Delays and losses are drawn from the seeded RNG, and time is tokio's
//! paused clock, so a seed replays the same schedule.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use rand::Rng;
use rand::rngs::StdRng;
use router_raft::{NodeAddr, NodeId, Raft, TypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the network does right now. Changed only by the simulation's fault schedule.
pub struct NetState {
    pub rng: StdRng,
    /// Running processes by node; a crashed node has none.
    pub up: BTreeMap<NodeId, Raft>,
    /// The incarnation each up node runs as (a wiped disk makes a new one).
    pub incarnations: BTreeMap<NodeId, u64>,
    /// Whether calls from, and answers by, an incarnation the receiving
    /// replica did not record are refused (as routerd does); off only for
    /// the checker's own test (`amnesia` without it must lose an entry).
    pub check_incarnations: bool,
    /// Each up node's replica of the state machine, for reads (as a node serves them).
    pub replicas: BTreeMap<NodeId, Arc<std::sync::RwLock<router_core::State>>>,
    /// Directed links that drop everything: (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Probability that one message is lost.
    pub loss: f64,
    /// Base one-way delay range, milliseconds.
    pub delay_ms: (u64, u64),
    /// Extra one-way delay on every message to or from a node (a slow link).
    pub slow_ms: BTreeMap<NodeId, u64>,
    pub sent: u64,
    pub dropped: u64,
}

#[derive(Clone)]
pub struct Net(pub Arc<Mutex<NetState>>);

/// The fate of one message, decided when it is sent.
enum Fate {
    Arrives { after: Duration, to: Option<Raft> },
    Lost,
}

impl Net {
    pub fn new(rng: StdRng) -> Net {
        Net(Arc::new(Mutex::new(NetState {
            rng,
            up: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            check_incarnations: true,
            replicas: BTreeMap::new(),
            cut: BTreeSet::new(),
            loss: 0.0,
            delay_ms: (1, 5),
            slow_ms: BTreeMap::new(),
            sent: 0,
            dropped: 0,
        })))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        let s = self.lock();
        s.up.contains_key(&from) && s.up.contains_key(&to) && !s.cut.contains(&(from, to))
    }

    /// Whether the replica of `at` takes traffic from `node` running as
    /// `incarnation` (router-core's record; a node that is down takes nothing
    /// anyway).
    fn admits(&self, at: NodeId, node: NodeId, incarnation: u64) -> bool {
        let s = self.lock();
        if !s.check_incarnations {
            return true;
        }
        let Some(replica) = s.replicas.get(&at) else { return true };
        replica.read().unwrap_or_else(std::sync::PoisonError::into_inner).admits_incarnation(node, incarnation)
    }

    fn incarnation(&self, node: NodeId) -> u64 {
        self.lock().incarnations.get(&node).copied().unwrap_or(0)
    }

    fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        let mut s = self.lock();
        s.sent += 1;
        let broken = !s.up.contains_key(&from) || !s.up.contains_key(&to) || s.cut.contains(&(from, to));
        let loss = s.loss;
        if broken || (loss > 0.0 && s.rng.gen_bool(loss)) {
            s.dropped += 1;
            return Fate::Lost;
        }
        let (lo, hi) = s.delay_ms;
        let base = s.rng.gen_range(lo..=hi);
        let extra = s.slow_ms.get(&from).copied().unwrap_or(0) + s.slow_ms.get(&to).copied().unwrap_or(0);
        Fate::Arrives { after: Duration::from_millis(base + extra), to: s.up.get(&to).cloned() }
    }

    /// One request/response exchange from `from` to `to`: the request and
    /// the answer each travel (or are lost) on their own.
    async fn exchange<Req, Resp, E, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        ttl: Duration,
        req: &Req,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>
    where
        Req: Serialize + DeserializeOwned,
        E: std::error::Error,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, RaftError<NodeId, E>>>,
    {
        let unreachable =
            |what: &str| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(what.to_string())));
        let wire = bincode::serialize(req).expect("encode request");
        let sender = self.incarnation(from);
        let Fate::Arrives { after, to: Some(raft) } = self.fate(from, to) else {
            tokio::time::sleep(ttl).await;
            return Err(unreachable("request lost"));
        };
        tokio::time::sleep(after).await;
        if !self.admits(to, from, sender) {
            tokio::time::sleep(ttl).await;
            return Err(unreachable("refused: a stale incarnation"));
        }
        let answerer = self.incarnation(to);
        let decoded: Req = bincode::deserialize(&wire).expect("decode request");
        let answer = match tokio::time::timeout(ttl, call(raft, decoded)).await {
            Ok(a) => a,
            Err(_) => return Err(unreachable("no answer in time")),
        };
        match self.fate(to, from) {
            Fate::Arrives { after, .. } => tokio::time::sleep(after).await,
            Fate::Lost => {
                tokio::time::sleep(ttl).await;
                return Err(unreachable("answer lost"));
            }
        }
        if !self.admits(from, to, answerer) {
            return Err(unreachable("discarded: an answer by a stale incarnation"));
        }
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
    }
}

pub struct NetFactory {
    pub from: NodeId,
    pub net: Net,
}

impl RaftNetworkFactory<TypeConfig> for NetFactory {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &NodeAddr) -> Conn {
        Conn { from: self.from, to: target, net: self.net.clone() }
    }
}

pub struct Conn {
    from: NodeId,
    to: NodeId,
    net: Net,
}

/// openraft's ttl for heartbeats is short; a lost message costs at most this much.
fn ttl(option: &RPCOption) -> Duration {
    option.hard_ttl().min(Duration::from_millis(500))
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.net.exchange(self.from, self.to, ttl(&option), &rpc, |r, q| async move { r.append_entries(q).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.net
            .exchange(self.from, self.to, ttl(&option), &rpc, |r, q| async move { r.install_snapshot(q).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.net.exchange(self.from, self.to, ttl(&option), &rpc, |r, q| async move { r.vote(q).await }).await
    }
}
