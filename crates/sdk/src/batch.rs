//! Concurrent sends of one client go out together, in `SendBatch` calls.
//!
//! ```text
//!  send(req) ─> queue ─> batcher task ─> SendBatch([req..]) ─> one answer per send
//!                          (every send that queued while the        │
//!                           calls in flight were busy, bounded      └─ a retryable refusal of one
//!                           by count and bytes)                        send: that send alone, unary
//! ```
//!
//! A call carries no more than one send when nothing else is waiting (and a
//! lone send goes as a plain `Send`), so a send is never held back; under load
//! each call carries what queued up while the previous calls were in flight.
//! That saves the per-call work of HTTP/2 and TLS on both sides for all but
//! one send per call.
//!
//! Every send keeps the answer it would get from `Send`, and its own deadline
//! (`call_deadline` from when it was made): the router answers each send of a
//! batch on its own, and this module hands each answer to its caller. A send
//! refused with a retryable status (its node lost the leader while it was in
//! flight, say) is retried by itself through the unary path, until its own
//! deadline, and the client moves to another node as a failed unary call
//! would; the send carries its message id, so it is stored at most once. When
//! the whole call fails, each send whose deadline allows gets a unary try.
//!
//! A router may refuse a batch as a whole: one without `SendBatch` (an older
//! build) answers UNIMPLEMENTED, and sends then go one by one for a minute;
//! one with a lower `max_send_batch` answers TOO_LARGE with its limit, and one
//! with a lower `max_send_batch_bytes` cuts the call off (OUT_OF_RANGE):
//! the batch's sends go one by one and later batches keep to the limit (the
//! byte budget halves on each cut).

use crate::error::{SdkError, is_retryable, rejected};
use crate::failover::Nodes;
use prost::Message;
use router_proto::v1::{SendBatchRequest, SendRequest, SendResponse, send_result};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tonic::{Code, Status};

/// How long sends go one by one after a router answered UNIMPLEMENTED.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(60);
/// Room kept under the message limit for the request's own framing.
const FRAMING_BYTES: usize = 16 * 1024;
/// Sends waiting for a batch at most (callers wait for room beyond it).
const MAX_QUEUED: usize = 16 * 1024;

type Reply = oneshot::Sender<Result<SendResponse, SdkError>>;

pub(crate) struct Queued {
    pub(crate) req: SendRequest,
    /// When the caller's `call_deadline` runs out.
    pub(crate) deadline: Instant,
    pub(crate) reply: Reply,
}

/// The batch bounds of a client, lowered when a router says its own are lower.
pub(crate) struct Limits {
    sends: AtomicUsize,
    bytes: AtomicUsize,
    /// Until when every send goes alone (a router without `SendBatch` answered).
    unsupported_until: std::sync::Mutex<Option<Instant>>,
}

impl Limits {
    fn batches_unsupported(&self) -> bool {
        let until = self.unsupported_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|t| Instant::now() < t)
    }
}

/// Starts the batcher task of a client; it ends once the client's last handle
/// is dropped (the queue's sender lives in the client).
pub(crate) fn start(nodes: Arc<Nodes>) -> mpsc::Sender<Queued> {
    let config = nodes.config();
    let max_sends = config.max_send_batch.max(1);
    let max_calls = config.max_send_batch_calls.max(1);
    let (tx, rx) = mpsc::channel(max_sends.saturating_mul(max_calls).saturating_mul(4).min(MAX_QUEUED));
    let limits = Arc::new(Limits {
        sends: AtomicUsize::new(max_sends),
        bytes: AtomicUsize::new(config.max_message_bytes.saturating_sub(FRAMING_BYTES).max(1)),
        unsupported_until: std::sync::Mutex::new(None),
    });
    tokio::spawn(run(nodes, rx, limits, max_calls));
    tx
}

async fn run(nodes: Arc<Nodes>, mut queue: mpsc::Receiver<Queued>, limits: Arc<Limits>, max_calls: usize) {
    let calls = Arc::new(Semaphore::new(max_calls));
    // A send that did not fit the previous batch's byte budget starts the next.
    let mut carried: Option<Queued> = None;
    loop {
        // Wait for a free call first: what queues meanwhile joins this batch.
        let Ok(permit) = calls.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(q) => q,
            None => match queue.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let (max_sends, max_bytes) = (limits.sends.load(Ordering::Relaxed), limits.bytes.load(Ordering::Relaxed));
        let mut bytes = first.req.encoded_len();
        let mut batch = vec![first];
        while batch.len() < max_sends {
            let Ok(next) = queue.try_recv() else { break };
            let len = next.req.encoded_len() + 8;
            if bytes + len > max_bytes {
                carried = Some(next);
                break;
            }
            bytes += len;
            batch.push(next);
        }
        let (nodes, limits) = (nodes.clone(), limits.clone());
        tokio::spawn(async move {
            send_batch(&nodes, &limits, batch).await;
            drop(permit);
        });
    }
}

