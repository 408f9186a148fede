//! `state_machine`: arbitrary bytes -> a [`Plan`] of command batches over a
//! small world -> `State::apply_batch`, with every invariant of
//! [`crate::check`] checked after every batch. A replica applies the same
//! batches and must answer the same outcomes; halfway through, it is replaced
//! by a bincode round trip of itself (a snapshot install) and must still
//! agree, to the byte, at the end.

use crate::check::{Checker, Stats};
use crate::model::{Builder, Plan, T0, setup};
use router_core::{Batch, Command, Limits, Outcome, State};

pub fn run(data: &[u8]) {
    let stats = run_with_stats(data);
    if debug() {
        eprintln!("stats: {stats:?}");
    }
}

/// Runs one input; the checker's counters, if the input decoded to a plan.
pub fn run_with_stats(data: &[u8]) -> Option<Stats> {
    let plan = Plan::parse(data);
    if plan.batches.is_empty() {
        return None;
    }
    // Set up under the default limits, then switch to the plan's.
    let mut state = State::new(Limits::default());
    let mut commands = setup(plan.header.start);
    commands.push(Command::SetLimits { limits: plan.header.limits.limits() });
    let outs = state.apply_batch(&Batch { stamp_ms: T0, commands });
    assert!(outs.iter().all(|o| *o == Outcome::Done), "setup: {outs:?}");
    let mut replica = state.clone();
    let mut checker = Checker::new(&state, true);
    checker.raise_limits(&Limits::default());
    checker.remember_backup(&state);
    let mut builder = Builder::new(state.clone());
    let mut stamp = T0;
    let snapshot_at = usize::from(plan.header.snapshot_at) % (plan.batches.len() + 1);
    for (i, spec) in plan.batches.iter().enumerate() {
        if i == snapshot_at {
            replica = snapshot_round_trip(&replica);
        }
        stamp = spec.dt.apply(stamp);
        let backups = builder.backups.len();
        let batch = builder.batch(&state, stamp, &spec.ops);
        if builder.backups.len() > backups {
            checker.remember_backup(&state);
        }
        let before = state.clone();
        let outs = state.apply_batch(&batch);
        if debug() {
            eprintln!("batch {i}: {batch:#?}\n-> {outs:#?}");
        }
        checker.batch(&before, &batch, &outs, &state);
        let replica_outs = replica.apply_batch(&batch);
        assert_eq!(outs, replica_outs, "replicas answered differently");
    }
    assert_eq!(state, replica, "replicas diverged");
    let encode = |s: &State| router_raft::encode_state(s);
    assert_eq!(encode(&state).expect("encode state"), encode(&replica).expect("encode replica"), "snapshots differ");
    checker.finish(&state);
    Some(checker.stats)
}

/// A snapshot install: encode, decode, and it must be the same state, in
/// the format `router_raft` writes snapshots in (its sections: extras,
/// restore progress, incarnations, per-sender send answers).
fn snapshot_round_trip(s: &State) -> State {
    let bytes = router_raft::encode_state(s).expect("encode state");
    let back = router_raft::decode_state(&bytes).expect("decode state");
    assert_eq!(&back, s, "snapshot round trip");
    back
}

/// `ROUTER_FUZZ_DEBUG=1`: print every batch, its outcomes and the run's
/// counters (to read a crash, or to see what a corpus reaches).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("ROUTER_FUZZ_DEBUG").is_some())
}
