//! The write path: every client command reaches the Raft leader, where many
//! commands share one log entry (group commit: one append, one fsync on each
//! node for the whole batch) and several entries are in flight at once
//! (pipelining).
//!
//! ```text
//!  handler ─ submit(cmd) ─┬─ this node leads ──> batcher queue ──> Batch{stamp,[cmd..]} ──> raft.client_write
//!                         └─ another node leads ──> forwarder queue ──> Peer.ForwardBatch([cmd..]) ──> (leader) batcher queue
//! ```
//!
//! A follower forwards in batches too: every command that queued up while
//! the previous call was being made goes in one `ForwardBatch` call (one
//! HTTP/2 stream, one TLS record train, one wake-up on each side, instead of
//! one of each per command); several calls may be in flight at once. A leader
//! whose build lacks `ForwardBatch` (a rolling upgrade) answers UNIMPLEMENTED
//! and then gets the commands one `Forward` call each.
//!
//! Every command is safe to retry: sends are deduplicated by message id,
//! registrations are idempotent or rejected the same way, acks remove what
//! is there, and the commands that are not idempotent (prekey claims and
//! uploads) travel as `Command::Once` with a request id, so a retry is
//! answered from the replicated window instead of applied again (from
//! cluster version 2 on; before that a retried claim could consume a second
//! key, never hand one out twice). So a write whose outcome is unknown
//! (leader lost mid-flight) is retried on the next leader.
//!
//! Time: the batcher stamps each entry with the leader's clock, bounded so
//! that a clock that jumps cannot drag the replicated clock with it (see
//! [`LeaderClock`]); an idle leader still writes an empty entry every
//! [`IDLE_TICK`], which runs due expiries and keeps the replicated clock
//! close to real time.

use crate::peers::PeerPool;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::error::{ClientWriteError, RaftError};
use router_core::{Batch, Command, Outcome};
use router_raft::{NodeAddr, NodeId, Raft};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// An idle leader proposes an empty entry this often (well under
/// `router_core::version::MAX_CLOCK_STEP_MS`, so a new leader's first stamp
/// is never held back by the step bound).
pub const IDLE_TICK: Duration = Duration::from_secs(2);

/// How long a write may wait for a leader before the caller hears UNAVAILABLE.
const LEADER_WAIT: Duration = Duration::from_secs(8);
/// A node that lost its leader and has found none for this many election
/// timeouts (failed elections one after another: a follower cut off in a
/// minority, or the cluster has lost its quorum) stops holding clients'
/// writes for `LEADER_WAIT` and answers UNAVAILABLE at once, so they move to
/// a node that can serve them instead of waiting out their own timeout here.
/// Not covered: a leader cut off in a minority (openraft 0.9 leaders do not
/// step down on losing their quorum, so it never becomes leaderless). The
/// clock starts at the first leader this process saw (a restarted node
/// restores its last vote, and with it that leader); the node's own startup
/// writes use `submit_patiently` and always wait.
const LEADERLESS_ELECTIONS: u32 = 5;
/// ... but never less than this (normal elections, with a few split votes,
/// end well within it).
const MIN_LEADERLESS_GRACE: Duration = Duration::from_secs(1);

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

type Reply = oneshot::Sender<Result<Outcome, WriteError>>;

/// A command on its way to the leader, with the trace context of the request
/// that made it (a batch mixes requests of many traces).
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedCommand {
    pub traceparent: Option<String>,
    pub command: Command,
}

struct Forwarded {
    item: ForwardedCommand,
    reply: Reply,
}

