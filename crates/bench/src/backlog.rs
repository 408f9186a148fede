//! The backlog workload: a provider that is away while mail for it queues.
//!
//! Three routerd processes; provider `b` never opens a receive stream, and
//! provider `a` sends `--backlog-envelopes` envelopes of `--backlog-bytes`
//! to its user. Every node's resident memory is read from `/proc` at 0, 25,
//! 50, 75 and 100 % of the backlog; then the data directories are measured,
//! and a follower is killed (-9) and restarted: how long until it reports
//! `health: ok` again (after a `sync`, so the disk is not still writing the
//! fill back), and its memory then. Run once per binary: the build
//! under test (`--routerd`) and the previous one (`--baseline-routerd`), in
//! the same run, so the rows compare the two. Last, the leader builds a
//! snapshot of the whole backlog, and a follower whose data directory was
//! wiped is caught up by it: build and catch-up times, the bytes the leader
//! wrote for the build, and the peak resident memory (`VmHWM`) of the
//! leader and of the follower meanwhile; that follower, now holding the
//! snapshot, is killed (-9) and restarted once more (a start that decodes a
//! snapshot of the whole backlog).

use crate::report::Row;
use crate::router::RouterCluster;
use crate::stats::Stat;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Opts {
    pub envelopes: u64,
    pub bytes: usize,
    pub inflight: usize,
    pub base_port: u16,
    pub extra_toml: String,
}

