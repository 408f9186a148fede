//! Concurrent sends of one client go out together, in `SendBatch` calls.
//!
//! ```text
//!  send(req) ─> queue ─> batcher task ─> SendBatch([req..]) ─> one answer per send
//!                          (every send that queued while the        │
//!                           calls in flight were busy, bounded      └─ a retryable refusal of one
//!                           by count and bytes)                        send: that send alone, unary
//! ```
//!
//! A call carries no more than one send when nothing else is waiting, so a
//! lone send is not delayed; under load each call carries what queued up
//! while the previous calls were in flight. That saves the per-call work of
//! HTTP/2 and TLS on both sides for all but one send per call.
//!
//! Every send keeps the answer it would get from `Send`: the router answers
//! each send of a batch on its own, and this module hands each answer to its
//! caller. A send refused with a retryable status (the leader was lost while
//! it was in flight, say) is retried by itself through the unary path, with
//! its own deadline; it carries its message id, so it is stored at most once.
//! When the router refuses a batch as a whole (an older router without
//! `SendBatch`: UNIMPLEMENTED; a smaller `max_send_batch` than this client's:
//! TOO_LARGE), its sends go one by one, and so do all sends for a minute after
//! an UNIMPLEMENTED.

use crate::client::RouterClient;
use crate::error::{SdkError, is_retryable, rejected};
use prost::Message;
use router_proto::v1::{SendBatchRequest, SendRequest, SendResponse, send_result};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Code, Status};

/// How long sends go one by one after a router answered UNIMPLEMENTED.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(60);
/// Room kept under the message limit for the request's own framing.
const FRAMING_BYTES: usize = 16 * 1024;

pub(crate) struct Queued {
    pub(crate) req: SendRequest,
    pub(crate) reply: oneshot::Sender<Result<SendResponse, SdkError>>,
}

/// Starts the batcher task of a client; it ends once the client's last handle
/// is dropped (the task holds only a weak reference, and the queue's sender
/// lives in the client).
pub(crate) fn start(
    client: Weak<crate::client::Inner>,
    max_sends: usize,
    max_calls: usize,
    max_bytes: usize,
) -> mpsc::Sender<Queued> {
    let (tx, rx) = mpsc::channel(max_sends.saturating_mul(max_calls).max(1) * 4);
    tokio::spawn(run(client, rx, max_sends, max_calls, max_bytes.saturating_sub(FRAMING_BYTES).max(1)));
    tx
}

async fn run(
    client: Weak<crate::client::Inner>,
    mut queue: mpsc::Receiver<Queued>,
    max_sends: usize,
    max_calls: usize,
    max_bytes: usize,
) {
    let calls = std::sync::Arc::new(Semaphore::new(max_calls.max(1)));
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
        let Some(inner) = client.upgrade() else { return };
        let client = RouterClient::from_inner(inner);
        tokio::spawn(async move {
            send_batch(&client, batch).await;
            drop(permit);
        });
    }
}

/// One `SendBatch` call (retried as a whole across nodes, like any call),
/// then every send's answer to its caller.
async fn send_batch(client: &RouterClient, batch: Vec<Queued>) {
    if batch.len() == 1 {
        let q = batch.into_iter().next().expect("one send");
        let _ = q.reply.send(client.send_alone(q.req).await);
        return;
    }
    let (reqs, replies): (Vec<SendRequest>, Vec<_>) = batch.into_iter().map(|q| (q.req, q.reply)).unzip();
    let answer = client
        .retry(|ch| {
            let req = SendBatchRequest { sends: reqs.clone() };
            async move { client.messaging(ch).send_batch(req).await }
        })
        .await;
    match answer {
        Ok(resp) if resp.results.len() == reqs.len() => {
            let mut again = Vec::new();
            for ((req, reply), result) in reqs.into_iter().zip(replies).zip(resp.results) {
                match result.result {
                    Some(send_result::Result::Accepted(accepted)) => drop(reply.send(Ok(accepted))),
                    Some(send_result::Result::Error(e)) => {
                        let status = Status::with_details(
                            Code::from_i32(e.code),
                            e.message,
                            e.detail.unwrap_or_default().encode_to_vec().into(),
                        );
                        if is_retryable(&status) {
                            again.push((req, reply));
                        } else {
                            let _ = reply.send(Err(rejected(status)));
                        }
                    }
                    // An answer this build cannot read: ask again, alone.
                    None => again.push((req, reply)),
                }
            }
            each_alone(client, again).await;
        }
        Err(SdkError::Unavailable { attempts, last }) => {
            for reply in replies {
                let _ = reply.send(Err(SdkError::Unavailable { attempts, last: last.clone() }));
            }
        }
        // Refused as a whole, or answered with the wrong number of results:
        // each send goes alone and gets the answer `Send` gives it.
        other => {
            if matches!(&other, Err(e) if e.code() == Some(Code::Unimplemented)) {
                tracing::warn!("the router has no SendBatch (an older build): sending one by one for a while");
                client.mark_batch_unsupported(UNSUPPORTED_FOR);
            }
            each_alone(client, reqs.into_iter().zip(replies).collect()).await;
        }
    }
}

/// Sends each request by itself (unary `Send`, with its own retries), all at
/// once, and hands each answer to its caller.
async fn each_alone(client: &RouterClient, sends: Vec<(SendRequest, oneshot::Sender<Result<SendResponse, SdkError>>)>) {
    futures::future::join_all(sends.into_iter().map(|(req, reply)| async move {
        let _ = reply.send(client.send_alone(req).await);
    }))
    .await;
}