/// Commands a follower puts in one `ForwardBatch` call at most.
pub const FORWARD_BATCH_COMMANDS: usize = 256;
/// Commands a leader takes in one `ForwardBatch` call at most: far above what
/// this build sends, so that a later build may send more without being
/// refused mid-upgrade (the peer message limit bounds the bytes anyway).
pub const FORWARD_BATCH_ACCEPTED: usize = 65_536;
/// Encoded commands in one Raft entry at most (a single larger command still
/// goes, alone): openraft gives each AppendEntries call one heartbeat
/// interval, so an entry must cross the network well within it.
const ENTRY_BYTES: u64 = 1 << 20;
/// Encoded commands in one `ForwardBatch` call at most, well under the peer
/// message limit (`PEER_MAX_MESSAGE_BYTES`, 64 MiB); a single larger command
/// still goes, alone.
const FORWARD_BATCH_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct Writer {
    node_id: NodeId,
    raft: Raft,
    queue: mpsc::Sender<Pending>,
    /// Commands for the leader, when another node leads (see the module docs).
    forward_queue: mpsc::Sender<Forwarded>,
    /// While true the batcher proposes nothing new (leadership transfer:
    /// appends would keep the followers' leader lease alive).
    paused: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Since when this node has known no leader after knowing one (None
    /// while it knows one), kept by `observe_leader`.
    leaderless: std::sync::Arc<std::sync::Mutex<Leaderless>>,
    /// See `LEADERLESS_ELECTIONS`.
    leaderless_grace: Duration,
    /// The local replica: its cluster version decides whether
    /// non-idempotent commands go as `Command::Once`.
    state: std::sync::Arc<std::sync::RwLock<router_core::State>>,
    /// Random per process: with `request_seq`, ids no other write shares.
    request_origin: u64,
    request_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Writer {
    /// Starts the batcher task; it ends when every `Writer` clone is dropped.
    pub fn start(
        node_id: NodeId,
        raft: Raft,
        peers: PeerPool,
        state: std::sync::Arc<std::sync::RwLock<router_core::State>>,
        max_commands: usize,
        max_in_flight: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_commands * max_in_flight * 4);
        let (paused, paused_rx) = tokio::sync::watch::channel(false);
        let batcher = Batcher { node_id, raft: raft.clone(), state: state.clone(), max_commands, max_in_flight };
        crate::spawn(batcher.run(rx, paused_rx));
        let (forward_tx, forward_rx) = mpsc::channel(FORWARD_BATCH_COMMANDS * 16);
        crate::spawn(run_forwarder(node_id, raft.clone(), peers, forward_rx));
        let election_timeout = Duration::from_millis(raft.config().election_timeout_max);
        Writer {
            node_id,
            raft,
            queue: tx,
            forward_queue: forward_tx,
            paused: std::sync::Arc::new(paused),
            leaderless: Default::default(),
            leaderless_grace: (election_timeout * LEADERLESS_ELECTIONS).max(MIN_LEADERLESS_GRACE),
            state,
            request_origin: rand::random(),
            request_seq: Default::default(),
        }
    }

    /// `command` as it goes into the log: wrapped in `Command::Once` when
    /// applying it twice would differ from applying it once and the cluster
    /// applies `Once` (version 2), so every retry of this write shares one id.
    fn once(&self, command: Command) -> Command {
        // Sends (the hot path) are idempotent already: no state lock for them.
        if !command.is_not_idempotent() || self.state.read().map_or(0, |s| s.cluster_version()) < 2 {
            return command;
        }
        let seq = self.request_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = router_core::RequestId { origin: self.request_origin, seq };
        Command::Once { request, command: Box::new(command) }
    }

    /// Told by the node's one Raft watcher (`node::watch_raft_role`) on each
    /// change of role, term or leader.
    pub(crate) fn observe_leader(&self, has_leader: bool) {
        let mut l = self.leaderless.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        l.seen_a_leader |= has_leader;
        match (has_leader, l.since) {
            (true, _) => l.since = None,
            (false, None) if l.seen_a_leader => l.since = Some(tokio::time::Instant::now()),
            (false, _) => {}
        }
    }

    /// This node lost its leader longer ago than a run of elections takes:
    /// waiting for one here is likely to outlast the caller.
    fn leaderless_too_long(&self) -> bool {
        let since = self.leaderless.lock().unwrap_or_else(std::sync::PoisonError::into_inner).since;
        since.is_some_and(|t| t.elapsed() >= self.leaderless_grace)
    }

    /// Holds (or releases) new proposals; queued commands wait.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Commits `command` through the leader and returns its outcome: a
    /// client's write, answered NO_LEADER at once when this node has been
    /// leaderless too long (see `LEADERLESS_ELECTIONS`).
    pub async fn submit(&self, command: Command) -> Result<Outcome, WriteError> {
        self.submit_within(command, true).await
    }

    /// As `submit`, but always waits up to `LEADER_WAIT` for a leader: the
    /// node's own writes at startup (bootstrap, joining, onboarding the
    /// configured providers), which are not retried by a client and are
    /// meant for the leader that is about to be elected.
    pub async fn submit_patiently(&self, command: Command) -> Result<Outcome, WriteError> {
        self.submit_within(command, false).await
    }

    async fn submit_within(&self, command: Command, answer_fast_when_leaderless: bool) -> Result<Outcome, WriteError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let command = self.once(command);
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            let attempt = match leader {
                Some(id) if id == self.node_id => self.submit_local(command.clone()).await,
                Some(_) => self.forward(command.clone()).await,
                None => Err(WriteError::NoLeader),
            };
            match attempt {
                Err(WriteError::NoLeader) if answer_fast_when_leaderless && self.leaderless_too_long() => {
                    return Err(WriteError::NoLeader);
                }
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

    /// Hands a command to the forwarder (which sends it to the leader of the
    /// moment) and waits for its outcome.
    async fn forward(&self, command: Command) -> Result<Outcome, WriteError> {
        let (reply, rx) = oneshot::channel();
        let item = ForwardedCommand { traceparent: crate::telemetry::current_traceparent(), command };
        self.forward_queue.send(Forwarded { item, reply }).await.map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }
}

/// When this node last went from knowing a leader to knowing none (None
/// while it knows one, and before it first knew one).
#[derive(Default)]
struct Leaderless {
    since: Option<tokio::time::Instant>,
    seen_a_leader: bool,
}

/// One task takes forwarded commands off the queue: whatever queued up
/// (bounded by count and size) goes to the current leader in one call, made
/// on its own task so the next batch need not wait for this one's answer.
async fn run_forwarder(node_id: NodeId, raft: Raft, peers: PeerPool, mut rx: mpsc::Receiver<Forwarded>) {
    // The leader (node, term) that answered UNIMPLEMENTED (an older build):
    // one call per command for the rest of that term; a new term asks again,
    // since a rolling upgrade restarts the old leader with the new build.
    let legacy: std::sync::Arc<std::sync::Mutex<Option<(NodeId, u64)>>> = Default::default();
    while let Some(first) = rx.recv().await {
        let batch = take_queued(&mut rx, first, FORWARD_BATCH_COMMANDS, FORWARD_BATCH_BYTES, |p| &p.item);
        let (leader, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        let Some(leader) = leader.filter(|l| *l != node_id) else {
            // Leadership moved here or is being decided: the caller retries.
            for p in batch {
                let _ = p.reply.send(Err(WriteError::NotLeader { leader: None }));
            }
            continue;
        };
        let (raft, peers, legacy) = (raft.clone(), peers.clone(), legacy.clone());
        crate::spawn(async move {
            let (commands, replies): (Vec<ForwardedCommand>, Vec<Reply>) =
                batch.into_iter().map(|p| (p.item, p.reply)).unzip();
            let lock = || legacy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let batched = if *lock() == Some((leader, term)) {
                None
            } else {
                match forward_batch(&raft, &peers, leader, &commands).await {
                    Ok(answers) => Some(answers),
                    Err(ForwardFailure::Write(e)) => Some(vec![Err(e); commands.len()]),
                    Err(ForwardFailure::Unimplemented) => {
                        tracing::warn!(
                            leader_id = leader,
                            "leader has no ForwardBatch (an older build, mid-upgrade?): forwarding one by one"
                        );
                        *lock() = Some((leader, term));
                        None
                    }
                }
            };
            let answers = match batched {
                Some(answers) => answers,
                None => futures::future::join_all(commands.iter().map(|c| forward_one(&raft, &peers, leader, c))).await,
            };
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        });
    }
}

/// `first` and whatever else is already queued, up to `max_items` items and
/// (checked before each addition) `max_bytes` of encoded `payload`: one
/// group commit on the leader, one forward call on a follower.
fn take_queued<T, P: Serialize>(
    rx: &mut mpsc::Receiver<T>,
    first: T,
    max_items: usize,
    max_bytes: u64,
    payload: impl Fn(&T) -> &P,
) -> Vec<T> {
    let mut bytes = bincode::serialized_size(payload(&first)).unwrap_or(0);
    let mut taken = vec![first];
    while taken.len() < max_items && bytes < max_bytes {
        let Ok(next) = rx.try_recv() else { break };
        bytes += bincode::serialized_size(payload(&next)).unwrap_or(0);
        taken.push(next);
    }
    taken
}

enum ForwardFailure {
    /// The leader's build predates `ForwardBatch`.
    Unimplemented,
    Write(WriteError),
}

/// Resolves once `leader` is no longer the leader this node knows: a dead
/// leader's address may not even refuse connections (it just hangs).
async fn leader_changed(raft: &Raft, leader: NodeId) {
    let mut metrics = raft.metrics();
    loop {
        if metrics.changed().await.is_err() {
            return;
        }
        if metrics.borrow().current_leader != Some(leader) {
            return;
        }
    }
}

/// The leader's client and the payload format for `commands`.
fn leader_client(
    raft: &Raft,
    peers: &PeerPool,
    leader: NodeId,
) -> Result<router_proto::v1::peer_client::PeerClient<tonic::transport::Channel>, WriteError> {
    let addr = raft.metrics().borrow().membership_config.membership().get_node(&leader).cloned();
    let Some(addr) = addr else { return Err(WriteError::NoLeader) };
    peers.client(leader, &addr.peer).map_err(|_| WriteError::NoLeader)
}

fn format_of<'a>(commands: impl IntoIterator<Item = &'a Command>) -> u8 {
    router_raft::commands_format(commands)
}

/// Sends `commands` to `leader` in one `ForwardBatch` call; one answer per
/// command, in order.
async fn forward_batch(
    raft: &Raft,
    peers: &PeerPool,
    leader: NodeId,
    commands: &[ForwardedCommand],
) -> Result<Vec<Result<Outcome, WriteError>>, ForwardFailure> {
    let mut client = leader_client(raft, peers, leader).map_err(ForwardFailure::Write)?;
    let data = bincode::serialize(commands).map_err(|e| ForwardFailure::Write(WriteError::Raft(e.to_string())))?;
    let format = format_of(commands.iter().map(|c| &c.command));
    // Each command carries its own trace context; the call has none.
    let request = tonic::Request::new(crate::network::payload_at(format, data));
    let answer = tokio::select! {
        answer = client.forward_batch(request) => answer,
        () = leader_changed(raft, leader) => return Err(ForwardFailure::Write(WriteError::NotLeader { leader: None })),
    };
    match answer {
        Ok(resp) => {
            let resp = resp.into_inner();
            crate::network::check_format(&resp).map_err(|e| ForwardFailure::Write(WriteError::Raft(e)))?;
            let answers: Vec<Result<Outcome, WriteError>> = bincode::deserialize(&resp.data)
                .map_err(|e| ForwardFailure::Write(WriteError::Raft(format!("decode forward answer: {e}"))))?;
            if answers.len() != commands.len() {
                let e = format!("forward answer has {} results for {} commands", answers.len(), commands.len());
                return Err(ForwardFailure::Write(WriteError::Raft(e)));
            }
            Ok(answers)
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => Err(ForwardFailure::Unimplemented),
        // The leader refused the call itself (a format it cannot read, a
        // malformed batch): retrying cannot help.
        Err(status) if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition) => {
            Err(ForwardFailure::Write(WriteError::Raft(format!("leader refused the forward: {}", status.message()))))
        }
        // The leader is unreachable or just died: wait for the next one.
        Err(status) => {
            tracing::debug!(leader_id = leader, %status, "forward failed; retrying");
            Err(ForwardFailure::Write(WriteError::NotLeader { leader: None }))
        }
    }
}

/// One command in one `Forward` call (leaders of older builds).
async fn forward_one(
    raft: &Raft,
    peers: &PeerPool,
    leader: NodeId,
    forwarded: &ForwardedCommand,
) -> Result<Outcome, WriteError> {
    let mut client = leader_client(raft, peers, leader)?;
    let command = &forwarded.command;
    let data = bincode::serialize(command).map_err(|e| WriteError::Raft(e.to_string()))?;
    let mut request = tonic::Request::new(crate::network::payload_at(format_of([command]), data));
    if let Some(tp) = &forwarded.traceparent
        && let Ok(value) = tp.parse()
    {
        request.metadata_mut().insert("traceparent", value);
    }
    let answer = tokio::select! {
        answer = client.forward(request) => answer,
        () = leader_changed(raft, leader) => return Err(WriteError::NotLeader { leader: None }),
    };
    match answer {
        Ok(resp) => {
            let resp = resp.into_inner();
            crate::network::check_format(&resp).map_err(WriteError::Raft)?;
            bincode::deserialize::<Result<Outcome, WriteError>>(&resp.data)
                .map_err(|e| WriteError::Raft(format!("decode forward answer: {e}")))?
        }
        Err(status) => {
            tracing::debug!(leader_id = leader, %status, "forward failed; retrying");
            Err(WriteError::NotLeader { leader: None })
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

/// The batcher: one task owns the queue.
struct Batcher {
    node_id: NodeId,
    raft: Raft,
    state: std::sync::Arc<std::sync::RwLock<router_core::State>>,
    max_commands: usize,
    max_in_flight: usize,
}

impl Batcher {
    /// `biased` polling of the in-flight set before taking new work means
    /// each proposal is handed to openraft (on its first poll) before the
    /// next batch is formed, so log order is queue order.
    async fn run(self, mut rx: mpsc::Receiver<Pending>, mut paused: tokio::sync::watch::Receiver<bool>) {
        let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
        let mut clock = LeaderClock::default();
        let mut open = true;
        // The pause switch lives in the writer; when every writer is gone
        // the queue closes too, and this loop ends.
        let mut pause_switch = true;
        let mut last_proposal = tokio::time::Instant::now();
        while open || !in_flight.is_empty() {
            let is_paused = *paused.borrow_and_update();
            let room = in_flight.len() < self.max_in_flight;
            tokio::select! {
                biased;
                Some((result, replies)) = in_flight.next(), if !in_flight.is_empty() => {
                    deliver(result, replies);
                }
                // Watched whether paused or not, and before new work: a pause
                // that comes while this loop waits stops the next proposal
                // (an idle tick included), which a leadership transfer needs.
                changed = paused.changed(), if pause_switch => {
                    pause_switch = changed.is_ok();
                }
                first = rx.recv(), if open && !is_paused && room => {
                    let Some(first) = first else { open = false; continue };
                    let queued = take_queued(&mut rx, first, self.max_commands, ENTRY_BYTES, |p| &p.command);
                    let (commands, replies): (Vec<Command>, Vec<Reply>) =
                        queued.into_iter().map(|p| (p.command, p.reply)).unzip();
                    in_flight.push(self.propose(&mut clock, commands, replies));
                    last_proposal = tokio::time::Instant::now();
                }
                () = tokio::time::sleep_until(last_proposal + IDLE_TICK), if open && !is_paused && room => {
                    last_proposal = tokio::time::Instant::now();
                    if self.is_leader() && !*paused.borrow() {
                        in_flight.push(self.propose(&mut clock, Vec::new(), Vec::new()));
                    }
                }
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    fn propose(&self, clock: &mut LeaderClock, commands: Vec<Command>, replies: Vec<Reply>) -> InFlight {
        let term = self.raft.metrics().borrow().current_term;
        let replicated_ms = self.state.read().map_or(0, |s| s.clock_ms);
        let batch = Batch { stamp_ms: clock.stamp(term, replicated_ms, now_ms(), std::time::Instant::now()), commands };
        let raft = self.raft.clone();
        Box::pin(async move {
            let result = raft.client_write(batch).await.map(|r| r.data).map_err(map_client_write_error);
            (result, replies)
        })
    }
}

/// The stamps one leader writes. The replicated clock is the leader's wall
/// clock, but bounded by what a monotonic clock saw elapse: while a node
/// leads, its stamps advance at least half and at most twice as fast as real
/// time, whatever its wall clock does (a jump of a month forward or back
/// moves the replicated clock by neither); the first stamp of a term lies
/// between the replicated clock and one `MAX_CLOCK_STEP_MS` ahead of it; no
/// stamp is below the replicated clock. A wall clock that is merely off by a
/// little is followed, and one that was set right again is caught up with.
#[derive(Default)]
struct LeaderClock {
    /// (term, last stamp in microseconds, when it was taken).
    last: Option<(u64, u64, std::time::Instant)>,
}

impl LeaderClock {
    fn stamp(&mut self, term: u64, replicated_ms: u64, wall_ms: u64, mono: std::time::Instant) -> u64 {
        let wall_us = wall_ms.saturating_mul(1_000);
        let replicated_us = replicated_ms.saturating_mul(1_000);
        let stamp_us = match self.last {
            Some((t, last_us, at)) if t == term => {
                let elapsed_us = mono.saturating_duration_since(at).as_micros() as u64;
                let low = last_us.saturating_add(elapsed_us / 2);
                let high = last_us.saturating_add(elapsed_us.saturating_mul(2));
                wall_us.clamp(low, high)
            }
            // A new term (or this node's first proposal): from the replicated clock.
            _ if replicated_ms == 0 => wall_us,
            _ => wall_us.clamp(
                replicated_us,
                replicated_us.saturating_add(router_core::version::MAX_CLOCK_STEP_MS.saturating_mul(1_000)),
            ),
        }
        .max(replicated_us);
        self.last = Some((term, stamp_us, mono));
        stamp_us / 1_000
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

#[cfg(test)]
mod tests {
    use super::LeaderClock;
    use router_core::version::MAX_CLOCK_STEP_MS;
    use std::time::{Duration, Instant};

    const DAY_MS: u64 = 24 * 3_600_000;
    const T: u64 = 1_800_000_000_000;

    #[test]
    fn a_correct_clock_is_followed() {
        let mut clock = LeaderClock::default();
        let t0 = Instant::now();
        assert_eq!(clock.stamp(1, T - 500, T, t0), T);
        assert_eq!(clock.stamp(1, T, T + 1_000, t0 + Duration::from_secs(1)), T + 1_000);
        assert_eq!(clock.stamp(1, T, T + 1_250, t0 + Duration::from_millis(1_200)), T + 1_250, "a little drift");
    }

    #[test]
    fn a_jump_forward_or_back_while_leading_is_not_followed() {
        let mut clock = LeaderClock::default();
        let t0 = Instant::now();
        clock.stamp(1, T, T, t0);
        let month_ahead = clock.stamp(1, T, T + 30 * DAY_MS, t0 + Duration::from_secs(1));
        assert_eq!(month_ahead, T + 2_000, "at most twice the elapsed second");
        let back = clock.stamp(1, T, T - DAY_MS, t0 + Duration::from_secs(3));
        assert_eq!(back, T + 2_000 + 1_000, "at least half the elapsed two seconds: time does not stop");
    }

    #[test]
    fn a_new_term_starts_within_one_step_of_the_replicated_clock() {
        let mut clock = LeaderClock::default();
        let t0 = Instant::now();
        assert_eq!(clock.stamp(2, T, T + 30 * DAY_MS, t0), T + MAX_CLOCK_STEP_MS);
        assert_eq!(clock.stamp(3, T + DAY_MS, T, t0), T + DAY_MS, "never below the replicated clock");
        assert_eq!(clock.stamp(4, 0, T, t0), T, "a fresh cluster takes the leader's clock");
    }

    #[test]
    fn frequent_stamps_do_not_lose_time_to_rounding() {
        let mut clock = LeaderClock::default();
        let t0 = Instant::now();
        clock.stamp(1, T, T, t0);
        // A wall clock one second behind, sampled every 300 µs for a second:
        // the stamps still advance by at least half the elapsed time.
        let mut last = 0;
        for i in 1..=3_334u64 {
            last = clock.stamp(1, T, T - 1_000, t0 + Duration::from_micros(300 * i));
        }
        assert!(last >= T + 499, "{}", last - T);
    }
}
