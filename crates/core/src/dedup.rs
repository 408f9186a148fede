//! Send answers: what an accepted send, group send or relayed item answered,
//! kept for the dedup window so that a retry gets the first answer back and
//! stores nothing (docs/design/delivery.md).
//!
//! Two layouts, chosen by the cluster version (`crate::version`):
//!
//! ```text
//!  version < 5   SharedWindow   (sender, message id) as text -> Outcome      one cap for all senders
//!  version >= 5  SenderWindows  sender -> { digest(message id) -> Answer }    the cap per sender
//! ```
//!
//! The shared window is what builds before version 5 keep and encode; a
//! cluster keeps it until every member applies version 5, and the entry that
//! raises the version turns it into per-sender windows on every replica
//! ([`SendAnswers::split_per_sender`], in window order, so every replica
//! builds the same windows). Per-sender windows keep a 128-bit digest of
//! the message id (a SHA-256 prefix: an accidental collision among the 10 M
//! answers of one sender has a chance below 10^-24) and a fixed-size
//! answer, about 80 bytes an answer against about 400 for the shared
//! window's two strings twice over; and one sender's volume evicts only its
//! own answers, never another sender's.
//!
//! Snapshots carry the shared window in the state's serde encoding and the
//! per-sender windows in a section of their own (`router_raft`'s codec), so
//! a cluster that has not raised its version writes what older builds read.

use crate::ids::{MessageId, ProviderId, Seq};
use crate::limits::Limits;
use crate::outcome::Outcome;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

/// The first cluster version whose rules keep one window per sender.
pub const SENDER_WINDOWS_VERSION: u32 = 5;

/// The replicated send answers, in the layout the cluster version asks for.
#[derive(Clone, PartialEq, Eq)]
pub struct SendAnswers(Layout);

#[derive(Clone, PartialEq, Eq)]
enum Layout {
    Shared(SharedWindow),
    PerSender(SenderWindows),
}

impl Default for SendAnswers {
    fn default() -> Self {
        SendAnswers(Layout::Shared(SharedWindow::default()))
    }
}

impl SendAnswers {
    /// The empty layout a state of `cluster_version` keeps.
    pub fn for_version(cluster_version: u32) -> Self {
        if cluster_version >= SENDER_WINDOWS_VERSION {
            SendAnswers(Layout::PerSender(SenderWindows::default()))
        } else {
            SendAnswers::default()
        }
    }

    /// The answer remembered for `sender`'s `message_id`, if any.
    pub fn get(&self, sender: &ProviderId, message_id: &MessageId) -> Option<Outcome> {
        match &self.0 {
            Layout::Shared(w) => w.answers.get(&(sender.clone(), message_id.clone())).cloned(),
            Layout::PerSender(w) => {
                let window = w.windows.get(sender)?;
                window.answers.get(&Digest::of(message_id)).map(|a| a.outcome())
            }
        }
    }

    pub fn contains(&self, sender: &ProviderId, message_id: &MessageId) -> bool {
        match &self.0 {
            Layout::Shared(w) => w.answers.contains_key(&(sender.clone(), message_id.clone())),
            Layout::PerSender(w) => {
                w.windows.get(sender).is_some_and(|window| window.answers.contains_key(&Digest::of(message_id)))
            }
        }
    }

    /// Remembers `outcome` for `sender`'s `message_id`, accepted at
    /// `stamp_ms` (never before the newest answer: stamps are the state's
    /// clock). An id already remembered keeps its first answer and place.
    /// Per-sender windows remember only what a send answers (`Sent`,
    /// `GroupSent`, `Done`); nothing else is ever remembered.
    pub fn insert(&mut self, stamp_ms: u64, sender: &ProviderId, message_id: &MessageId, outcome: Outcome) {
        match &mut self.0 {
            Layout::Shared(w) => {
                if let Entry::Vacant(slot) = w.answers.entry((sender.clone(), message_id.clone())) {
                    slot.insert(outcome);
                    w.order.push_back((stamp_ms, sender.clone(), message_id.clone()));
                }
            }
            Layout::PerSender(w) => {
                if let Some(answer) = Answer::of(&outcome) {
                    w.insert(stamp_ms, sender, Digest::of(message_id), answer);
                }
            }
        }
    }

    /// Forgets answers older than the window and, oldest first, those past
    /// the count limit: of all senders together (shared), or of each sender.
    pub fn prune(&mut self, now_ms: u64, limits: &Limits) {
        match &mut self.0 {
            Layout::Shared(w) => w.prune(now_ms, limits),
            Layout::PerSender(w) => w.prune(now_ms, limits),
        }
    }

