//! `router-chaos`: fault-injection tests against real routerd clusters.
//!
//! # What this crate owns
//! The binary `docker-cluster-test`: three `routerd` containers (the image from
//! `deploy/build-image.sh`) on a private Docker network, formed through seeds,
//! provider traffic through router-sdk, a SIGKILL of the leader's container
//! mid-stream, its restart and rejoin, and a report with the checks that decide
//! the exit code. `deploy/docker-test.sh` builds the image and runs it.
//!
//! The binary `chaos`: real `routerd` processes on 127.0.0.1 (3 and 5 nodes,
//! from `routerd init-dev` configs) under a recorded provider workload, with
//! kill -9 of the leader or a follower, SIGSTOP/SIGCONT of the leader, a
//! rolling restart, a wiped data directory, partitions and slow links, and
//! power cuts that lose unsynced writes; the history is checked offline
//! and reported (JSON and a table). `deploy/chaos.sh` builds and runs it.
//!
//! # What it must not do
//! Touch anything it did not create: every container, network and volume is
//! named `<prefix>-...`, labelled `router-chaos.run=<prefix>`, and removed again
//! on every exit path. All traffic stays on the run's Docker network or on
//! ports published on 127.0.0.1. It depends on the wire contract and the SDK
//! only, never on the node's internals.
//!
//! # Layout
//! - [`docker`]: the Docker CLI with deadlines, and the ledger used for cleanup.
//! - [`layout`]: `routerd init-dev` output rewritten for containers; `docker run` arguments.
//! - [`cluster`]: admin `Status` through the published peer ports; waits for a leader and for catch-up.
//! - [`traffic`]: the sending and the receiving provider.
//! - [`report`]: counts, timings and checks.
//! - [`procs`]: routerd processes started, signalled and stopped by PID; disk wipes.
//! - [`netfault`]: partitions and slow links (iptables, tc) inside the run's network namespace.
//! - [`diskfault`]: per-node loop-mounted filesystems and power cuts that lose unsynced writes.
//! - [`history`]: operations with start/end and outcome ok / failed / unknown.
//! - [`workload`]: senders, receiver and prekey claimer of the `chaos` binary.
//! - [`checker`]: the invariants checked over a history.
//! - [`scenario`]: one fault scenario from cluster start to verdict.

pub mod checker;
pub mod clockfault;
pub mod cluster;
pub mod diskfault;
pub mod docker;
pub mod history;
pub mod layout;
pub mod netfault;
pub mod procs;
pub mod report;
pub mod scenario;
pub mod traffic;
pub mod workload;
