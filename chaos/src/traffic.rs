//! Provider traffic through the cluster with router-sdk: one provider sends a
//! bounded stream of envelopes, another receives and acks them.
//!
//! The sender sends one message at a time with its own message id and records
//! which sends the router acknowledged (and when). The receiver subscribes,
//! records every entry the SDK hands to it (the application's view), and acks
//! in batches. Both loops are bounded: the sender by its message count (each
//! send by the SDK's call deadline), the receiver by a deadline.

use router_sdk::v1::{ContentType, DeviceCiphertext, SendRequest, mailbox_entry};
use router_sdk::{RouterClient, SdkError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The recipient both sides agree on.
#[derive(Clone, Debug)]
pub struct Recipient {
    pub user_id: String,
    pub device_id: u32,
    pub registration_id: u32,
}

/// Registers the recipient user and its device through the receiving provider.
pub async fn register(receiver: &RouterClient, r: &Recipient) -> Result<(), SdkError> {
    receiver.register_user(&r.user_id).await?;
    receiver.register_device(&r.user_id, r.device_id, r.registration_id).await
}

#[derive(Clone, Debug, Default)]
pub struct SendLog {
    /// Sends attempted.
    pub sent: usize,
    /// Message ids the router acknowledged, with when the answer arrived.
    pub acked: Vec<(String, Instant)>,
    /// Message ids whose send failed after the SDK's retries, with the error.
    pub failed: Vec<(String, String)>,
}

/// Sends `count` envelopes, `interval` apart. `progress` counts acknowledged sends.
pub async fn send_stream(
    client: RouterClient,
    to: Recipient,
    id_prefix: String,
    count: usize,
    interval: Duration,
    progress: watch::Sender<usize>,
) -> SendLog {
    let mut log = SendLog::default();
    for i in 0..count {
        let message_id = format!("{id_prefix}-{i:05}");
        let req = SendRequest {
            message_id: message_id.clone(),
            recipient_user_id: to.user_id.clone(),
            content_type: ContentType::Message as i32,
            ttl_seconds: 0,
            parts: vec![DeviceCiphertext {
                device_id: to.device_id,
                registration_id: to.registration_id,
                message_type: 2,
                ciphertext: format!("opaque ciphertext {i}").into_bytes().into(),
            }],
            sender_user_id: String::new(),
            sender_device_id: 0,
        };
        log.sent += 1;
        match client.send(req).await {
            Ok(_) => {
                log.acked.push((message_id, Instant::now()));
                progress.send_replace(log.acked.len());
            }
            Err(e) => log.failed.push((message_id, e.to_string())),
        }
        tokio::time::sleep(interval).await;
    }
    log
}

#[derive(Clone, Debug, Default)]
pub struct ReceiveLog {
    /// Sequence numbers the SDK handed to the application, per message id, in order.
    pub by_message: BTreeMap<String, Vec<u64>>,
    /// Entries handed to the application (envelopes and anything else).
    pub handed_out: usize,
    /// Entries that were not envelopes (e.g. expiry reports).
    pub other_entries: usize,
    /// Subscription re-establishments (node failures, stream ends).
    pub reconnects: u32,
    /// Errors from `next` or `ack` (each was retried).
    pub errors: Vec<String>,
    /// Whether every expected message arrived before the deadline.
    pub complete: bool,
}

/// Shared between the receiving task and whoever decides when it may stop.
#[derive(Clone, Default)]
pub struct Expectation {
    inner: Arc<Mutex<Option<BTreeSet<String>>>>,
}

impl Expectation {
    /// The receiver may stop once every one of `ids` arrived (and a quiet period passed).
    pub fn set(&self, ids: BTreeSet<String>) {
        *self.inner.lock().unwrap() = Some(ids);
    }

    fn satisfied_by(&self, seen: &BTreeMap<String, Vec<u64>>) -> bool {
        match &*self.inner.lock().unwrap() {
            Some(ids) => ids.iter().all(|id| seen.contains_key(id)),
            None => false,
        }
    }
}

/// Receives and acks until `expect` is satisfied and `quiet` passed without a new
/// entry (to catch late duplicates), or until `deadline`.
pub async fn receive(
    client: RouterClient,
    window: u32,
    expect: Expectation,
    quiet: Duration,
    deadline: Instant,
) -> ReceiveLog {
    const ACK_BATCH: usize = 64;
    let mut sub = client.subscribe(window);
    let mut log = ReceiveLog::default();
    let mut pending: Vec<u64> = Vec::new();
    let mut last_entry = Instant::now();
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(250), sub.next()).await {
            Ok(Ok(entry)) => {
                last_entry = Instant::now();
                log.handed_out += 1;
                match entry.kind {
                    Some(mailbox_entry::Kind::Envelope(env)) => {
                        log.by_message.entry(env.message_id).or_default().push(entry.seq)
                    }
                    _ => log.other_entries += 1,
                }
                pending.push(entry.seq);
                if pending.len() < ACK_BATCH {
                    continue;
                }
            }
            Ok(Err(e)) => log.errors.push(format!("next: {e}")),
            Err(_) => {} // nothing new for 250 ms
        }
        if !pending.is_empty() {
            match sub.ack(pending.clone()).await {
                Ok(_) => pending.clear(),
                // Kept: acked again next round. The SDK keeps them from being handed out twice.
                Err(e) => log.errors.push(format!("ack: {e}")),
            }
        }
        if pending.is_empty() && expect.satisfied_by(&log.by_message) && last_entry.elapsed() >= quiet {
            log.complete = true;
            break;
        }
    }
    log.reconnects = sub.reconnects();
    log
}
