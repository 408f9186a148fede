//! Fuzz targets of the Interop Router. The targets in `fuzz_targets/` are one
//! line each; their bodies live here so that they can also be replayed and
//! unit-tested without libFuzzer.
//!
//! - `state_machine`: structured command batches -> `router_core::State`,
//!   invariants checked after every batch ([`state_machine`], [`check`], [`model`]).
//! - `log_entry`: bytes -> a stored Raft value (`router_raft::codec::decode`:
//!   log entry, vote, snapshot, ...) -> the entry's batch applied to a
//!   populated state, same invariants ([`log_entry`]).
//! - `proto_decode`: bytes -> a provider request (prost) -> the node's edge
//!   validation into core types -> the command applied ([`proto_decode`]).
//! - `config`: bytes -> `routerd.toml` parse and validation ([`config`]).
//!
//! Run them with `bash deploy/fuzz.sh` (see `chaos/fuzz/README.md`).

pub mod check;
pub mod config;
pub mod log_entry;
pub mod model;
pub mod proto_decode;
pub mod seeds;
pub mod state_machine;
