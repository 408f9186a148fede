//! A restore in bounded parts (cluster version 3): a backup's state as a
//! stream of [`StateItem`]s, loaded into an empty cluster by a sequence of
//! log entries, each small enough to replicate within one heartbeat.
//!
//! ```text
//!  RestoreBegin{id} ─> RestoreItems{id, part 0, items} ─> ... ─> RestoreItems{id, part n-1} ─> RestoreFinish{id, n}
//!   empty cluster       (any other write is refused with RESTORE_IN_PROGRESS meanwhile)        writes resume
//! ```
//!
//! - `RestoreBegin` needs a cluster without users or queued mail, or a
//!   restore in progress (which it starts over: a restore that was cut off is
//!   simply run again).
//! - Parts apply in order, each once: a part already applied answers `Done`
//!   (a retried write), a part out of order is refused.
//! - While a restore runs nothing expires, so a report cannot take a
//!   sequence number a later item of the backup holds.

use super::State;
use crate::dedup::{Answer, Digest, RememberedAnswer};
use crate::federation::Federation;
use crate::group::{GroupId, GroupRecord};
use crate::ids::{MessageId, ProviderId, Seq, UserId};
use crate::limits::Limits;
use crate::mailbox::MailboxEntry;
use crate::outcome::{Outcome, Rejection};
use crate::provider::ProviderRecord;
use serde::{Deserialize, Serialize};

/// One piece of a state, in the order [`State::into_items`] yields them:
/// settings first, a mailbox before its entries, send answers in time order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateItem {
    Settings {
        clock_ms: u64,
        limits: Limits,
        buckets_pruned_at_ms: u64,
    },
    Provider(ProviderRecord),
    User {
        user: UserId,
        record: super::UserRecord,
    },
    Group {
        group: GroupId,
        record: GroupRecord,
    },
    Mailbox {
        owner: ProviderId,
        next_seq: Seq,
    },
    Entry {
        owner: ProviderId,
        entry: MailboxEntry,
    },
    SendAnswer {
        stamp_ms: u64,
        sender: ProviderId,
        message_id: MessageId,
        outcome: Outcome,
    },
    ClaimBucket {
        requester: ProviderId,
        user: UserId,
        milli_tokens: u64,
        refilled_at_ms: u64,
    },
    /// Federation peers and remote group members (only when there are any).
    Peers(Box<Federation>),
    /// A send answer of a per-sender window (cluster version 5), which keeps
    /// a digest of the message id, not the id: restorable only into a
    /// cluster at version 5 or later.
    SenderAnswer {
        stamp_ms: u64,
        sender: ProviderId,
        digest: Digest,
        answer: Answer,
    },
}

impl StateItem {
    /// Whether the item needs a cluster at `SENDER_WINDOWS_VERSION` or later.
    pub fn needs_sender_windows(&self) -> bool {
        matches!(self, StateItem::SenderAnswer { .. })
    }

    /// Every ciphertext the item holds, for the storage layer to place.
    pub fn blobs_mut<'a>(&'a mut self, out: &mut Vec<&'a mut crate::blob::Blob>) {
        if let StateItem::Entry { entry, .. } = self {
            entry.item.blobs_mut(out);
        }
    }
}

/// A restore under way: which one, and the next part it takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreProgress {
    pub id: u64,
    pub next_part: u32,
    pub items: u64,
}

/// The first cluster version whose rules know restores in parts.
pub const PARTED_RESTORE_VERSION: u32 = 3;

impl State {
    /// The state as items, consuming it. What a backup holds: the cluster's
    /// own version and `Once` answers are not part of it.
    pub fn into_items(self) -> impl Iterator<Item = StateItem> {
        let State {
            clock_ms,
            limits,
            providers,
            users,
            mailboxes,
            groups,
            dedup,
            claim_buckets,
            buckets_pruned_at_ms,
            federation,
            ..
        } = self;
        let settings = StateItem::Settings { clock_ms, limits, buckets_pruned_at_ms };
        let mailbox_items = mailboxes.into_iter().flat_map(|(owner, mailbox)| {
            let head = StateItem::Mailbox { owner: owner.clone(), next_seq: mailbox.next_seq };
            let entries = mailbox.entries.into_values().map(move |entry| StateItem::Entry {
                owner: owner.clone(),
                entry: std::sync::Arc::unwrap_or_clone(entry),
            });
            std::iter::once(head).chain(entries)
        });
        let send_answers = dedup.into_answers().map(|answer| match answer {
            RememberedAnswer::ById { stamp_ms, sender, message_id, outcome } => {
                StateItem::SendAnswer { stamp_ms, sender, message_id, outcome }
            }
            RememberedAnswer::ByDigest { stamp_ms, sender, digest, answer } => {
                StateItem::SenderAnswer { stamp_ms, sender, digest, answer }
            }
        });
        let buckets = claim_buckets.into_iter().map(|((requester, user), (milli_tokens, refilled_at_ms))| {
            StateItem::ClaimBucket { requester, user, milli_tokens, refilled_at_ms }
        });
        let peers = (!federation.is_empty()).then(|| StateItem::Peers(Box::new(federation)));
        std::iter::once(settings)
            .chain(providers.into_values().map(StateItem::Provider))
            .chain(users.into_iter().map(|(user, record)| StateItem::User { user, record }))
            .chain(groups.into_iter().map(|(group, record)| StateItem::Group { group, record }))
            .chain(mailbox_items)
            .chain(send_answers)
            .chain(buckets)
            .chain(peers)
    }

