//! Ephemeral content (typing, call signaling): delivered to connected receive
//! streams only, never written to the Raft log or any store (docs/design/ephemeral.md).
//!
//! ```text
//!  Send(TYPING) ─> validate on the local replica ─┬─> this node's registry ──> its receive streams
//!                                                 └─> Peer.DeliverEphemeral (every other member,
//!                                                      concurrently, short timeout) ──> their registries
//! ```
//!
//! [`Registry`] maps a provider to the ephemeral senders of its receive
//! streams on this node. The Receive handler registers a stream and keeps the
//! returned [`Registration`]; dropping it (the stream ended) unregisters.
//! Pushes never block: each stream has a small bounded queue, and an entry
//! that does not fit is dropped and counted.

use router_core::{ProviderId, SendEnvelope};
use router_proto::v1::MailboxEntry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Ephemeral entries one stream may have queued before further ones are
/// dropped (a stream that cannot keep up gets no stale typing indicators).
pub const STREAM_QUEUE: usize = 64;
/// TTL of an ephemeral entry when the send names none.
pub const DEFAULT_TTL_MS: u64 = 30_000;
/// Upper bound on an ephemeral entry's TTL, whatever the send asks for.
pub const MAX_TTL_MS: u64 = 60_000;

/// The `Peer.DeliverEphemeral` payload (bincode): one envelope for the
/// receive streams of `provider` on the called node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EphemeralDelivery {
    pub provider: ProviderId,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    pub envelope: SendEnvelope,
}

impl EphemeralDelivery {
    /// The entry as a receive stream sends it: seq 0, `ephemeral` set.
    pub fn entry(&self) -> MailboxEntry {
        let core_entry = router_core::MailboxEntry {
            seq: 0,
            accepted_at_ms: self.accepted_at_ms,
            expires_at_ms: self.expires_at_ms,
            item: router_core::MailboxItem::Envelope(self.envelope.clone()),
        };
        // An ephemeral envelope never reaches storage: its ciphertext is
        // the request's, in memory, and reading it cannot fail.
        let mut entry = crate::grpc::wire::mailbox_entry(core_entry).expect("ephemeral payloads are in memory");
        entry.ephemeral = true;
        entry
    }
}

/// Counters since the node started.
#[derive(Debug, Default)]
pub struct Stats {
    /// Entries queued on a local stream.
    pub delivered: AtomicU64,
    /// Entries dropped because a stream's queue was full.
    pub dropped_full: AtomicU64,
    /// Entries a lagging stream dropped because they had expired.
    pub dropped_expired: AtomicU64,
}

struct Slot {
    id: u64,
    tx: mpsc::Sender<MailboxEntry>,
}

#[derive(Default)]
pub struct Registry {
    streams: Mutex<HashMap<ProviderId, Vec<Slot>>>,
    next_id: AtomicU64,
    pub stats: Stats,
}

/// Keeps one stream registered; unregisters it when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    provider: ProviderId,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut streams = self.registry.streams.lock().expect("ephemeral registry lock poisoned");
        if let Some(slots) = streams.get_mut(&self.provider) {
            slots.retain(|s| s.id != self.id);
            if slots.is_empty() {
                streams.remove(&self.provider);
            }
        }
    }
}

impl Registry {
    /// Registers a receive stream of `provider`: ephemeral entries for it
    /// arrive on the returned receiver until the registration is dropped.
    pub fn register(self: &Arc<Self>, provider: &ProviderId) -> (Registration, mpsc::Receiver<MailboxEntry>) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.streams
            .lock()
            .expect("ephemeral registry lock poisoned")
            .entry(provider.clone())
            .or_default()
            .push(Slot { id, tx });
        (Registration { registry: self.clone(), provider: provider.clone(), id }, rx)
    }

    /// Receive streams of `provider` connected to this node.
    pub fn connected(&self, provider: &ProviderId) -> usize {
        let streams = self.streams.lock().expect("ephemeral registry lock poisoned");
        streams.get(provider).map_or(0, |slots| slots.iter().filter(|s| !s.tx.is_closed()).count())
    }

    /// Offers `entry` to every local stream of `provider` without waiting;
    /// returns how many took it. Full queues drop the entry (counted).
    pub fn push(&self, provider: &ProviderId, entry: &MailboxEntry) -> u32 {
        let streams = self.streams.lock().expect("ephemeral registry lock poisoned");
        let Some(slots) = streams.get(provider) else { return 0 };
        let mut taken = 0;
        for slot in slots {
            match slot.tx.try_send(entry.clone()) {
                Ok(()) => taken += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
                }
                // The stream is ending; its registration goes away with it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.stats.delivered.fetch_add(u64::from(taken), Ordering::Relaxed);
        taken
    }
}

/// The TTL of an ephemeral send: 0 means the default, anything above the
/// cap is capped (not refused: the sender only bounds lateness).
pub fn ttl_ms(ttl_seconds: u32) -> u64 {
    if ttl_seconds == 0 { DEFAULT_TTL_MS } else { (u64::from(ttl_seconds) * 1000).min(MAX_TTL_MS) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> EphemeralDelivery {
        EphemeralDelivery {
            provider: ProviderId::new("beta"),
            accepted_at_ms: 1_000,
            expires_at_ms: 31_000,
            envelope: SendEnvelope {
                sender: ProviderId::new("alpha"),
                sender_user: None,
                sender_device: None,
                message_id: router_core::MessageId::new("t-1"),
                recipient: router_core::UserId::new("handle:bob"),
                content_type: router_core::ContentType::Typing,
                ttl_ms: 30_000,
                parts: vec![],
                traceparent: None,
            },
        }
    }

    #[tokio::test]
    async fn push_reaches_registered_streams_and_registration_drop_unregisters() {
        let reg = Arc::new(Registry::default());
        let beta = ProviderId::new("beta");
        let entry = delivery().entry();
        assert!(entry.ephemeral);
        assert_eq!(entry.seq, 0);
        assert_eq!(reg.push(&beta, &entry), 0);
        let (g1, mut r1) = reg.register(&beta);
        let (g2, mut r2) = reg.register(&beta);
        let (_g3, _r3) = reg.register(&ProviderId::new("alpha"));
        assert_eq!(reg.connected(&beta), 2);
        assert_eq!(reg.push(&beta, &entry), 2);
        assert_eq!(r1.recv().await.unwrap(), entry);
        assert_eq!(r2.recv().await.unwrap(), entry);
        drop(g1);
        assert_eq!(reg.connected(&beta), 1);
        drop(g2);
        assert_eq!(reg.connected(&beta), 0);
        assert_eq!(reg.push(&beta, &entry), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_without_blocking() {
        let reg = Arc::new(Registry::default());
        let beta = ProviderId::new("beta");
        let entry = delivery().entry();
        let (_g, _r) = reg.register(&beta);
        for _ in 0..STREAM_QUEUE {
            assert_eq!(reg.push(&beta, &entry), 1);
        }
        assert_eq!(reg.push(&beta, &entry), 0);
        assert_eq!(reg.stats.dropped_full.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ttl_defaults_and_caps() {
        assert_eq!(ttl_ms(0), 30_000);
        assert_eq!(ttl_ms(5), 5_000);
        assert_eq!(ttl_ms(3600), 60_000);
    }
}
