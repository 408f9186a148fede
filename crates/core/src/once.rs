//! The answers of [`crate::Command::Once`] requests, kept for
//! [`crate::version::ONCE_WINDOW_MS`] so a retried request gets the first
//! outcome back.

use crate::outcome::Outcome;
use crate::payload::RequestId;
use crate::version::{MAX_ONCE_ANSWERS, ONCE_WINDOW_MS};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Invariant: every answer has exactly one place in `order`, which is in
/// stamp order (stamps never go backwards).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnceAnswers {
    answers: BTreeMap<RequestId, Outcome>,
    order: VecDeque<(u64, RequestId)>,
}

impl OnceAnswers {
    pub fn get(&self, request: &RequestId) -> Option<&Outcome> {
        self.answers.get(request)
    }

    pub fn insert(&mut self, now_ms: u64, request: RequestId, outcome: Outcome) {
        if self.answers.insert(request, outcome).is_none() {
            self.order.push_back((now_ms, request));
        }
    }

    /// Forgets answers older than the window, and the oldest past the cap.
    pub fn prune(&mut self, now_ms: u64) {
        while let Some(&(stamp, request)) = self.order.front() {
            let too_old = now_ms.saturating_sub(stamp) > ONCE_WINDOW_MS;
            if !too_old && self.order.len() <= MAX_ONCE_ANSWERS {
                break;
            }
            self.order.pop_front();
            self.answers.remove(&request);
        }
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_answers_for_the_window_then_forgets_them() {
        let mut once = OnceAnswers::default();
        let a = RequestId { origin: 1, seq: 1 };
        let b = RequestId { origin: 1, seq: 2 };
        once.insert(1_000, a, Outcome::Done);
        once.insert(2_000, b, Outcome::Done);
        once.prune(1_000 + ONCE_WINDOW_MS);
        assert_eq!(once.get(&a), Some(&Outcome::Done));
        once.prune(1_001 + ONCE_WINDOW_MS);
        assert_eq!(once.get(&a), None);
        assert_eq!(once.get(&b), Some(&Outcome::Done));
        assert_eq!(once.len(), 1);
    }

    #[test]
    fn a_second_insert_keeps_the_first_place() {
        let mut once = OnceAnswers::default();
        let a = RequestId { origin: 7, seq: 0 };
        once.insert(1, a, Outcome::Done);
        once.insert(5, a, Outcome::Done);
        assert_eq!(once.order.len(), 1);
        once.prune(2 + ONCE_WINDOW_MS);
        assert!(once.is_empty());
    }
}