/// One `SendBatch` call (retried as a whole across nodes, like any call,
/// until the earliest deadline of its sends), then every send's answer to its
/// caller.
async fn send_batch(client: &Nodes, limits: &Limits, batch: Vec<Queued>) {
    if batch.len() == 1 || limits.batches_unsupported() {
        each_alone(client, batch).await;
        return;
    }
    let deadline = batch.iter().map(|q| q.deadline).min().expect("not empty");
    let (reqs, rest): (Vec<SendRequest>, Vec<(Instant, Reply)>) =
        batch.into_iter().map(|q| (q.req, (q.deadline, q.reply))).unzip();
    let answer = client
        .retry_until(deadline, |ch| {
            let req = SendBatchRequest { sends: reqs.clone() };
            async move { client.messaging(ch).send_batch(req).await }
        })
        .await;
    let sends = reqs.len();
    let pending = reqs.into_iter().zip(rest).map(|(req, (deadline, reply))| Queued { req, deadline, reply });
    match answer {
        Ok((resp, node)) if resp.results.len() == sends => {
            let mut again = Vec::new();
            for (q, result) in pending.zip(resp.results) {
                match result.result {
                    Some(send_result::Result::Accepted(accepted)) => drop(q.reply.send(Ok(accepted))),
                    Some(send_result::Result::Error(e)) => {
                        let status = Status::with_details(
                            Code::from_i32(e.code),
                            e.message,
                            e.detail.unwrap_or_default().encode_to_vec().into(),
                        );
                        if is_retryable(&status) {
                            again.push(q);
                        } else {
                            let _ = q.reply.send(Err(rejected(status)));
                        }
                    }
                    // An answer this build cannot read: ask again, alone.
                    None => again.push(q),
                }
            }
            if !again.is_empty() {
                // As a unary call failing this way would: try another node.
                client.rotate(node);
            }
            each_alone(client, again).await;
        }
        Err(SdkError::Rejected { code, detail, .. }) if refuses_batches(code, &detail, limits) => {
            if code == Code::Unimplemented {
                *limits.unsupported_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now() + UNSUPPORTED_FOR);
            }
            each_alone(client, pending.collect()).await;
        }
        // No node answered in time: a send whose deadline has passed hears
        // so; the others get a try of their own.
        Err(SdkError::Unavailable { attempts, last }) => {
            let now = Instant::now();
            let (late, early): (Vec<Queued>, Vec<Queued>) = pending.partition(|q| q.deadline <= now);
            for q in late {
                let _ = q.reply.send(Err(SdkError::Unavailable { attempts, last: last.clone() }));
            }
            each_alone(client, early).await;
        }
        // Refused for something else, or answered with the wrong number of
        // results: each send alone gets the answer `Send` gives it.
        Ok(_) | Err(_) => each_alone(client, pending.collect()).await,
    }
}

/// True when a router refused a batch as a whole for what it is (no
/// `SendBatch`, too many sends, too many bytes), not for what is in it;
/// lowers the client's bounds to the router's.
fn refuses_batches(code: Code, detail: &router_proto::v1::ErrorDetail, limits: &Limits) -> bool {
    match code {
        Code::Unimplemented => {
            tracing::warn!("the router has no SendBatch (an older build): sending one by one for a while");
            true
        }
        Code::InvalidArgument if detail.reason == "TOO_LARGE" && detail.field == "sends" => {
            let limit = usize::try_from(detail.limit).unwrap_or(usize::MAX).max(1);
            limits.sends.fetch_min(limit, Ordering::Relaxed);
            true
        }
        // Cut off by the router's transport (its max_send_batch_bytes).
        Code::OutOfRange if detail.reason.is_empty() => {
            let halved = (limits.bytes.load(Ordering::Relaxed) / 2).max(1);
            limits.bytes.fetch_min(halved, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

/// Sends each by itself (unary `Send`, retried until its own deadline), all
/// at once, and hands each answer to its caller.
async fn each_alone(client: &Nodes, sends: Vec<Queued>) {
    futures::future::join_all(sends.into_iter().map(|q| async move {
        let _ = q.reply.send(client.send_alone(q.req, q.deadline).await);
    }))
    .await;
}
