//! Relay tasks: one per registered peer, relaying its outbound queue while
//! this node leads.
//!
//! ```text
//! loop: leader? peer active? queue not empty?  -- no --> wait for an apply (or 250 ms)
//!       read up to relay_batch entries (local replica, queue order)
//!       Relay(items) to the peer (its endpoints in turn)
//!         ok    -> RelayAcked{stored + refused} through the log; backoff reset
//!                  a retry_later at the head -> wait 1 s (the peer's mailbox is full)
//!         error -> jittered backoff, 100 ms doubling up to backoff_max, cut short
//!                  as soon as the peer calls us (it is back)
//! ```
//!
//! Only the leader relays, so a cluster relays each entry once in the common
//! case; after a leader change the new leader relays whatever was not acked
//! yet, and the receiving cluster's dedup makes the repeat harmless.

use super::{Federation, backoff};
use crate::ctx::Ctx;
use router_core::federation::{RelayedKind, UndeliverableReason, outbound_queue};
use router_core::{ClusterId, Command, MailboxEntry, PeerStatus};
use router_proto::v1;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Starts and stops the per-peer tasks as peers are registered and removed.
pub async fn run(ctx: Ctx, fed: Arc<Federation>) {
    let mut tasks: HashMap<ClusterId, JoinHandle<()>> = HashMap::new();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let peers: BTreeSet<ClusterId> = ctx.read(|s| s.peers().map(|p| p.id.clone()).collect());
        tasks.retain(|id, task| {
            let keep = peers.contains(id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for id in peers {
            tasks.entry(id.clone()).or_insert_with(|| crate::spawn(peer_loop(ctx.clone(), fed.clone(), id)));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = super::stopped(&mut shutdown) => break,
        }
    }
    for (_, task) in tasks {
        task.abort();
    }
}

async fn peer_loop(ctx: Ctx, fed: Arc<Federation>, peer_id: ClusterId) {
    let queue = outbound_queue(&peer_id);
    let mut applied = ctx.applied.clone();
    let mut shutdown = ctx.shutdown.clone();
    let wake = fed.wakeup(&peer_id);
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let is_leader = ctx.raft.metrics().borrow().current_leader == Some(ctx.node_id);
        let Some(peer) = ctx.read(|s| s.peer(&peer_id).cloned()) else { return };
        let pending = is_leader && peer.status == PeerStatus::Active && ctx.read(|s| s.mailbox_depth(&queue)) > 0;
        if !pending {
            tokio::select! {
                _ = applied.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = super::stopped(&mut shutdown) => return,
            }
            continue;
        }
        let pause = match relay_batch(&ctx, &fed, &peer).await {
            Ok(Progress::Moved) => {
                failures = 0;
                fed.record_link(&peer_id, Ok(()));
                continue;
            }
            Ok(Progress::HeadMustWait) => {
                failures = 0;
                fed.record_link(&peer_id, Ok(()));
                Duration::from_secs(1)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::info!(peer_cluster = %peer_id, failures, "relay failed: {e}");
                fed.record_link(&peer_id, Err(e));
                backoff(failures - 1, fed.cfg.backoff_max)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // The peer called us: it is reachable again, do not sit out the backoff.
            _ = wake.notified() => {}
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}

enum Progress {
    /// Entries left the queue (stored or refused there).
    Moved,
    /// The first entry must be retried later (the peer's mailbox is full).
    HeadMustWait,
}

/// One relay call and the `RelayAcked` for what the peer answered.
async fn relay_batch(ctx: &Ctx, fed: &Federation, peer: &router_core::PeerRecord) -> Result<Progress, String> {
    let queue = outbound_queue(&peer.id);
    let (entries, clock_ms) = ctx.read(|s| (s.mailbox_from(&queue, 0, fed.cfg.relay_batch), s.clock_ms));
    let mut items = Vec::new();
    let mut bytes = 0usize;
    for e in &entries {
        let item = to_proto(e, clock_ms).map_err(|err| format!("read queued payload (seq {}): {err}", e.seq))?;
        let Some(item) = item else { continue };
        bytes += prost::Message::encoded_len(&item);
        // Stay well under the message limit; at least one item always goes.
        if !items.is_empty() && bytes > super::RELAY_MESSAGE_BYTES / 2 {
            break;
        }
        items.push(item);
    }
    // The batch is encoded: release the queue's entries now, not after the peer answered.
    drop(entries);
    if items.is_empty() {
        return Ok(Progress::HeadMustWait);
    }
    let sent: BTreeSet<u64> = items.iter().map(|i| i.queue_seq).collect();
    let peer_label = peer.id.as_str();
    let started = Instant::now();
    let request = v1::RelayRequest { items };
    let call = |mut c: v1::federation_client::FederationClient<tonic::transport::Channel>| {
        let request = request.clone();
        async move { c.relay(request).await }
    };
    let answer = fed.call(peer, call).await;
    ctx.metrics.relay_seconds.with_label_values(&[peer_label]).observe(started.elapsed().as_secs_f64());
    let answer = match answer {
        Ok(a) => a,
        Err(s) => {
            ctx.metrics.relayed_items.with_label_values(&[peer_label, "failed"]).inc_by(sent.len() as u64);
            return Err(format!("{}: {}", s.code(), s.message()));
        }
    };
    let (mut delivered, mut refused, mut head_waits) = (Vec::new(), Vec::new(), false);
    for r in answer.results {
        // A peer can only answer for what it was sent.
        if !sent.contains(&r.queue_seq) {
            continue;
        }
        use v1::relay_result::Result as R;
        match r.result {
            Some(R::StoredSeq(_)) | Some(R::ReportDelivered(_)) => delivered.push(r.queue_seq),
            // The peer's text goes into our replicated state: bounded.
            Some(R::Refused(f)) => refused.push((
                r.queue_seq,
                super::server::truncated(f.reason, 64),
                super::server::truncated(f.detail, super::server::MAX_DETAIL_BYTES),
            )),
            Some(R::RetryLater(_)) | None => {
                head_waits = delivered.is_empty() && refused.is_empty();
                ctx.metrics.relayed_items.with_label_values(&[peer_label, "retry_later"]).inc();
                break;
            }
        }
    }
    ctx.metrics.relayed_items.with_label_values(&[peer_label, "stored"]).inc_by(delivered.len() as u64);
    ctx.metrics.relayed_items.with_label_values(&[peer_label, "refused"]).inc_by(refused.len() as u64);
    if delivered.is_empty() && refused.is_empty() {
        return if head_waits { Ok(Progress::HeadMustWait) } else { Err("the peer answered nothing".into()) };
    }
    ctx.write(Command::RelayAcked { peer: peer.id.clone(), delivered, refused })
        .await
        .map_err(|s| format!("record the peer's answer: {}", s.message()))?;
    Ok(Progress::Moved)
}

/// A queue entry as relayed; `None` for what a queue should not hold, an
/// error when its payload cannot be read back.
fn to_proto(e: &MailboxEntry, clock_ms: u64) -> std::io::Result<Option<v1::RelayedItem>> {
    let ttl_left_ms = e.expires_at_ms.saturating_sub(clock_ms).max(1);
    let Some(relayed) = RelayedKind::from_queue(&e.item) else { return Ok(None) };
    let (kind, traceparent) = match relayed {
        RelayedKind::Envelope(env) => {
            let traceparent = env.traceparent.clone().unwrap_or_default();
            (v1::relayed_item::Kind::Envelope(crate::grpc::wire::envelope(env)?), traceparent)
        }
        RelayedKind::Undeliverable { to, message_id, recipient, reason } => {
            use v1::relayed_report::Reason;
            let reason = match reason {
                UndeliverableReason::Expired { recipient_provider } => {
                    Reason::ExpiredRecipientProviderId(recipient_provider.0)
                }
                UndeliverableReason::Refused { reason, detail } => Reason::Refused(v1::Refusal { reason, detail }),
            };
            let report = v1::RelayedReport {
                to_provider_id: to.0,
                message_id: message_id.0,
                recipient_user_id: recipient.0,
                reason: Some(reason),
            };
            (v1::relayed_item::Kind::Report(report), String::new())
        }
        RelayedKind::Group(g) => {
            let traceparent = g.traceparent.clone().unwrap_or_default();
            (v1::relayed_item::Kind::Group(crate::grpc::wire::group_message(g)?), traceparent)
        }
    };
    Ok(Some(v1::RelayedItem { queue_seq: e.seq, ttl_left_ms, kind: Some(kind), traceparent }))
}