    /// The state [`State::into_items`] yielded `items` from (outside the
    /// log: reading a backup file). Answers kept by digest come from
    /// per-sender windows, which the state then keeps.
    pub fn from_items(items: impl IntoIterator<Item = StateItem>) -> State {
        let mut state = State::default();
        for item in items {
            if item.needs_sender_windows() && state.dedup.sender_windows().is_none() {
                state.dedup.split_per_sender();
            }
            state.insert_item(item);
        }
        state
    }

    /// The restore under way, if any (carried by snapshots).
    pub fn restore_progress(&self) -> Option<&RestoreProgress> {
        self.restore.as_ref()
    }

    /// Puts back what a snapshot carried as [`State::restore_progress`].
    pub fn set_restore_progress(&mut self, progress: Option<RestoreProgress>) {
        self.restore = progress;
    }

    pub(super) fn restore_begin(&mut self, id: u64) -> Result<Outcome, Rejection> {
        self.needs_parted_restore()?;
        let has_mail = self.mailboxes.values().any(|m| !m.is_empty());
        if self.restore.is_none() && (!self.users.is_empty() || has_mail) {
            return Err(Rejection::RestoreIntoNonEmpty);
        }
        // Only what this cluster owns survives: its clock, its peers (a
        // backup's come as an item), its rules, its Once answers and its
        // members' incarnations.
        let kept = State {
            clock_ms: self.clock_ms,
            limits: self.limits.clone(),
            federation: std::mem::take(&mut self.federation),
            cluster_version: self.cluster_version,
            once: std::mem::take(&mut self.once),
            incarnations: std::mem::take(&mut self.incarnations),
            restore: Some(RestoreProgress { id, next_part: 0, items: 0 }),
            dedup: crate::dedup::SendAnswers::for_version(self.cluster_version()),
            ..State::default()
        };
        *self = kept;
        Ok(Outcome::Done)
    }

    pub(super) fn restore_items(&mut self, id: u64, part: u32, items: &[StateItem]) -> Result<Outcome, Rejection> {
        self.needs_parted_restore()?;
        let expected = self.expect_restore(id)?;
        if part < expected {
            return Ok(Outcome::Done);
        }
        if part > expected {
            return Err(Rejection::RestoreMismatch { id, expected_part: expected, part });
        }
        for item in items {
            self.insert_item(item.clone());
        }
        let progress = self.restore.as_mut().expect("checked by expect_restore");
        progress.next_part += 1;
        progress.items += items.len() as u64;
        Ok(Outcome::Done)
    }

    pub(super) fn restore_finish(&mut self, id: u64, parts: u32) -> Result<Outcome, Rejection> {
        self.needs_parted_restore()?;
        let expected = self.expect_restore(id)?;
        if parts != expected {
            return Err(Rejection::RestoreMismatch { id, expected_part: expected, part: parts });
        }
        self.restore = None;
        Ok(Outcome::Done)
    }

    fn needs_parted_restore(&self) -> Result<(), Rejection> {
        if self.cluster_version() < PARTED_RESTORE_VERSION {
            return Err(Rejection::ClusterVersionTooLow {
                needed: PARTED_RESTORE_VERSION,
                current: self.cluster_version(),
            });
        }
        Ok(())
    }

    /// The next part the restore `id` takes.
    fn expect_restore(&self, id: u64) -> Result<u32, Rejection> {
        match &self.restore {
            Some(p) if p.id == id => Ok(p.next_part),
            _ => Err(Rejection::RestoreMismatch { id, expected_part: 0, part: 0 }),
        }
    }

    /// Puts one item in place, keeping the state's indexes (expiry, dedup
    /// order) in step. An item repeating a key replaces what it names.
    fn insert_item(&mut self, item: StateItem) {
        match item {
            StateItem::Settings { clock_ms, limits, buckets_pruned_at_ms } => {
                self.clock_ms = self.clock_ms.max(clock_ms);
                self.limits = limits;
                self.buckets_pruned_at_ms = buckets_pruned_at_ms;
            }
            StateItem::Provider(record) => {
                self.providers.insert(record.id.clone(), record);
            }
            StateItem::User { user, record } => {
                self.users.insert(user, record);
            }
            StateItem::Group { group, record } => {
                self.groups.insert(group, record);
            }
            StateItem::Mailbox { owner, next_seq } => {
                let mailbox = self.mailbox_mut(&owner);
                mailbox.next_seq = mailbox.next_seq.max(next_seq);
            }
            StateItem::Entry { owner, entry } => {
                let key = (entry.expires_at_ms, owner.clone(), entry.seq);
                let mailbox = self.mailbox_mut(&owner);
                mailbox.next_seq = mailbox.next_seq.max(entry.seq.saturating_add(1));
                if let Some(old) = mailbox.entries.insert(entry.seq, std::sync::Arc::new(entry)) {
                    self.expiry.remove(&(old.expires_at_ms, owner, old.seq));
                }
                self.expiry.insert(key);
            }
            StateItem::SendAnswer { stamp_ms, sender, message_id, outcome } => {
                self.dedup.insert_remembered(RememberedAnswer::ById { stamp_ms, sender, message_id, outcome });
            }
            StateItem::SenderAnswer { stamp_ms, sender, digest, answer } => {
                self.dedup.insert_remembered(RememberedAnswer::ByDigest { stamp_ms, sender, digest, answer });
            }
            StateItem::ClaimBucket { requester, user, milli_tokens, refilled_at_ms } => {
                self.claim_buckets.insert((requester, user), (milli_tokens, refilled_at_ms));
            }
            StateItem::Peers(federation) => self.federation = *federation,
        }
    }
}
