//! The `/metrics` scrape: replica gauges refreshed from the node context,
//! then the text exposition.

use super::{LOW_STOCK_THRESHOLD, Metrics};
use crate::ctx::NodeCtx;
use prometheus::{Encoder, TextEncoder};
use std::sync::atomic::Ordering;

impl Metrics {
    /// The text exposition, with replica gauges refreshed first.
    pub fn render(&self, ctx: &NodeCtx) -> String {
        let m = ctx.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let last_log = m.last_log_index.unwrap_or(0);
        let is_member = ctx.is_member();
        let storage = ctx.storage_stats.snapshot();
        let (cluster_version, replicated_ms) = ctx.read(|s| (s.cluster_version(), s.clock_ms));
        let wall_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let clock_offset_ms = i64::try_from(wall_ms).unwrap_or(i64::MAX).saturating_sub(replicated_ms as i64);
        self.raft.with_label_values(&["clock_offset_ms"]).set(if replicated_ms == 0 { 0 } else { clock_offset_ms });
        for (field, value) in [
            ("cluster_version", u64::from(cluster_version)),
            ("term", m.current_term),
            ("is_leader", u64::from(m.current_leader == Some(ctx.node_id))),
            ("leader_id", m.current_leader.unwrap_or(0)),
            ("last_log_index", last_log),
            ("commit_index", storage.committed_index),
            ("applied_index", applied),
            ("apply_lag", storage.committed_index.saturating_sub(applied)),
            ("snapshot_index", m.snapshot.map_or(0, |l| l.index)),
            ("purged_index", m.purged.map_or(0, |l| l.index)),
            ("voters", membership.voter_ids().count() as u64),
            ("learners", membership.learner_ids().count() as u64),
            ("is_member", u64::from(is_member)),
        ] {
            self.raft.with_label_values(&[field]).set(value as i64);
        }
        // The stores count; these counters follow them (both only grow).
        let _one_scrape_at_a_time = self.storage_catch_up.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let catch_up = |c: &prometheus::IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        catch_up(&self.snapshots.with_label_values(&["built"]), storage.snapshots_built);
        catch_up(&self.snapshots.with_label_values(&["installed"]), storage.snapshots_installed);
        catch_up(&self.log_compactions, storage.log_compactions);
        catch_up(&self.log_entries_purged, storage.log_entries_purged);
        catch_up(&self.payload_write_errors, storage.payload_write_errors);
        self.payload_bytes.set(storage.payload_bytes as i64);
        self.payload_segments.set(storage.payload_segments as i64);
        self.snapshot_last_bytes.set(storage.last_snapshot_bytes as i64);
        self.snapshot_last_build_seconds.set(storage.last_snapshot_build_micros as f64 / 1e6);
        self.snapshot_last_pause_seconds.set(storage.last_snapshot_pause_micros as f64 / 1e6);
        self.open_streams.set(ctx.open_streams.load(Ordering::Relaxed));
        ctx.read(|s| {
            for peer in s.peers() {
                let queue = router_core::federation::outbound_queue(&peer.id);
                let depth = s.mailbox_depth(&queue);
                self.federation_queue_depth.with_label_values(&[peer.id.as_str()]).set(depth as i64);
                let age = s.mailbox_oldest_ms(&queue).map_or(0, |t| s.clock_ms.saturating_sub(t));
                self.federation_queue_oldest.with_label_values(&[peer.id.as_str()]).set(age as f64 / 1000.0);
                let link = ctx.federation.as_ref().map(|f| f.link(&peer.id).up);
                let up = match link.flatten() {
                    Some(true) => 1,
                    Some(false) => 0,
                    None => -1,
                };
                self.federation_link.with_label_values(&[peer.id.as_str()]).set(up);
            }
            for (p, mb) in &s.mailboxes {
                if router_core::federation::queue_peer(p).is_some() {
                    continue; // reported as federation_queue_* above
                }
                self.mailbox_depth.with_label_values(&[p.as_str()]).set(mb.len() as i64);
                let age = s.mailbox_oldest_ms(p).map_or(0, |t| s.clock_ms.saturating_sub(t));
                self.mailbox_oldest.with_label_values(&[p.as_str()]).set(age as f64 / 1000.0);
            }
            // Reset first: a sender whose window emptied has no series left.
            self.send_answers.reset();
            match s.send_answers().sender_windows() {
                Some(windows) => {
                    for (sender, n) in windows.counts() {
                        self.send_answers.with_label_values(&[sender.as_str()]).set(n as i64);
                    }
                }
                None => self.send_answers.with_label_values(&["*"]).set(s.send_answers().len() as i64),
            }
            let mut stock: std::collections::BTreeMap<&str, (i64, i64)> =
                s.providers.keys().map(|p| (p.as_str(), (0, 0))).collect();
            for rec in s.users.values() {
                let entry = stock.entry(rec.provider.as_str()).or_default();
                for dev in rec.devices.values() {
                    let n = dev.keys.as_ref().map_or(0, |k| k.one_time.len());
                    entry.0 += n as i64;
                    if n < LOW_STOCK_THRESHOLD {
                        entry.1 += 1;
                    }
                }
            }
            for (p, (total, low)) in stock {
                self.prekey_stock.with_label_values(&[p]).set(total);
                self.low_stock_devices.with_label_values(&[p]).set(low);
            }
        });
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encode metrics");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}
