//! How the router's cost grows with the work, on one cluster per build:
//!
//! 1. receive streams: the delivery workload with 1, 10, 100 connected
//!    receive streams (the extra ones idle, of providers c, d, e: every
//!    stream wakes on every applied entry);
//! 2. directory size: the delivery workload with 0, 10 k, 100 k users of
//!    provider d registered;
//! 3. queued mail: provider e away while 0, 100 k, 1 M envelopes of
//!    `--payload` bytes queue for it; at each level the delivery workload
//!    (a to b, beside the backlog), resident memory, the data directories,
//!    the leader's snapshot build time, a follower's kill -9 to
//!    `health: ok` (log replay) and a wiped follower's catch-up by snapshot
//!    install (time and peak memory); then e comes back and drains its
//!    mailbox.
//!
//! Each level is cumulative (the cluster keeps what the previous one added).

use crate::args::Args;
use crate::backlog::{dir_bytes, max_rss};
use crate::compare;
use crate::report::{Panel, Series, Table, num_cell, stat_cell};
use crate::router::{self, RouterCluster};
use crate::stats::{Plan, Stat, Triple, summarize};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub system: String,
    pub axis: String,
    pub x: u64,
    pub accepted: Triple,
    pub delivered: Triple,
    pub cpu_us_per_msg: Option<Stat>,
    pub rss_mib_max_node: f64,
    pub data_dir_mib_max_node: f64,
    pub snapshot_build_s: Option<f64>,
    pub restart_to_ok_s: Option<f64>,
    /// A follower whose data directory was wiped, caught up by a snapshot
    /// install: seconds to `health: ok` with everything applied, and its peak
    /// resident memory meanwhile.
    pub install_to_ok_s: Option<f64>,
    pub install_peak_rss_mib: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Drain {
    pub system: String,
    pub entries: u64,
    pub seconds: f64,
    pub rss_mib_max_node_after: f64,
}

const AWAY: &str = "handle:away";
const AWAY_REGISTRATION: u32 = 5005;

pub async fn run(args: &Args, work: &Path) -> anyhow::Result<()> {
    let (mut points, mut drains) = (Vec::new(), Vec::new());
    for (k, (label, bin)) in compare::builds(args)?.into_iter().enumerate() {
        one(args, &work.join(format!("growth-{k}")), label, &bin, &mut points, &mut drains).await?;
    }
    let mut table = Table::new(
        "Cost as the work grows (delivery a→b at each level; levels cumulative on one cluster)",
        &[
            "System",
            "axis",
            "level",
            "accepted msg/s",
            "p99 ms",
            "delivery p99 ms",
            "CPU µs/msg",
            "max node RSS MiB",
            "max node data dir MiB",
            "snapshot build s",
            "follower kill -9 → ok s",
            "wiped follower → ok s (peak RSS MiB)",
        ],
    );
    for p in &points {
        table.push(vec![
            p.system.clone(),
            p.axis.clone(),
            p.x.to_string(),
            stat_cell(p.accepted.rate),
            stat_cell(p.accepted.p99),
            stat_cell(p.delivered.p99),
            stat_cell(p.cpu_us_per_msg),
            num_cell(Some(p.rss_mib_max_node)),
            num_cell(Some(p.data_dir_mib_max_node)),
            num_cell(p.snapshot_build_s),
            num_cell(p.restart_to_ok_s),
            match (p.install_to_ok_s, p.install_peak_rss_mib) {
                (Some(s), Some(m)) => format!("{} ({})", num_cell(Some(s)), num_cell(Some(m))),
                (s, _) => num_cell(s),
            },
        ]);
    }
    let mut drain_table = Table::new(
        "Draining the queued mail (provider e back, one receive stream)",
        &["System", "entries", "seconds", "entries/s", "max node RSS MiB after"],
    );
    for d in &drains {
        drain_table.push(vec![
            d.system.clone(),
            d.entries.to_string(),
            num_cell(Some(d.seconds)),
            num_cell(Some(d.entries as f64 / d.seconds.max(1e-9))),
            num_cell(Some(d.rss_mib_max_node_after)),
        ]);
    }
    table.print();
    drain_table.print();
    std::fs::write(args.out.join("growth.md"), format!("{}\n{}", table.markdown(), drain_table.markdown()))?;
    std::fs::write(
        args.out.join("growth.json"),
        serde_json::to_string_pretty(&serde_json::json!({"points": points, "drains": drains}))?,
    )?;
    let series = |axis: &str, f: fn(&Point) -> Option<f64>| -> Vec<Series> {
        let systems: std::collections::BTreeSet<&str> = points.iter().map(|p| p.system.as_str()).collect();
        systems
            .into_iter()
            .map(|s| Series {
                name: s.to_string(),
                points: points
                    .iter()
                    .filter(|p| p.system == s && p.axis == axis)
                    .filter_map(|p| Some((p.x as f64, f(p)?)))
                    .collect(),
            })
            .collect()
    };
    let rate = |p: &Point| p.accepted.rate.map(|s| s.median);
    let p99 = |p: &Point| p.accepted.p99.map(|s| s.median);
    let panels = [
        Panel {
            title: "accepted msg/s against connected receive streams".into(),
            x_label: "receive streams".into(),
            y_label: "msg/s".into(),
            series: series("receive streams", rate),
        },
        Panel {
            title: "accepted msg/s against users in the directory".into(),
            x_label: "users".into(),
            y_label: "msg/s".into(),
            series: series("directory users", rate),
        },
        Panel {
            title: "accepted msg/s against queued entries".into(),
            x_label: "queued entries".into(),
            y_label: "msg/s".into(),
            series: series("queued entries", rate),
        },
        Panel {
            title: "send→ack p99 (ms) against queued entries".into(),
            x_label: "queued entries".into(),
            y_label: "ms".into(),
            series: series("queued entries", p99),
        },
        Panel {
            title: "max node resident memory (MiB) against queued entries".into(),
            x_label: "queued entries".into(),
            y_label: "MiB".into(),
            series: series("queued entries", |p| Some(p.rss_mib_max_node)),
        },
        Panel {
            title: "snapshot build and follower restart (s) against queued entries".into(),
            x_label: "queued entries".into(),
            y_label: "s".into(),
            series: {
                let mut v = series("queued entries", |p| p.snapshot_build_s);
                v.iter_mut().for_each(|s| s.name.push_str(": snapshot build"));
                let mut r = series("queued entries", |p| p.restart_to_ok_s);
                r.iter_mut().for_each(|s| s.name.push_str(": restart to ok"));
                let mut w = series("queued entries", |p| p.install_to_ok_s);
                w.iter_mut().for_each(|s| s.name.push_str(": wiped, snapshot install to ok"));
                v.extend(r);
                v.extend(w);
                v
            },
        },
    ];
    crate::report::line_svg(&args.out.join("growth.svg"), "Cost as the work grows", &panels)?;
    Ok(())
}

