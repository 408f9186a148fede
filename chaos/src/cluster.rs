//! Watching a containerized cluster from the host: admin `Status` over each
//! node's published peer port (operator certificate), and the waits built on
//! it. Every wait has a deadline and polls at a fixed interval.
//!
//! Nodes advertise container DNS names (`<prefix>-router-N:7412`) that do not
//! resolve on the host, so nodes are addressed here by id through the layout's
//! published ports, never through the endpoints `Status` lists.

use crate::layout::Layout;
use anyhow::{Result, anyhow, bail};
use router_sdk::admin::AdminConnector;
use router_sdk::v1::{StatusRequest, StatusResponse};
use std::time::Duration;
use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(200);

pub struct ClusterView {
    admin: AdminConnector,
    endpoints: Vec<(u64, String)>,
}

impl ClusterView {
    pub fn new(layout: &Layout) -> Result<ClusterView> {
        let (cert, key) = layout.client_identity("operator-admin")?;
        let mut admin = AdminConnector::new(&layout.ca_pem()?, &cert, &key, "localhost");
        admin.timeout = Duration::from_secs(3);
        let endpoints = layout.nodes.iter().map(|n| (n.id, n.peer_endpoint())).collect();
        Ok(ClusterView { admin, endpoints })
    }

    /// A view of any cluster: `endpoints` are (node id, peer/admin `host:port`).
    pub fn with_endpoints(admin: AdminConnector, endpoints: Vec<(u64, String)>) -> ClusterView {
        ClusterView { admin, endpoints }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.endpoints.iter().map(|(id, _)| *id).collect()
    }

    /// One node's admin `Status` (3 s deadline).
    pub async fn status(&self, id: u64) -> Result<StatusResponse> {
        let (_, endpoint) = self.endpoints.iter().find(|(n, _)| *n == id).ok_or_else(|| anyhow!("no node {id}"))?;
        let mut client = self.admin.client(endpoint)?;
        let call = client.status(StatusRequest {});
        match tokio::time::timeout(Duration::from_secs(4), call).await {
            Ok(Ok(s)) => Ok(s.into_inner()),
            Ok(Err(status)) => Err(anyhow!("node {id}: {}", router_sdk::error::describe(&status))),
            Err(_) => Err(anyhow!("node {id}: no answer within 4 s")),
        }
    }

    /// Waits until every node in `among` answers, all agree on one leader
    /// (itself in `among`) and the voters are exactly `voters`. Returns the leader.
    pub async fn wait_for_leader(&self, among: &[u64], voters: &[u64], timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not asked yet");
        while Instant::now() < deadline {
            match self.agreed_leader(among, voters).await {
                Ok(leader) => return Ok(leader),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(POLL).await;
        }
        bail!("no agreed leader among nodes {among:?} with voters {voters:?} within {timeout:?}: {last}")
    }

    async fn agreed_leader(&self, among: &[u64], voters: &[u64]) -> Result<u64> {
        let mut leader = None;
        for &id in among {
            let s = self.status(id).await?;
            let mut v = voter_ids(&s);
            v.sort_unstable();
            if v != voters {
                bail!("node {id} lists voters {v:?}");
            }
            if !s.has_leader {
                bail!("node {id} knows no leader (role {})", s.role);
            }
            if *leader.get_or_insert(s.leader_id) != s.leader_id {
                bail!("nodes disagree on the leader");
            }
        }
        let leader = leader.ok_or_else(|| anyhow!("no node given"))?;
        if !among.contains(&leader) {
            bail!("the leader, node {leader}, is not among {among:?}");
        }
        Ok(leader)
    }

    /// Asks the current leader to hand leadership to `to` (admin `TransferLeader`).
    pub async fn transfer_leader(&self, to: u64) -> Result<u64> {
        let leader = self.current_leader().await?;
        let (_, endpoint) =
            self.endpoints.iter().find(|(n, _)| *n == leader).ok_or_else(|| anyhow!("no node {leader}"))?;
        let mut client = self.admin.client(endpoint)?;
        let call = client.transfer_leader(router_sdk::v1::TransferLeaderRequest { to_node_id: to });
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(r)) => Ok(r.into_inner().new_leader_id),
            Ok(Err(status)) => Err(anyhow!("node {leader}: {}", router_sdk::error::describe(&status))),
            Err(_) => Err(anyhow!("node {leader}: no answer to TransferLeader within 10 s")),
        }
    }

    /// The leader as any reachable node reports it.
    pub async fn current_leader(&self) -> Result<u64> {
        let mut last = String::from("no node answered");
        for id in self.ids() {
            match self.status(id).await {
                Ok(s) if s.has_leader => return Ok(s.leader_id),
                Ok(_) => last = format!("node {id} knows no leader"),
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("{last}")
    }

    /// Waits until node `id` is a voter again, follows a leader, and has applied
    /// everything the leader had applied when asked in the same round.
    pub async fn wait_caught_up(&self, id: u64, timeout: Duration) -> Result<CaughtUp> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not asked yet");
        while Instant::now() < deadline {
            match self.caught_up_once(id).await {
                Ok(Some(c)) => return Ok(c),
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(POLL).await;
        }
        bail!("node {id} did not catch up within {timeout:?}: {last}")
    }

    async fn caught_up_once(&self, id: u64) -> Result<Option<CaughtUp>> {
        let first = self.status(id).await?;
        if !first.has_leader {
            bail!("node {id} ({}) knows no leader", first.role);
        }
        if !voter_ids(&first).contains(&id) {
            bail!("node {id} is not among the voters it knows: {:?}", voter_ids(&first));
        }
        // The leader is asked before the node's second answer, so "applied >= the
        // leader's" holds even while traffic keeps the leader's index moving.
        let (leader, me) = if first.leader_id == id {
            (first.clone(), first)
        } else {
            let leader = self.status(first.leader_id).await?;
            (leader, self.status(id).await?)
        };
        if !voter_ids(&leader).contains(&id) {
            bail!("the leader (node {}) does not list node {id} as a voter", leader.node_id);
        }
        if me.last_applied_index < leader.last_applied_index {
            bail!("node {id} applied {} < leader's {}", me.last_applied_index, leader.last_applied_index);
        }
        Ok(Some(CaughtUp {
            role: me.role,
            applied: me.last_applied_index,
            leader: leader.node_id,
            leader_applied: leader.last_applied_index,
            voters: voter_ids(&leader),
        }))
    }
}

/// What the rejoined node and its leader reported when it had caught up.
#[derive(Clone, Debug)]
pub struct CaughtUp {
    pub role: String,
    pub applied: u64,
    pub leader: u64,
    pub leader_applied: u64,
    pub voters: Vec<u64>,
}

pub fn voter_ids(s: &StatusResponse) -> Vec<u64> {
    s.voters.iter().map(|v| v.node_id).collect()
}
