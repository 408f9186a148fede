//! The recorded history of a run: every client operation with its start and
//! end (ms since the scenario's clock started) and its outcome, every entry
//! the receiver was handed, every fault. Checked offline by [`crate::checker`].
//!
//! Outcomes follow the Jepsen convention: `ok` (the router answered success),
//! `failed` (a definite rejection: nothing changed), `unknown` (a timeout or a
//! transport error after the SDK's retries: the operation may have committed).

use router_sdk::SdkError;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;
use tonic::Code;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    Unknown,
}

/// Sorts an SDK error into failed or unknown.
pub fn classify(e: &SdkError) -> Outcome {
    match e {
        // Internal/Unknown: the node may have failed after the entry was proposed.
        SdkError::Rejected {
            code: Code::Internal | Code::Unknown | Code::DeadlineExceeded | Code::Unavailable,
            ..
        } => Outcome::Unknown,
        SdkError::Rejected { .. } | SdkError::Config(_) => Outcome::Failed,
        SdkError::Unavailable { .. } => Outcome::Unknown,
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpKind {
    /// A 1:1 send from `sender_device` carrying sequence number `n` of that
    /// device (the same `n` in the part for every recipient device). Sends of
    /// one device with the same `round` were in flight together (the SDK
    /// batches them into `SendBatch` calls); every send of an earlier round
    /// had been answered before the round began. One at a time: `round == n`.
    Send { message_id: String, sender_device: u32, n: u64, round: u64, mailbox_seq: Option<u64> },
    /// A prekey claim for every device of the stocked user: the one-time
    /// keys (device, key id) handed out, `exhausted` devices got none.
    Claim { keys: Vec<(u32, u32)>, exhausted: u32 },
}

#[derive(Clone, Debug, Serialize)]
pub struct Op {
    pub client: String,
    #[serde(flatten)]
    pub kind: OpKind,
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// An envelope the receiver's subscription handed to the application.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub message_id: String,
    pub seq: u64,
    pub at_ms: u64,
    /// (recipient device, ciphertext as text).
    pub parts: Vec<(u32, String)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FaultEvent {
    pub at_ms: u64,
    pub node: Option<u64>,
    pub what: String,
}

#[derive(Debug, Default, Serialize)]
pub struct History {
    pub ops: Vec<Op>,
    pub deliveries: Vec<Delivery>,
    pub faults: Vec<FaultEvent>,
    /// Seqs whose ack the router answered ok.
    pub acked_seqs: Vec<u64>,
    /// Receiver stream re-establishments.
    pub receiver_reconnects: u32,
    /// Errors of the receiver (next/ack), retried.
    pub receiver_errors: Vec<String>,
    /// Every one-time prekey (device, key id) uploaded for the claimed user.
    pub stocked: Vec<(u32, u32)>,
    /// One-time prekeys left per device of the claimed user at the end
    /// (`PrekeyCount`), `None` if they could not be read.
    pub remaining: Option<std::collections::BTreeMap<u32, u32>>,
    /// Claims are applied at most once (cluster version 2 on, `Once`): a key
    /// is then either handed out in an answer or still in stock, up to one
    /// per device for each claim whose outcome is unknown. False where a
    /// build without it may lead (a rolling upgrade from one).
    pub claims_exactly_once: bool,
    /// Workload window (first op start, stop signal).
    pub workload_start_ms: u64,
    pub workload_end_ms: u64,
}

/// Shared recorder with the scenario's clock.
#[derive(Clone)]
pub struct Recorder {
    t0: Instant,
    inner: Arc<Mutex<History>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { t0: Instant::now(), inner: Arc::default() }
    }

    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut History) -> R) -> R {
        f(&mut self.inner.lock().unwrap())
    }

    pub fn op(&self, op: Op) {
        self.with(|h| h.ops.push(op));
    }

    pub fn fault(&self, node: Option<u64>, what: impl Into<String>) -> u64 {
        let at_ms = self.now_ms();
        self.with(|h| h.faults.push(FaultEvent { at_ms, node, what: what.into() }));
        at_ms
    }

    pub fn take(&self) -> History {
        std::mem::take(&mut self.inner.lock().unwrap())
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}