    /// Remembered answers, over all senders.
    pub fn len(&self) -> usize {
        match &self.0 {
            Layout::Shared(w) => w.order.len(),
            Layout::PerSender(w) => w.windows.values().map(|s| s.order.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Turns a shared window into per-sender windows (cluster version 5),
    /// each in the shared window's order. The count limit applies per sender
    /// from the next prune on.
    pub fn split_per_sender(&mut self) {
        let Layout::Shared(shared) = &mut self.0 else { return };
        let shared = std::mem::take(shared);
        let mut windows = SenderWindows::default();
        let mut answers = shared.answers;
        for (stamp_ms, sender, message_id) in shared.order {
            let Some(outcome) = answers.remove(&(sender.clone(), message_id.clone())) else { continue };
            if let Some(answer) = Answer::of(&outcome) {
                windows.insert(stamp_ms, &sender, Digest::of(&message_id), answer);
            }
        }
        self.0 = Layout::PerSender(windows);
    }

    /// The per-sender windows, for a snapshot's section; `None` for a
    /// shared window (carried by the state's serde encoding).
    pub fn sender_windows(&self) -> Option<&SenderWindows> {
        match &self.0 {
            Layout::PerSender(w) => Some(w),
            Layout::Shared(_) => None,
        }
    }

    /// Puts back per-sender windows a snapshot's section carried.
    pub fn set_sender_windows(&mut self, windows: SenderWindows) {
        self.0 = Layout::PerSender(windows);
    }

    /// What the state's serde encoding carries: the shared window, or an
    /// empty one for per-sender windows (they travel in their own section).
    pub fn encoded_part(&self) -> SendAnswers {
        match &self.0 {
            Layout::Shared(_) => self.clone(),
            Layout::PerSender(_) => SendAnswers::default(),
        }
    }

    /// Every answer, for a backup: per sender in window order, or the shared
    /// window in its order. Consumes the answers.
    pub fn into_answers(self) -> Box<dyn Iterator<Item = RememberedAnswer>> {
        match self.0 {
            Layout::Shared(w) => {
                let mut answers = w.answers;
                Box::new(w.order.into_iter().filter_map(move |(stamp_ms, sender, message_id)| {
                    let outcome = answers.remove(&(sender.clone(), message_id.clone()))?;
                    Some(RememberedAnswer::ById { stamp_ms, sender, message_id, outcome })
                }))
            }
            Layout::PerSender(w) => Box::new(w.windows.into_iter().flat_map(|(sender, window)| {
                let mut answers = window.answers;
                window.order.into_iter().filter_map(move |(stamp_ms, digest)| {
                    let answer = answers.remove(&digest)?;
                    Some(RememberedAnswer::ByDigest { stamp_ms, sender: sender.clone(), digest, answer })
                })
            })),
        }
    }

    /// Puts back an answer [`SendAnswers::into_answers`] gave. A shared
    /// window cannot hold one kept by digest: it is left out (the node
    /// refuses a restore of such a backup into a cluster below version 5).
    pub fn insert_remembered(&mut self, remembered: RememberedAnswer) {
        match remembered {
            RememberedAnswer::ById { stamp_ms, sender, message_id, outcome } => {
                self.insert(stamp_ms, &sender, &message_id, outcome)
            }
            RememberedAnswer::ByDigest { stamp_ms, sender, digest, answer } => {
                if let Layout::PerSender(w) = &mut self.0 {
                    w.insert(stamp_ms, &sender, digest, answer);
                }
            }
        }
    }
}

/// One remembered answer, as a backup carries it.
pub enum RememberedAnswer {
    ById { stamp_ms: u64, sender: ProviderId, message_id: MessageId, outcome: Outcome },
    ByDigest { stamp_ms: u64, sender: ProviderId, digest: Digest, answer: Answer },
}

/// The simulation compares `Debug` renderings of replicas: both layouts
/// render in window order, never in a hash map's.
impl std::fmt::Debug for SendAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Layout::Shared(w) => w.fmt(f),
            Layout::PerSender(w) => w.fmt(f),
        }
    }
}

/// Encodes only the shared window (see [`SendAnswers::encoded_part`]).
impl Serialize for SendAnswers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Layout::Shared(w) => w.serialize(serializer),
            Layout::PerSender(_) => SharedWindow::default().serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SendAnswers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(SendAnswers(Layout::Shared(SharedWindow::deserialize(deserializer)?)))
    }
}

/// A 128-bit digest of a message id: the first 16 bytes of its SHA-256.
///
/// Hashed in the windows' maps with std's keyed hasher: the sender chooses
/// its message ids, and an unkeyed hash of the digest would let it search
/// for ids that all land in one probe chain (every sender's apply slows).
/// The key differs per process, which nothing observes: the maps are only
/// looked up, never iterated.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Digest(pub [u8; 16]);