async fn one(
    args: &Args,
    dir: &Path,
    label: &str,
    bin: &Path,
    points: &mut Vec<Point>,
    drains: &mut Vec<Drain>,
) -> anyhow::Result<()> {
    println!("== growth, {label} ({})", bin.display());
    let _ = std::process::Command::new("sync").status();
    let mut rc = compare::start_router(args, bin, dir, &args.router_config).await?;
    let plan = args.plan();

    for &n in &args.growth_streams {
        let idle = IdleStreams::open(&rc, n.saturating_sub(1), args.receive_window)?;
        println!("-- {n} receive streams");
        let p = measure(args, &plan, &rc, label, "receive streams", n as u64).await?;
        idle.close().await;
        points.push(p);
    }

    let directory = rc.client("d", 0, None)?;
    let mut registered = 0u64;
    for &u in &args.growth_users {
        let t = Instant::now();
        register_users(&directory, registered, u).await?;
        registered = registered.max(u);
        println!("-- {u} users of provider d registered ({:.1} s)", t.elapsed().as_secs_f64());
        points.push(measure(args, &plan, &rc, label, "directory users", u).await?);
    }

    let away = rc.client("e", 2 % rc.nodes(), None)?;
    router::register(&away, AWAY, AWAY_REGISTRATION).await?;
    let sender = rc.client("a", 0, Some(Duration::from_secs(20)))?;
    let mut queued = 0u64;
    for &q in &args.growth_queued {
        let t = Instant::now();
        queued += fill(&sender, queued, q, args.inflight, args.payload).await?;
        println!("-- {queued} entries queued for provider e ({:.1} s)", t.elapsed().as_secs_f64());
        let mut p = measure(args, &plan, &rc, label, "queued entries", q).await?;
        p.snapshot_build_s = snapshot_build(&rc).await?;
        // A follower restarted on its data (log replay), then wiped and
        // caught up by the snapshot just built (install), with its peak memory.
        let follower = rc.a_follower().await?;
        p.restart_to_ok_s = rc.restart_to_ok(follower, Duration::from_secs(300)).await?;
        let li = rc.wait_for_leader(Duration::from_secs(30)).await? as usize - 1;
        let applied = rc.status(li).await.map_or(0, |s| s.last_applied_index);
        p.install_to_ok_s = rc.wipe_to_caught_up(follower, applied, Duration::from_secs(600)).await?;
        p.install_peak_rss_mib =
            rc.procs.running[follower].as_ref().and_then(|g| crate::backlog::status_mib(g.pid(), "VmHWM"));
        points.push(p);
    }

    let t = Instant::now();
    let drained = drain(&away, queued, args.receive_window).await?;
    drains.push(Drain {
        system: label.into(),
        entries: drained,
        seconds: t.elapsed().as_secs_f64(),
        rss_mib_max_node_after: max_rss(&rc),
    });
    println!("-- drained {drained} of {queued} entries in {:.1} s", t.elapsed().as_secs_f64());
    rc.procs.check_alive()?;
    Ok(())
}

