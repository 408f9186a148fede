//! Provider records and the onboarding lifecycle (DMA: the operator must
//! enable a provider within three months of its request).
//!
//! ```text
//! requested ──approve──> approved ──activate──> active <──reactivate── suspended
//!     │                     │                     └──────suspend───────────^
//!     └───────────── revoke (from any state) ──────────────> revoked
//! ```
//!
//! Only `active` providers may act. Suspension loses nothing: queued mail
//! stays, and is delivered after reactivation. All times are leader stamps.

use crate::ids::ProviderId;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProviderStatus {
    Requested,
    Approved,
    Active,
    Suspended,
    Revoked,
}

impl ProviderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderStatus::Requested => "requested",
            ProviderStatus::Approved => "approved",
            ProviderStatus::Active => "active",
            ProviderStatus::Suspended => "suspended",
            ProviderStatus::Revoked => "revoked",
        }
    }
}

/// Operator actions on a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderAction {
    Approve,
    Activate,
    Suspend,
    Reactivate,
    Revoke,
}

impl ProviderAction {
    /// The status this action leads to from `from`, if allowed.
    pub fn apply(self, from: ProviderStatus) -> Option<ProviderStatus> {
        use ProviderAction as A;
        use ProviderStatus as S;
        match (self, from) {
            (A::Approve, S::Requested) => Some(S::Approved),
            (A::Activate, S::Approved) => Some(S::Active),
            (A::Suspend, S::Active) => Some(S::Suspended),
            (A::Reactivate, S::Suspended) => Some(S::Active),
            (A::Revoke, s) if s != S::Revoked => Some(S::Revoked),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    pub id: ProviderId,
    pub status: ProviderStatus,
    pub name: String,
    pub contact: String,
    /// Hosts (DNS names, optionally `:port`) the provider serves media from;
    /// the media proxy fetches only from these.
    pub media_hosts: Vec<String>,
    pub requested_at_ms: u64,
    /// When the provider became active the first time.
    pub activated_at_ms: Option<u64>,
    pub status_changed_at_ms: u64,
}

impl ProviderRecord {
    /// Three calendar months after the request (UTC, day clamped to the
    /// month's length): the DMA deadline to enable the provider.
    pub fn deadline_ms(&self) -> u64 {
        add_months_ms(self.requested_at_ms, 3)
    }

    /// Not yet enabled and past the deadline.
    pub fn overdue(&self, now_ms: u64) -> bool {
        self.activated_at_ms.is_none()
            && matches!(self.status, ProviderStatus::Requested | ProviderStatus::Approved)
            && now_ms > self.deadline_ms()
    }
}

const DAY_MS: u64 = 86_400_000;

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) and back
/// (Howard Hinnant's civil-calendar algorithms).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

pub fn add_months_ms(ms: u64, months: u32) -> u64 {
    let days = (ms / DAY_MS) as i64;
    let within_day = ms % DAY_MS;
    let (y, m, d) = civil_from_days(days);
    let total = i64::from(m - 1) + i64::from(months);
    let (ny, nm) = (y + total.div_euclid(12), (total.rem_euclid(12) + 1) as u32);
    let nd = d.min(days_in_month(ny, nm));
    (days_from_civil(ny, nm, nd) as u64) * DAY_MS + within_day
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, m: u32, d: u32) -> u64 {
        days_from_civil(y, m, d) as u64 * DAY_MS
    }

    #[test]
    fn three_calendar_months_with_clamping() {
        assert_eq!(add_months_ms(ms(2026, 1, 15), 3), ms(2026, 4, 15));
        assert_eq!(add_months_ms(ms(2026, 11, 30), 3), ms(2027, 2, 28));
        assert_eq!(add_months_ms(ms(2027, 11, 30), 3), ms(2028, 2, 29));
        assert_eq!(add_months_ms(ms(2026, 12, 31) + 5, 3), ms(2027, 3, 31) + 5);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn lifecycle_transitions() {
        use ProviderAction as A;
        use ProviderStatus as S;
        assert_eq!(A::Approve.apply(S::Requested), Some(S::Approved));
        assert_eq!(A::Activate.apply(S::Requested), None, "approval comes first");
        assert_eq!(A::Suspend.apply(S::Active), Some(S::Suspended));
        assert_eq!(A::Reactivate.apply(S::Suspended), Some(S::Active));
        assert_eq!(A::Revoke.apply(S::Suspended), Some(S::Revoked));
        assert_eq!(A::Revoke.apply(S::Revoked), None);
        assert_eq!(A::Reactivate.apply(S::Revoked), None);
    }
}
