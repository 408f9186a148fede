//! The write path: every client command reaches the Raft leader, where many
//! commands share one log entry (group commit: one append, one fsync on each
//! node for the whole batch) and several entries are in flight at once
//! (pipelining).
//!
//! ```text
//!  handler ─ submit(cmd) ─┬─ this node leads ──> batcher queue ──> Batch{stamp,[cmd..]} ──> raft.client_write
//!                         └─ another node leads ──> Peer.Forward ──> (leader) batcher queue
//! ```
//!
//! Every command is safe to retry: sends are deduplicated by message id,
//! registrations and uploads are idempotent or rejected the same way, acks
//! remove what is there, and a retried prekey claim can at worst consume a
//! second key (never hand one out twice). So a write whose outcome is unknown
//! (leader lost mid-flight) is retried on the next leader.

use crate::peers::PeerPool;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::error::{ClientWriteError, RaftError};
use router_core::{Batch, Command, Outcome};
use router_raft::{NodeAddr, NodeId, Raft};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// How long a write may wait for a leader before the caller hears UNAVAILABLE.
const LEADER_WAIT: Duration = Duration::from_secs(8);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum WriteError {
    #[error("no leader elected; retry")]
    NoLeader,
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, NodeAddr)> },
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("raft failed: {0}")]
    Raft(String),
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, WriteError>>,
}

#[derive(Clone)]
pub struct Writer {
    node_id: NodeId,
    raft: Raft,
    queue: mpsc::Sender<Pending>,
    peers: PeerPool,
    /// While true the batcher proposes nothing new (leadership transfer:
    /// appends would keep the followers' leader lease alive).
    paused: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Writer {
    /// Starts the batcher task; it ends when every `Writer` clone is dropped.
    pub fn start(node_id: NodeId, raft: Raft, peers: PeerPool, max_commands: usize, max_in_flight: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_commands * max_in_flight * 4);
        let (paused, paused_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(run_batcher(raft.clone(), rx, paused_rx, max_commands, max_in_flight));
        Writer { node_id, raft, queue: tx, peers, paused: std::sync::Arc::new(paused) }
    }

    /// Holds (or releases) new proposals; queued commands wait.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Commits `command` through the leader and returns its outcome.
    pub async fn submit(&self, command: Command) -> Result<Outcome, WriteError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            let attempt = match leader {
                Some(id) if id == self.node_id => self.submit_local(command.clone()).await,
                Some(id) => self.forward(id, &command).await,
                None => Err(WriteError::NoLeader),
            };
            match attempt {
                Err(WriteError::NoLeader | WriteError::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Queues a command for this node's batcher (leader side of forwarding).
    pub async fn submit_local(&self, command: Command) -> Result<Outcome, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.queue.send(Pending { command, reply }).await.map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }

    async fn forward(&self, leader: NodeId, command: &Command) -> Result<Outcome, WriteError> {
        let addr = self.raft.metrics().borrow().membership_config.membership().get_node(&leader).cloned();
        let Some(addr) = addr else { return Err(WriteError::NoLeader) };
        let data = bincode::serialize(command).map_err(|e| WriteError::Raft(e.to_string()))?;
        let mut client = self.peers.client(leader, &addr.peer).map_err(|_| WriteError::NoLeader)?;
        let format = if command.is_federation() { router_raft::FORMAT_VERSION } else { router_raft::BASE_FORMAT };
        let mut request = tonic::Request::new(crate::network::payload_at(format, data));
        crate::telemetry::inject(request.metadata_mut());
        // Give up on this leader as soon as another one is known: a dead
        // leader's address may not even refuse connections (it just hangs).
        let mut metrics = self.raft.metrics();
        let leader_changed = async move {
            loop {
                if metrics.changed().await.is_err() {
                    return;
                }
                if metrics.borrow().current_leader != Some(leader) {
                    return;
                }
            }
        };
        let answer = tokio::select! {
            answer = client.forward(request) => answer,
            () = leader_changed => return Err(WriteError::NotLeader { leader: None }),
        };
        match answer {
            Ok(resp) => {
                let resp = resp.into_inner();
                crate::network::check_format(&resp).map_err(WriteError::Raft)?;
                bincode::deserialize::<Result<Outcome, WriteError>>(&resp.data)
                    .map_err(|e| WriteError::Raft(format!("decode forward answer: {e}")))?
            }
            // The leader is unreachable or just died: wait for the next one.
            Err(status) => {
                tracing::debug!(leader, %status, "forward failed; retrying");
                Err(WriteError::NotLeader { leader: None })
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

type InFlight = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (Result<Vec<Outcome>, WriteError>, Vec<oneshot::Sender<Result<Outcome, WriteError>>>),
            > + Send,
    >,
>;

/// One task owns the queue. `biased` polling of the in-flight set before
/// taking new work means each proposal is handed to openraft (on its first
/// poll) before the next batch is formed, so log order is queue order.
async fn run_batcher(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    mut paused: tokio::sync::watch::Receiver<bool>,
    max_commands: usize,
    max_in_flight: usize,
) {
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        let is_paused = *paused.borrow();
        tokio::select! {
            biased;
            Some((result, replies)) = in_flight.next(), if !in_flight.is_empty() => {
                deliver(result, replies);
            }
            _ = paused.changed(), if is_paused => {}
            first = rx.recv(), if open && !is_paused && in_flight.len() < max_in_flight => {
                let Some(first) = first else { open = false; continue };
                let mut commands = Vec::with_capacity(max_commands.min(64));
                let mut replies = Vec::with_capacity(max_commands.min(64));
                commands.push(first.command);
                replies.push(first.reply);
                while commands.len() < max_commands {
                    match rx.try_recv() {
                        Ok(p) => { commands.push(p.command); replies.push(p.reply); }
                        Err(_) => break,
                    }
                }
                let raft = raft.clone();
                let batch = Batch { stamp_ms: now_ms(), commands };
                in_flight.push(Box::pin(async move {
                    let result = raft.client_write(batch).await.map(|r| r.data).map_err(map_client_write_error);
                    (result, replies)
                }));
            }
        }
    }
}

fn deliver(result: Result<Vec<Outcome>, WriteError>, replies: Vec<oneshot::Sender<Result<Outcome, WriteError>>>) {
    match result {
        Ok(outcomes) => {
            debug_assert_eq!(outcomes.len(), replies.len());
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn map_client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            WriteError::NotLeader { leader: f.leader_id.zip(f.leader_node) }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => WriteError::Raft(e.to_string()),
        RaftError::Fatal(f) => WriteError::Raft(f.to_string()),
    }
}