async fn measure(
    args: &Args,
    plan: &Plan,
    rc: &RouterCluster,
    label: &str,
    axis: &str,
    x: u64,
) -> anyhow::Result<Point> {
    let (run, samples) = router::metered_delivery(rc, &args.delivery_opts(plan.total(), None)).await?;
    let accepted = summarize(plan, run.start_us, &run.acks);
    println!(
        "   accepted {} msg/s, p99 {} ms, {} errors",
        stat_cell(accepted.rate),
        stat_cell(accepted.p99),
        run.errors
    );
    Ok(Point {
        system: label.into(),
        axis: axis.into(),
        x,
        accepted,
        delivered: summarize(plan, run.start_us, &run.deliveries),
        cpu_us_per_msg: samples.cost(plan, run.start_us, &run.deliveries, args.payload).cpu_us_per_msg,
        rss_mib_max_node: max_rss(rc),
        data_dir_mib_max_node: (0..rc.nodes()).map(|i| dir_bytes(&rc.data_dir(i))).max().unwrap_or(0) as f64
            / (1 << 20) as f64,
        snapshot_build_s: None,
        restart_to_ok_s: None,
        install_to_ok_s: None,
        install_peak_rss_mib: None,
    })
}

/// Receive streams of providers c, d, e that stay connected, reading
/// whatever comes (nothing is addressed to them before the backlog phase).
struct IdleStreams {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IdleStreams {
    fn open(rc: &RouterCluster, n: usize, window: u32) -> anyhow::Result<IdleStreams> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..n {
            let client = rc.client(["c", "d", "e"][i % 3], i % rc.nodes(), None)?;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut sub = client.subscribe(window);
                while !stop.load(Ordering::Relaxed) {
                    let _ = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
                }
            }));
        }
        Ok(IdleStreams { stop, tasks })
    }

    async fn close(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

/// Registers users `from..to` of provider d, 64 at a time.
async fn register_users(c: &router_sdk::RouterClient, from: u64, to: u64) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(from));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, next) = (c.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return anyhow::Ok(());
                }
                match c.register_user(&format!("handle:dir-{i}")).await {
                    Err(e) if e.code() != Some(tonic::Code::AlreadyExists) => return Err(e.into()),
                    _ => {}
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Queues envelopes for the absent user until `to` are queued; returns how many were added.
async fn fill(
    sender: &router_sdk::RouterClient,
    from: u64,
    to: u64,
    inflight: usize,
    payload: usize,
) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(from));
    let added = Arc::new(AtomicU64::new(0));
    // Bounded: 20 minutes for one level at most.
    let deadline = Instant::now() + Duration::from_secs(1200);
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let (sender, next, added) = (sender.clone(), next.clone(), added.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to || Instant::now() > deadline {
                    return;
                }
                let req = router::envelope(format!("away-{i}"), AWAY, AWAY_REGISTRATION, payload);
                if sender.send(req).await.is_ok() {
                    added.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(added.load(Ordering::Relaxed))
}

/// The leader snapshots everything applied so far (bounded at 10 minutes).
async fn snapshot_build(rc: &RouterCluster) -> anyhow::Result<Option<f64>> {
    let li = rc.wait_for_leader(Duration::from_secs(30)).await? as usize - 1;
    rc.snapshot_applied(li, Duration::from_secs(600)).await
}

/// Receives and acks until `expected` entries arrived or nothing came for 10 s
/// (bounded at 10 minutes); returns how many arrived.
async fn drain(c: &router_sdk::RouterClient, expected: u64, window: u32) -> anyhow::Result<u64> {
    let mut sub = c.subscribe(window);
    let (mut got, mut seqs) = (0u64, Vec::with_capacity(1024));
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < expected && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                eprintln!("  drain receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Ok(entry)) => {
                got += 1;
                seqs.push(entry.seq);
                if seqs.len() >= 1024 {
                    c.ack(std::mem::take(&mut seqs)).await?;
                }
            }
        }
    }
    if !seqs.is_empty() {
        c.ack(seqs).await?;
    }
    Ok(got)
}
