//! The Raft log's cost per append, previous layout against the current one,
//! in one run: the sled log (with its fsync layer) that builds before the
//! segment log used, and the segment log (`router_raft::wal`) a node runs on.
//!
//! Both get the same entries (sends of `--payload` bytes, `--commands` per
//! entry, `--per-append` entries per append, one fdatasync per append) and
//! the same purges (every `--purge-every` entries, keeping 1,000, as a node
//! with the default snapshot policy does). Printed per layout: appends per
//! second, append latency p50/p99/max, and bytes the process wrote to the
//! block device per entry byte (`/proc/self/io` `write_bytes`, which counts
//! every thread of the process, sled's flusher included).
//!
//! Run on the disk you care about (tmpfs makes fsync free):
//! `cargo run --release -p router-raft --example log_bench -- --dir target/log-bench`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload};
use router_core::{Batch, Command, ContentType, DevicePart, MessageId, ProviderId, SendEnvelope, UserId};
use router_raft::{Entry, LogId, LogStore, SledBackend, StorageStats, WalLogStore};

struct Args {
    dir: PathBuf,
    entries: u64,
    commands: usize,
    payload: usize,
    per_append: u64,
    purge_every: u64,
}

fn parse() -> Args {
    let mut a = Args {
        dir: PathBuf::from("target/log-bench"),
        entries: 5_000,
        commands: 16,
        payload: 1024,
        per_append: 1,
        purge_every: 5_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value()),
            "--entries" => a.entries = value().parse().expect("--entries N"),
            "--commands" => a.commands = value().parse().expect("--commands N"),
            "--payload" => a.payload = value().parse().expect("--payload BYTES"),
            "--per-append" => a.per_append = value().parse().expect("--per-append N"),
            "--purge-every" => a.purge_every = value().parse().expect("--purge-every N"),
            other => panic!("unknown flag {other} (--dir --entries --commands --payload --per-append --purge-every)"),
        }
    }
    a
}

fn entry(index: u64, commands: usize, payload: &Bytes) -> Entry {
    let commands = (0..commands)
        .map(|c| {
            Command::Send(SendEnvelope {
                sender: ProviderId::new("alpha"),
                sender_user: Some(UserId::new("alice")),
                sender_device: Some(1),
                message_id: MessageId::new(format!("m-{index}-{c}")),
                recipient: UserId::new("bob"),
                content_type: ContentType::Message,
                ttl_ms: 86_400_000,
                parts: vec![DevicePart {
                    device: 1,
                    registration_id: 7,
                    message_type: 2,
                    ciphertext: payload.clone().into(),
                }],
                traceparent: None,
            })
        })
        .collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch { stamp_ms: 1_700_000_000_000 + index, commands }),
    }
}

fn device_write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

struct Figures {
    appends_per_s: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    written_per_byte: f64,
}

async fn run<S: RaftLogStorage<router_raft::TypeConfig>>(mut log: S, a: &Args, dir: &Path) -> Figures {
    let payload = Bytes::from(vec![0xa5; a.payload]);
    let entry_bytes = (a.commands * a.payload) as f64;
    let mut latencies = Vec::new();
    let before = device_write_bytes();
    let start = Instant::now();
    let mut next = 1;
    while next <= a.entries {
        let batch: Vec<Entry> =
            (next..(next + a.per_append).min(a.entries + 1)).map(|i| entry(i, a.commands, &payload)).collect();
        next += batch.len() as u64;
        let t = Instant::now();
        log.blocking_append(batch).await.expect("append");
        latencies.push(t.elapsed());
        let last = next - 1;
        if a.purge_every > 0 && last % a.purge_every == 0 && last > 1_000 {
            log.purge(LogId::new(CommittedLeaderId::new(1, 1), last - 1_000)).await.expect("purge");
        }
    }
    let elapsed = start.elapsed();
    // What is still buffered reaches the device at the next sync anyway.
    let _ = std::process::Command::new("sync").arg("-f").arg(dir).status();
    let written = device_write_bytes().saturating_sub(before) as f64;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Figures {
        appends_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: *latencies.last().expect("one append"),
        written_per_byte: written / (entry_bytes * a.entries as f64),
    }
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<14} {:>10.0} {:>10.2} {:>10.2} {:>10.2} {:>14.2}",
        f.appends_per_s,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.max.as_secs_f64() * 1e3,
        f.written_per_byte
    );
}

fn main() {
    let a = parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).expect("create --dir");
    println!(
        "{} entries of {} sends x {} B, {} per append, purge every {} (keep 1000), in {}",
        a.entries,
        a.commands,
        a.payload,
        a.per_append,
        a.purge_every,
        a.dir.display()
    );
    let (sled, segments) = rt.block_on(async {
        let sled_dir = a.dir.join("sled");
        let backend = SledBackend::open(&sled_dir).expect("open sled");
        let log = LogStore::open(backend, Arc::new(StorageStats::default())).expect("sled log");
        let sled = run(log, &a, &sled_dir).await;
        let wal_dir = a.dir.join("segments");
        let log = WalLogStore::open(&wal_dir, Arc::new(StorageStats::default())).expect("segment log");
        let segments = run(log, &a, &wal_dir).await;
        (sled, segments)
    });
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "layout", "appends/s", "p50 ms", "p99 ms", "max ms", "written/byte"
    );
    print("sled (before)", &sled);
    print("segment log", &segments);
    println!(
        "segment/sled: {:.2}x appends/s, {:.2}x p99, {:.2}x bytes written",
        segments.appends_per_s / sled.appends_per_s,
        segments.p99.as_secs_f64() / sled.p99.as_secs_f64(),
        segments.written_per_byte / sled.written_per_byte.max(f64::MIN_POSITIVE)
    );
    let _ = std::fs::remove_dir_all(&a.dir);
}
