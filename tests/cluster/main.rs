//! In-process multi-node tests: real nodes (openraft + sled on disk, tonic
//! over mTLS on 127.0.0.1:0), real provider clients (`router-sdk`).

mod amnesia;
mod api;
mod common;
mod delivery;
mod ephemeral;
mod failover;
mod federation;
mod formation;
mod groups;
mod logs;
mod media;
mod metrics;
mod permissions;
mod prekeys;
mod restart;
mod safety;
mod sdk;
mod send_batch;
mod storage;
