//! Limits enforced inside `apply`. They are part of the replicated state (set
//! at bootstrap and by `Command::SetLimits`) because a limit read from a
//! node's local config could differ between replicas and make them diverge.
//! Size limits that need no state (bytes per envelope, keys per upload) are
//! enforced at the API edge instead.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Devices one user may register (Signal-Server: 6).
    pub max_devices_per_user: u32,
    /// EC one-time prekeys (and, separately, Kyber one-time prekeys) stocked per device.
    pub max_one_time_prekeys_per_device: u32,
    /// Entries one provider's mailbox may hold before sends to it are refused.
    pub max_mailbox_entries: u64,
    /// How long an accepted send's answer is remembered for retries.
    pub dedup_window_ms: u64,
    /// At most this many remembered answers per sender provider (of all
    /// senders together below cluster version 5); the oldest go first.
    pub max_dedup_entries: u64,
    /// TTL given to expiry reports queued for a sender.
    pub report_ttl_ms: u64,
    /// Bundle claims: a token bucket per (requesting provider, target user)
    /// holding this many claims (prekey draining is a known attack) …
    pub claim_burst: u32,
    /// … refilled by one claim every this many milliseconds.
    pub claim_refill_ms: u64,
    /// A device whose EC one-time stock falls below this is reported to its
    /// provider (one `PrekeyLowStock` mailbox entry per crossing).
    pub low_prekey_threshold: u32,
    /// Members one group may have.
    pub max_group_members: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_devices_per_user: 6,
            max_one_time_prekeys_per_device: 1_000,
            max_mailbox_entries: 1_000_000,
            dedup_window_ms: 24 * 3600 * 1000,
            max_dedup_entries: 10_000_000,
            report_ttl_ms: 30 * 24 * 3600 * 1000,
            claim_burst: 50,
            claim_refill_ms: 10_000,
            low_prekey_threshold: 10,
            max_group_members: 1_000,
        }
    }
}