/// What one binary did.
#[derive(Debug, Default)]
pub struct Figures {
    /// (fraction of the backlog queued, max resident MiB over the nodes).
    pub rss_mib: Vec<(f64, f64)>,
    pub fill_mib_per_s: f64,
    /// Data directory bytes per queued payload byte, max over the nodes.
    pub disk_per_payload_byte: f64,
    pub restart_to_ok_s: Option<f64>,
    /// The wiped follower, holding the installed snapshot, killed and restarted.
    pub restart_from_snapshot_s: Option<f64>,
    /// What the leader wrote to storage while it built the snapshot.
    pub snapshot_written_mib: Option<f64>,
    pub restart_rss_mib: Option<f64>,
    pub accepted: u64,
    pub snapshot_build_s: Option<f64>,
    /// The leader's peak resident memory after the build, and its RSS before.
    pub leader_hwm_mib: Option<f64>,
    pub leader_rss_before_snapshot_mib: Option<f64>,
    pub wiped_to_ok_s: Option<f64>,
    /// The wiped follower's peak resident memory while it installed the snapshot.
    pub wiped_hwm_mib: Option<f64>,
}

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`) in MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: f64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS")
}

fn node_mib(cluster: &RouterCluster, i: usize, field: &str) -> Option<f64> {
    cluster.procs.running[i].as_ref().and_then(|g| status_mib(g.pid(), field))
}

/// The largest resident memory of the running nodes, in MiB.
pub fn max_rss(cluster: &RouterCluster) -> f64 {
    cluster.procs.running.iter().flatten().filter_map(|g| rss_mib(g.pid())).fold(0.0, f64::max)
}

/// Bytes of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub async fn run(routerd: &Path, work: &Path, o: &Opts) -> anyhow::Result<Figures> {
    std::fs::create_dir_all(work)?;
    // Both binaries start with the disk written back (not still flushing the other's run).
    let _ = std::process::Command::new("sync").status();
    let mut cluster = RouterCluster::start(routerd, work, o.base_port, 3, &o.extra_toml).await?;
    let sender = cluster.client("a", 0, Some(Duration::from_secs(20)))?;
    let receiver = cluster.client("b", 1, None)?;
    crate::router::register_pair(&sender, &receiver).await?;
    let mut figures = Figures::default();
    tokio::time::sleep(Duration::from_secs(1)).await;
    figures.rss_mib.push((0.0, max_rss(&cluster)));

    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // Bounded: every envelope once, and at most 20 minutes in all.
    let deadline = started + Duration::from_secs(1200);
    let tasks: Vec<_> = (0..o.inflight)
        .map(|t| {
            let (sender, next, accepted) = (sender.clone(), next.clone(), accepted.clone());
            let (total, bytes) = (o.envelopes, o.bytes);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || Instant::now() > deadline {
                        return;
                    }
                    let req = crate::router::to_receiver(format!("backlog-{t}-{i}"), bytes);
                    if sender.send(req).await.is_ok() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut marks = vec![0.25, 0.5, 0.75];
    while !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = accepted.load(Ordering::Relaxed) as f64 / o.envelopes as f64;
        if let Some(&m) = marks.first()
            && done >= m
        {
            figures.rss_mib.push((m, max_rss(&cluster)));
            marks.remove(0);
        }
        cluster.procs_alive()?;
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    figures.accepted = accepted.load(Ordering::Relaxed);
    let queued_bytes = figures.accepted * o.bytes as u64;
    figures.fill_mib_per_s = queued_bytes as f64 / (1 << 20) as f64 / elapsed;
    tokio::time::sleep(Duration::from_secs(2)).await;
    figures.rss_mib.push((1.0, max_rss(&cluster)));
    let disk = (1..=3).map(|id| dir_bytes(&work.join(format!("node-{id}")))).max().unwrap_or(0);
    figures.disk_per_payload_byte = disk as f64 / queued_bytes.max(1) as f64;

    // Restart a follower: time to `health: ok`, and its memory then.
    let follower = cluster.a_follower().await?;
    let li = cluster.wait_for_leader(Duration::from_secs(30)).await? as usize - 1;
    figures.restart_to_ok_s = cluster.restart_to_ok(follower, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    figures.restart_rss_mib = node_mib(&cluster, follower, "VmRSS");

    // The leader snapshots the backlog; a wiped follower is caught up by it
    // (serving, and holding everything the snapshot covers).
    let applied = cluster.status(li).await.map_or(0, |s| s.last_applied_index);
    figures.leader_rss_before_snapshot_mib = node_mib(&cluster, li, "VmRSS");
    let leader_pid = cluster.procs.running[li].as_ref().map(|g| g.pid());
    let written_before = leader_pid.and_then(crate::cost::written_bytes);
    figures.snapshot_build_s = cluster.snapshot_applied(li, Duration::from_secs(600)).await?;
    let written_after = leader_pid.and_then(crate::cost::written_bytes);
    figures.snapshot_written_mib = written_before
        .zip(written_after)
        .map(|(before, after)| after.saturating_sub(before) as f64 / (1u64 << 20) as f64);
    figures.leader_hwm_mib = node_mib(&cluster, li, "VmHWM");
    figures.wiped_to_ok_s = cluster.wipe_to_caught_up(follower, applied, Duration::from_secs(600)).await?;
    figures.wiped_hwm_mib = node_mib(&cluster, follower, "VmHWM");
    figures.restart_from_snapshot_s = cluster.restart_to_ok(follower, Duration::from_secs(300)).await?;
    drop(receiver);
    Ok(figures)
}

/// The rows comparing the build under test with the previous one.
pub fn rows(o: &Opts, new: &Figures, old: Option<&Figures>) -> Vec<Row> {
    let gib = (new.accepted * o.bytes as u64) as f64 / (1u64 << 30) as f64;
    let peer = "previous build";
    let one = |v: f64| Stat::of(&[v]);
    let mut rows = Vec::new();
    let mut push = |figure: String, unit: &str, n: Option<f64>, p: Option<f64>, lower: bool| {
        let mut row = Row::new("backlog", &figure, unit, n.and_then(one), peer, p.and_then(one));
        row.lower_is_better = lower;
        rows.push(row);
    };
    for (i, &(fraction, rss)) in new.rss_mib.iter().enumerate() {
        let before = old.and_then(|o| o.rss_mib.get(i)).map(|&(_, r)| r);
        push(format!("max node RSS, {:.2} GiB queued", gib * fraction), "MiB", Some(rss), before, true);
    }
    // (figure, unit, read off a run, lower is better)
    let figures: [(&str, &str, fn(&Figures) -> Option<f64>, bool); 11] = [
        ("fill rate", "MiB/s", |f| Some(f.fill_mib_per_s), false),
        ("data dir bytes per payload byte", "x", |f| Some(f.disk_per_payload_byte), true),
        ("follower kill -9 -> health ok", "s", |f| f.restart_to_ok_s, true),
        ("restarted follower RSS", "MiB", |f| f.restart_rss_mib, true),
        ("leader snapshot build", "s", |f| f.snapshot_build_s, true),
        ("leader bytes written by the build", "MiB", |f| f.snapshot_written_mib, true),
        ("leader RSS before the snapshot", "MiB", |f| f.leader_rss_before_snapshot_mib, true),
        ("leader peak RSS (VmHWM)", "MiB", |f| f.leader_hwm_mib, true),
        ("wiped follower -> ok, snapshot applied", "s", |f| f.wiped_to_ok_s, true),
        ("wiped follower peak RSS (VmHWM)", "MiB", |f| f.wiped_hwm_mib, true),
        ("that follower kill -9 -> ok (snapshot decode)", "s", |f| f.restart_from_snapshot_s, true),
    ];
    for (figure, unit, get, lower) in figures {
        push(figure.into(), unit, get(new), old.and_then(get), lower);
    }
    rows
}