impl Digest {
    pub fn of(message_id: &MessageId) -> Digest {
        use sha2::Digest as _;
        let full = sha2::Sha256::digest(message_id.as_str().as_bytes());
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&full[..16]);
        Digest(prefix)
    }
}

/// What a send answered, in 32 bytes: the only outcomes ever remembered.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Answer {
    Done,
    Sent { seq: Seq, accepted_at_ms: u64 },
    GroupSent { group_seq: u64, epoch: u64, accepted_at_ms: u64 },
}

impl Answer {
    fn of(outcome: &Outcome) -> Option<Answer> {
        match *outcome {
            Outcome::Done => Some(Answer::Done),
            Outcome::Sent { seq, accepted_at_ms } => Some(Answer::Sent { seq, accepted_at_ms }),
            Outcome::GroupSent { group_seq, epoch, accepted_at_ms } => {
                Some(Answer::GroupSent { group_seq, epoch, accepted_at_ms })
            }
            _ => None,
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            Answer::Done => Outcome::Done,
            Answer::Sent { seq, accepted_at_ms } => Outcome::Sent { seq, accepted_at_ms },
            Answer::GroupSent { group_seq, epoch, accepted_at_ms } => {
                Outcome::GroupSent { group_seq, epoch, accepted_at_ms }
            }
        }
    }
}

/// One window per sender (cluster version 5). Invariant, per window: every
/// answer has exactly one place in `order`, which is in stamp order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SenderWindows {
    windows: BTreeMap<ProviderId, SenderWindow>,
}

#[derive(Clone, Default, PartialEq, Eq)]
struct SenderWindow {
    answers: HashMap<Digest, Answer>,
    order: VecDeque<(u64, Digest)>,
}

impl SenderWindows {
    fn insert(&mut self, stamp_ms: u64, sender: &ProviderId, digest: Digest, answer: Answer) {
        let window = match self.windows.get_mut(sender) {
            Some(w) => w,
            None => self.windows.entry(sender.clone()).or_default(),
        };
        if let Entry::Vacant(slot) = window.answers.entry(digest) {
            slot.insert(answer);
            window.order.push_back((stamp_ms, digest));
        }
    }

    fn prune(&mut self, now_ms: u64, limits: &Limits) {
        for window in self.windows.values_mut() {
            while let Some(&(stamp, digest)) = window.order.front() {
                let too_old = now_ms.saturating_sub(stamp) > limits.dedup_window_ms;
                let too_many = window.order.len() as u64 > limits.max_dedup_entries;
                if !(too_old || too_many) {
                    break;
                }
                window.order.pop_front();
                window.answers.remove(&digest);
            }
            give_back_capacity(&mut window.answers, &mut window.order);
        }
        self.windows.retain(|_, w| !w.order.is_empty());
    }

    /// Remembered answers of one sender.
    pub fn sender_len(&self, sender: &ProviderId) -> usize {
        self.windows.get(sender).map_or(0, |w| w.order.len())
    }

    /// Every sender with answers, and how many.
    pub fn counts(&self) -> impl Iterator<Item = (&ProviderId, usize)> {
        self.windows.iter().map(|(sender, w)| (sender, w.order.len()))
    }
}

/// After a burst a window empties again, but its map keeps its peak capacity
/// (up to `max_dedup_entries` slots) forever: give most of it back once three
/// quarters are unused. Amortized: the map must lose three quarters of its
/// entries between two shrinks.
fn give_back_capacity<K: Eq + Hash, V, S: std::hash::BuildHasher, T>(
    answers: &mut HashMap<K, V, S>,
    order: &mut VecDeque<T>,
) {
    if answers.capacity() > 4096 && answers.len() < answers.capacity() / 4 {
        answers.shrink_to(answers.len() * 2);
        order.shrink_to(order.len() * 2);
    }
}

impl std::fmt::Debug for SenderWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (sender, w) in &self.windows {
            let in_order: Vec<_> = w.order.iter().map(|(stamp, d)| (stamp, d, w.answers.get(d))).collect();
            map.entry(sender, &in_order);
        }
        map.finish()
    }
}

/// Per sender, its answers in window order: `(stamp, digest, answer)`.
impl Serialize for SenderWindows {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct InOrder<'a>(&'a SenderWindow);
        impl Serialize for InOrder<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let w = self.0;
                let mut seq = serializer.serialize_seq(Some(w.order.len()))?;
                for (stamp, digest) in &w.order {
                    let answer = w
                        .answers
                        .get(digest)
                        .ok_or_else(|| serde::ser::Error::custom("a dedup entry without its answer"))?;
                    seq.serialize_element(&(stamp, digest, answer))?;
                }
                seq.end()
            }
        }
        let mut map = serializer.serialize_map(Some(self.windows.len()))?;
        for (sender, w) in &self.windows {
            map.serialize_entry(sender, &InOrder(w))?;
        }
        map.end()
    }
}

