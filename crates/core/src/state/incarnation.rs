//! Raft members' incarnations (cluster version 4): which run of a node id
//! the cluster admitted. A node that lost its disk comes back under the same
//! id as a new incarnation; until it is admitted again as a new learner, its
//! votes and append answers must not count, or it could help elect a leader
//! without an entry it had acknowledged (docs/design/incarnations.md).
//!
//! The state only records; the node's Raft transport asks
//! [`State::admits_incarnation`] about every vote, append and snapshot call
//! and every answer to one, and the leader decides when a record may be set
//! or replaced (a member's is never replaced while it is a member).

use super::State;
use crate::outcome::{Outcome, Rejection};
use std::collections::BTreeMap;

/// The cluster version from which members' incarnations are recorded.
pub const INCARNATION_VERSION: u32 = 4;

impl State {
    /// The incarnation recorded for Raft member `node`, if any.
    pub fn incarnation_of(&self, node: u64) -> Option<u64> {
        self.incarnations.get(&node).copied()
    }

    /// Whether traffic from (or an answer by) `node` running as
    /// `incarnation` counts here: yes when it is the recorded incarnation,
    /// or when none is recorded yet (a cluster below version 4, or a member
    /// the leader has not recorded yet).
    pub fn admits_incarnation(&self, node: u64, incarnation: u64) -> bool {
        self.refused_incarnation(node, incarnation).is_none()
    }

    /// The incarnation recorded for `node` when it is not `incarnation`
    /// (traffic from `incarnation` does not count), `None` when it is admitted.
    pub fn refused_incarnation(&self, node: u64, incarnation: u64) -> Option<u64> {
        self.incarnations.get(&node).copied().filter(|recorded| *recorded != incarnation)
    }

    /// Every recorded incarnation (carried by snapshots).
    pub fn incarnations(&self) -> &BTreeMap<u64, u64> {
        &self.incarnations
    }

    /// Puts back what a snapshot carried as [`State::incarnations`].
    pub fn set_incarnations(&mut self, incarnations: BTreeMap<u64, u64>) {
        self.incarnations = incarnations;
    }

    pub(super) fn set_incarnation(&mut self, node: u64, incarnation: u64) -> Result<Outcome, Rejection> {
        if self.cluster_version() < INCARNATION_VERSION {
            return Err(Rejection::ClusterVersionTooLow {
                needed: INCARNATION_VERSION,
                current: self.cluster_version(),
            });
        }
        self.incarnations.insert(node, incarnation);
        Ok(Outcome::Done)
    }
}