/// Restores the invariant for input that breaks it (only damaged or
/// hand-made data does): a digest repeated within a sender keeps its first
/// place and answer.
impl<'de> Deserialize<'de> for SenderWindows {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let listed = BTreeMap::<ProviderId, Vec<(u64, Digest, Answer)>>::deserialize(deserializer)?;
        let mut windows = SenderWindows::default();
        for (sender, answers) in listed {
            for (stamp, digest, answer) in answers {
                windows.insert(stamp, &sender, digest, answer);
            }
        }
        Ok(windows)
    }
}

/// One window for every sender (cluster versions below 5), keyed by the
/// message id's text. `answers` is a hash map, only looked up; it is encoded
/// as a serde map in `order`'s order rather than the hash map's, so that
/// replicas holding equal state write identical snapshot bytes. Invariant:
/// every answer has exactly one place in `order` (apply keeps it; decoding
/// restores it).
#[derive(Clone, Default, PartialEq, Eq)]
struct SharedWindow {
    answers: HashMap<(ProviderId, MessageId), Outcome>,
    order: VecDeque<(u64, ProviderId, MessageId)>,
}

impl SharedWindow {
    fn prune(&mut self, now_ms: u64, limits: &Limits) {
        while let Some((stamp, _, _)) = self.order.front() {
            let too_old = now_ms.saturating_sub(*stamp) > limits.dedup_window_ms;
            let too_many = self.order.len() as u64 > limits.max_dedup_entries;
            if !(too_old || too_many) {
                break;
            }
            let (_, p, m) = self.order.pop_front().expect("front exists");
            self.answers.remove(&(p, m));
        }
        give_back_capacity(&mut self.answers, &mut self.order);
    }
}

/// In `order`'s order, like the encoding.
impl std::fmt::Debug for SharedWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let answers = self.order.iter().map(|(_, p, m)| {
            let key = (p.clone(), m.clone());
            let answer = self.answers.get(&key);
            (key, answer)
        });
        f.debug_struct("Dedup").field("answers", &DebugMap(answers.collect())).field("order", &self.order).finish()
    }
}

struct DebugMap<K, V>(Vec<(K, V)>);

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for DebugMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, v))).finish()
    }
}

impl<'de> Deserialize<'de> for SharedWindow {
    /// Decodes the two fields, then restores the invariant for input that
    /// breaks it (only damaged or hand-made data does): an order entry
    /// without an answer, or repeating one, is dropped; an answer without a
    /// place in the order goes to its front (the first to be pruned), in key
    /// order so that every replica does the same.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            answers: HashMap<(ProviderId, MessageId), Outcome>,
            order: VecDeque<(u64, ProviderId, MessageId)>,
        }
        let Fields { answers: mut unplaced, order: listed } = Fields::deserialize(deserializer)?;
        let mut window = SharedWindow { answers: HashMap::with_capacity(unplaced.len()), order: VecDeque::new() };
        window.order.reserve(listed.len());
        for (stamp, provider, message_id) in listed {
            let key = (provider, message_id);
            if let Some(answer) = unplaced.remove(&key) {
                window.order.push_back((stamp, key.0.clone(), key.1.clone()));
                window.answers.insert(key, answer);
            }
        }
        let mut rest: Vec<_> = unplaced.into_iter().collect();
        rest.sort_by(|a, b| b.0.cmp(&a.0));
        for (key, answer) in rest {
            window.order.push_front((0, key.0.clone(), key.1.clone()));
            window.answers.insert(key, answer);
        }
        Ok(window)
    }
}

impl Serialize for SharedWindow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        /// `answers` in `order`'s order; every answer has exactly one place
        /// in `order` (both are written together and pruned together).
        struct InOrder<'a>(&'a SharedWindow);
        impl Serialize for InOrder<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let SharedWindow { answers, order } = self.0;
                if answers.len() != order.len() {
                    return Err(serde::ser::Error::custom("dedup answers and their order disagree"));
                }
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(order.len()))?;
                for (_, p, m) in order {
                    let key = (p.clone(), m.clone());
                    let answer = answers
                        .get(&key)
                        .ok_or_else(|| serde::ser::Error::custom("a dedup entry without its answer"))?;
                    map.serialize_entry(&key, answer)?;
                }
                map.end()
            }
        }
        let mut st = serializer.serialize_struct("Dedup", 2)?;
        st.serialize_field("answers", &InOrder(self))?;
        st.serialize_field("order", &self.order)?;
        st.end()
    }
}

#[cfg(test)]
mod tests;
