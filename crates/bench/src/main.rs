//! `router-bench`: routerd (three release-build processes) against NATS
//! JetStream and etcd (three members each), all on loopback; and, with
//! `--only backlog`, this build against the previous one holding mail for an
//! absent provider (see `backlog`).
//!
//! Workloads: durable 1:1 delivery, directory writes (prekey claims vs etcd
//! puts / compare-and-delete), group fan-out, and leader failover. Every
//! figure is the median (min–max) of `--reps` consecutive measurement windows
//! after a warm-up. Results: a table on stdout, `results.json`,
//! `results.md` and `plot.svg` under `--out`.

mod backlog;
mod etcd;
mod nats;
mod procs;
mod report;
mod router;
mod stats;

use anyhow::Context;
use clap::Parser;
use report::{Bars, Row, Series};
use stats::{Plan, Stat, Triple, now_us, summarize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark routerd against NATS JetStream and etcd on loopback")]
struct Args {
    /// Results directory (results.json, results.md, plot.svg).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// routerd binary (release build).
    #[arg(long, default_value = "target/release/routerd")]
    routerd: PathBuf,
    /// nats-server binary (>= 2.10); default: first on PATH.
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// etcd binary; default: first on PATH.
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Workloads to run (comma-separated): delivery, claims, groups, failover;
    /// or `backlog` alone (this build against `--baseline-routerd`).
    #[arg(long, value_delimiter = ',', default_value = "delivery,claims,groups,failover")]
    only: Vec<String>,
    /// Skip NATS and etcd (router figures only).
    #[arg(long)]
    skip_peers: bool,
    /// Skip routerd (peer figures only).
    #[arg(long)]
    skip_router: bool,
    /// Warm-up seconds before the measurement windows.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds per measurement window.
    #[arg(long, default_value_t = 5.0)]
    window: f64,
    /// Measurement windows (repetitions) per point.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Sends in flight in the delivery workload.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Client connections the in-flight sends are spread over.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Envelope / value size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Receive window (router) and outstanding pulled messages (NATS).
    #[arg(long, default_value_t = 4096)]
    receive_window: u32,
    /// Concurrent clients for the directory-write points.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    claim_concurrency: Vec<usize>,
    /// Users stocked with one-time prekeys (1,000 each) for the claims.
    #[arg(long, default_value_t = 150)]
    claim_users: usize,
    /// Group size (members spread evenly over providers a..e).
    #[arg(long, default_value_t = 200)]
    group_members: usize,
    /// Group sends in flight.
    #[arg(long, default_value_t = 64)]
    group_inflight: usize,
    /// Leader kills per system.
    #[arg(long, default_value_t = 3)]
    failover_trials: usize,
    /// Concurrent writers in the failover probe.
    #[arg(long, default_value_t = 8)]
    failover_writers: usize,
    /// First loopback port of routerd (node i uses base + 10 i + 1..3).
    #[arg(long, default_value_t = 17400)]
    router_port: u16,
    /// NATS client ports base..base+2 (routes at +100).
    #[arg(long, default_value_t = 14222)]
    nats_port: u16,
    /// etcd client ports base..base+2 (peers at +100).
    #[arg(long, default_value_t = 23790)]
    etcd_port: u16,
    /// TOML appended to every routerd's config (e.g. "[raft]\nheartbeat_ms = 30"),
    /// to measure a tuning without rebuilding.
    #[arg(long, default_value = "")]
    router_config: String,
    /// Sends the SDK puts in one SendBatch call at most (its `max_send_batch`;
    /// 1: one Send call per message, as before SendBatch).
    #[arg(long, default_value_t = router_sdk::client::DEFAULT_MAX_SEND_BATCH)]
    send_batch: usize,
    /// SendBatch calls in flight per client connection (the SDK's `max_send_batch_calls`).
    #[arg(long, default_value_t = router_sdk::client::DEFAULT_MAX_SEND_BATCH_CALLS)]
    send_batch_calls: usize,
    /// The previous build's routerd, for the backlog workload's comparison.
    #[arg(long)]
    baseline_routerd: Option<PathBuf>,
    /// Backlog workload: envelopes queued for the absent provider.
    #[arg(long, default_value_t = 8192)]
    backlog_envelopes: u64,
    /// Backlog workload: bytes per envelope (192 KiB: 1.5 GiB in all by default).
    #[arg(long, default_value_t = 192 * 1024)]
    backlog_bytes: usize,
    /// Backlog workload: sends in flight.
    #[arg(long, default_value_t = 16)]
    backlog_inflight: usize,
    /// Keep the working directory (configs, data, logs of every process).
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn plan(&self) -> Plan {
        Plan {
            warmup: Duration::from_secs_f64(self.warmup),
            window: Duration::from_secs_f64(self.window),
            reps: self.reps.max(1),
        }
    }
    fn wants(&self, w: &str) -> bool {
        self.only.iter().any(|x| x == w)
    }
}

fn triple_rows(
    rows: &mut Vec<Row>,
    workload: &str,
    what: &str,
    r: &Triple,
    peer_name: &str,
    p: Option<&Triple>,
    rate_unit: &str,
) {
    rows.push(Row::new(workload, &format!("{what} rate"), rate_unit, r.rate, peer_name, p.and_then(|p| p.rate)));
    rows.push(Row::new(workload, &format!("{what} p50"), "ms", r.p50, peer_name, p.and_then(|p| p.p50)));
    rows.push(Row::new(workload, &format!("{what} p99"), "ms", r.p99, peer_name, p.and_then(|p| p.p99)));
}

/// Concurrent writers recording (start, end) of each success, in µs.
struct Probe {
    stop: Arc<AtomicBool>,
    ok: Arc<Mutex<Vec<(u64, u64)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

enum FWriter {
    Router(router_sdk::RouterClient),
    Nats(nats::Writer),
    Etcd(etcd::Writer),
}

impl FWriter {
    async fn write(&mut self, task: usize, k: u64) -> bool {
        match self {
            FWriter::Router(c) => router::failover_writer(c.clone(), task, k).await,
            FWriter::Nats(w) => w.write().await,
            FWriter::Etcd(w) => w.write(task).await,
        }
    }
}

impl Probe {
    fn start(writers: Vec<FWriter>) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(Mutex::new(Vec::new()));
        let tasks = writers
            .into_iter()
            .enumerate()
            .map(|(t, mut w)| {
                let (stop, ok) = (stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let mut k = 0u64;
                    // Bounded: at most 120 s or until stopped.
                    let end = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        k += 1;
                        let t0 = now_us();
                        if w.write(t, k).await {
                            ok.lock().expect("probe lock").push((t0, now_us()));
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        Probe { stop, ok, tasks }
    }

    fn successes(&self) -> usize {
        self.ok.lock().expect("probe lock").len()
    }

    /// Seconds from `kill_us` to the first success of a write issued after it.
    async fn gap(self, kill_us: u64, limit: Duration) -> Option<f64> {
        let deadline = Instant::now() + limit;
        let mut found = None;
        while Instant::now() < deadline {
            found = self.ok.lock().expect("probe lock").iter().filter(|(s, _)| *s >= kill_us).map(|(_, e)| *e).min();
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        found.map(|e| (e - kill_us) as f64 / 1e6)
    }
}

async fn steady(p: &Probe, secs: u64) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    anyhow::ensure!(p.successes() > 0, "no successful write before the kill");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let work = tempfile::Builder::new().prefix("router-bench-").tempdir()?;
    let workdir = work.path().to_path_buf();
    if args.keep {
        println!("working directory (kept): {}", workdir.display());
    }
    let started = Instant::now();
    let result = if args.only == ["backlog"] { run_backlog(&args, &workdir).await } else { run(&args, &workdir).await };
    if args.keep {
        let _ = work.keep();
    }
    let rows = result?;
    report::print(&rows);
    println!("\ntotal time {:.0} s; results in {}", started.elapsed().as_secs_f64(), args.out.display());
    Ok(())
}

async fn run_backlog(args: &Args, work: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let opts = backlog::Opts {
        envelopes: args.backlog_envelopes,
        bytes: args.backlog_bytes,
        inflight: args.backlog_inflight,
        base_port: args.router_port,
        extra_toml: args.router_config.clone(),
    };
    let binary =
        |p: &std::path::Path| std::fs::canonicalize(p).with_context(|| format!("routerd binary {}", p.display()));
    let mut old = None;
    if let Some(baseline) = &args.baseline_routerd {
        let baseline = binary(baseline)?;
        println!("== backlog, previous build ({})", baseline.display());
        let figures = backlog::run(&baseline, &work.join("baseline"), &opts).await?;
        println!("{figures:?}");
        old = Some(figures);
    }
    let routerd = binary(&args.routerd)?;
    println!("== backlog, this build ({})", routerd.display());
    let new = backlog::run(&routerd, &work.join("this"), &opts).await?;
    println!("{new:?}");
    let rows = backlog::rows(&opts, &new, old.as_ref());
    let header = format!(
        "Backlog: {} envelopes of {} B for an absent provider, {} sends in flight; 3 nodes on loopback.",
        opts.envelopes, opts.bytes, opts.inflight
    );
    std::fs::write(args.out.join("backlog.md"), report::markdown(&rows, &header))?;
    std::fs::write(args.out.join("backlog.json"), serde_json::to_string_pretty(&rows)?)?;
    Ok(rows)
}

async fn run(args: &Args, work: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let plan = args.plan();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let routerd = std::fs::canonicalize(&args.routerd).with_context(|| {
        format!("routerd binary {} (build with cargo build --release -p router-node)", args.routerd.display())
    })?;
    let mut rows: Vec<Row> = Vec::new();
    let mut series: Vec<Series> = Vec::new();
    let mut bars: Vec<Bars> = Vec::new();
    let mut json_extra = serde_json::Map::new();

    let mut r_delivery: Option<(Triple, Triple)> = None;
    let mut r_claims: Vec<(usize, Triple)> = Vec::new();
    let mut r_fail: Vec<f64> = Vec::new();
    // ---------------- router ----------------
    if !args.skip_router {
        println!("== routerd: 3 processes ({})", routerd.display());
        let limits =
            format!("\n[limits]\nprekey_claim_burst = 100000000\nprekey_claim_refill_ms = 1\n{}\n", args.router_config);
        let mut rc =
            router::RouterCluster::start(&routerd, &nats::dir_for(work, "router")?, args.router_port, 3, &limits)
                .await?;
        rc.send_batch = (args.send_batch, args.send_batch_calls);
        if args.wants("delivery") {
            println!(
                "-- delivery: {} sends in flight over {} clients, {} B, receiver window {}",
                args.inflight, args.clients, args.payload, args.receive_window
            );
            let run = router::delivery(
                &rc,
                &router::DeliveryOpts {
                    total: plan.total(),
                    window: args.inflight,
                    clients: args.clients,
                    payload: args.payload,
                    receive_window: args.receive_window,
                },
            )
            .await?;
            println!(
                "   accepted {} delivered {} errors {} undelivered after drain {}",
                run.acks.len(),
                run.deliveries.len(),
                run.errors,
                run.undelivered
            );
            r_delivery =
                Some((summarize(&plan, run.start_us, &run.acks), summarize(&plan, run.start_us, &run.deliveries)));
            rc.procs.check_alive()?;
        }
        if args.wants("claims") {
            let t = Instant::now();
            router::stock_prekeys(&rc, args.claim_users, 1000).await?;
            println!(
                "-- claims: stocked {} users x 1,000 one-time prekeys in {:.1} s",
                args.claim_users,
                t.elapsed().as_secs_f64()
            );
            for &c in &args.claim_concurrency {
                let (start, ev, errors, exhausted) = router::claims(&rc, args.claim_users, c, plan.total()).await?;
                println!("   {c:>3} clients: {} claims, {errors} errors, {exhausted} without a one-time key", ev.len());
                r_claims.push((c, summarize(&plan, start, &ev)));
            }
            rc.procs.check_alive()?;
        }
        if args.wants("groups") {
            println!(
                "-- groups: {} members over 5 providers, {} sends in flight",
                args.group_members, args.group_inflight
            );
            let run = router::groups(
                &rc,
                &router::GroupOpts {
                    total: plan.total(),
                    window: args.group_inflight,
                    members: args.group_members,
                    payload: args.payload,
                    receive_window: args.receive_window,
                },
            )
            .await?;
            println!(
                "   sent {} provider entries {} errors {} undelivered {}",
                run.acks.len(),
                run.deliveries.len(),
                run.errors,
                run.undelivered
            );
            let sends = summarize(&plan, run.start_us, &run.acks);
            let entries = summarize(&plan, run.start_us, &run.deliveries);
            // Member deliveries per window: sum of recipients named in each entry.
            let windows: Vec<f64> = (0..plan.reps)
                .map(|i| {
                    let (from, to) = plan.bounds(run.start_us, i);
                    run.member_deliveries
                        .iter()
                        .filter(|e| e.at_us >= from && e.at_us < to)
                        .map(|e| e.lat_us as f64)
                        .sum::<f64>()
                        / plan.window.as_secs_f64()
                })
                .collect();
            let members = Stat::of(&windows);
            let per_core = Stat::of(&windows.iter().map(|x| x / cores).collect::<Vec<_>>());
            let w = "groups";
            rows.push(Row::new(w, "group sends accepted", "msg/s", sends.rate, "—", None));
            rows.push(Row::new(w, "send->ack p50", "ms", sends.p50, "—", None));
            rows.push(Row::new(w, "send->ack p99", "ms", sends.p99, "—", None));
            rows.push(Row::new(w, "provider mailbox entries delivered", "/s", entries.rate, "—", None));
            rows.push(Row::new(w, "member deliveries (fan-out)", "/s", members, "—", None));
            rows.push(Row::new(w, &format!("member deliveries per core ({cores} cores)"), "/s", per_core, "—", None));
            rows.push(Row::new(w, "send->delivery p50", "ms", entries.p50, "—", None));
            rows.push(Row::new(w, "send->delivery p99", "ms", entries.p99, "—", None));
            rc.procs.check_alive()?;
        }
        if args.wants("failover") {
            router::failover_setup(&rc).await?;
            for trial in 0..args.failover_trials {
                let leader = rc.wait_for_leader(Duration::from_secs(30)).await? as usize;
                let survivors: Vec<usize> = (0..rc.nodes()).filter(|i| *i != leader - 1).collect();
                let writers = (0..args.failover_writers)
                    .map(|i| {
                        rc.client("a", survivors[i % survivors.len()], Some(Duration::from_millis(600)))
                            .map(FWriter::Router)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let probe = Probe::start(writers);
                steady(&probe, 2).await?;
                let kill_us = now_us();
                rc.procs.kill9(leader - 1)?;
                let gap = probe.gap(kill_us, Duration::from_secs(30)).await;
                println!(
                    "-- router failover {}: killed node {leader}, gap {}",
                    trial + 1,
                    gap.map(|g| format!("{g:.3} s")).unwrap_or("none within 30 s".into())
                );
                r_fail.extend(gap);
                rc.procs.restart(leader - 1)?;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
        drop(rc);
    }

    // ---------------- NATS ----------------
    let mut n_delivery: Vec<(String, Triple, Triple)> = Vec::new();
    let mut n_fail: Vec<f64> = Vec::new();
    let nats_bin = args.nats_server.clone().or_else(|| procs::which("nats-server"));
    if !args.skip_peers && (args.wants("delivery") || args.wants("failover")) {
        let bin = nats_bin.clone().context("nats-server not found: pass --nats-server or run deploy/bench.sh")?;
        for sync in [true, false] {
            if !sync && !args.wants("delivery") {
                continue;
            }
            let dir = nats::dir_for(work, if sync { "nats-sync" } else { "nats-default" })?;
            let mut nc = nats::NatsCluster::start(&bin, &dir, args.nats_port, sync).await?;
            println!("== {}", nc.label);
            nc.create_stream("BENCH", args.receive_window).await?;
            if args.wants("delivery") {
                let run =
                    nats::delivery(&nc, plan.total(), args.inflight, args.clients, args.payload, args.receive_window)
                        .await?;
                println!(
                    "   accepted {} delivered {} errors {} undelivered after drain {}",
                    run.acks.len(),
                    run.deliveries.len(),
                    run.errors,
                    run.undelivered
                );
                n_delivery.push((
                    nc.label.clone(),
                    summarize(&plan, run.start_us, &run.acks),
                    summarize(&plan, run.start_us, &run.deliveries),
                ));
                nc.procs.check_alive()?;
            }
            if sync && args.wants("failover") {
                for trial in 0..args.failover_trials {
                    let leader = wait_nats_leader(&nc).await?;
                    let survivors: Vec<u16> =
                        nc.ports.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, p)| *p).collect();
                    let writers = (0..args.failover_writers)
                        .map(|i| FWriter::Nats(nats::Writer { ports: survivors.clone(), cur: i, conn: None }))
                        .collect();
                    let probe = Probe::start(writers);
                    steady(&probe, 2).await?;
                    let kill_us = now_us();
                    nc.procs.kill9(leader)?;
                    let gap = probe.gap(kill_us, Duration::from_secs(30)).await;
                    println!(
                        "-- NATS failover {}: killed n{}, gap {}",
                        trial + 1,
                        leader + 1,
                        gap.map(|g| format!("{g:.3} s")).unwrap_or("none within 30 s".into())
                    );
                    n_fail.extend(gap);
                    nc.procs.restart(leader)?;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    // ---------------- etcd ----------------
    let mut e_puts: Vec<(usize, Triple)> = Vec::new();
    let mut e_txn: Vec<(usize, Triple)> = Vec::new();
    let mut e_fail: Vec<f64> = Vec::new();
    if !args.skip_peers && (args.wants("claims") || args.wants("failover")) {
        let bin = args
            .etcd
            .clone()
            .or_else(|| procs::which("etcd"))
            .context("etcd not found: pass --etcd or run deploy/bench.sh")?;
        let mut ec = etcd::EtcdCluster::start(&bin, &nats::dir_for(work, "etcd")?, args.etcd_port).await?;
        println!("== etcd: 3 members ({})", bin.display());
        if args.wants("claims") {
            for &c in &args.claim_concurrency {
                let (start, ev, bad) = etcd::puts(&ec, c, plan.total(), args.payload).await?;
                let puts = summarize(&plan, start, &ev);
                // Stock enough keys for the compare-and-delete run at the same concurrency.
                let per_client = ((ev.len() as f64 * 2.0 / c as f64) as u64).max(200);
                etcd::stock(&ec, c, per_client).await?;
                let (start2, ev2, bad2) = etcd::txn_deletes(&ec, c, plan.total()).await?;
                println!(
                    "   {c:>3} clients: {} puts ({bad} failed), {} txn-deletes ({bad2} failed or missed)",
                    ev.len(),
                    ev2.len()
                );
                e_puts.push((c, puts));
                e_txn.push((c, summarize(&plan, start2, &ev2)));
            }
            ec.procs.check_alive()?;
        }
        if args.wants("failover") {
            for trial in 0..args.failover_trials {
                let leader = ec.leader().await?;
                let survivors: Vec<u16> =
                    ec.ports.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, p)| *p).collect();
                let writers = (0..args.failover_writers)
                    .map(|i| FWriter::Etcd(etcd::Writer { ports: survivors.clone(), cur: i, conn: None, k: 0 }))
                    .collect();
                let probe = Probe::start(writers);
                steady(&probe, 2).await?;
                let kill_us = now_us();
                ec.procs.kill9(leader)?;
                let gap = probe.gap(kill_us, Duration::from_secs(30)).await;
                println!(
                    "-- etcd failover {}: killed e{}, gap {}",
                    trial + 1,
                    leader + 1,
                    gap.map(|g| format!("{g:.3} s")).unwrap_or("none within 30 s".into())
                );
                e_fail.extend(gap);
                ec.procs.restart(leader)?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while ec.leader().await.is_err() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }

    // ---------------- table ----------------
    let mut out: Vec<Row> = Vec::new();
    if let Some((acks, dels)) = &r_delivery {
        let mut peers: Vec<(String, Option<&Triple>, Option<&Triple>)> =
            n_delivery.iter().map(|(l, a, d)| (l.clone(), Some(a), Some(d))).collect();
        if peers.is_empty() {
            peers.push(("—".into(), None, None));
        }
        for (label, pa, pd) in &peers {
            triple_rows(&mut out, "delivery", "accepted (send->ack)", acks, label, *pa, "msg/s");
            triple_rows(&mut out, "delivery", "delivered (send->delivery)", dels, label, *pd, "msg/s");
        }
        let mut b1 = Bars {
            label: "send->ack".into(),
            values: vec![(
                "routerd".into(),
                acks.p50.map_or(f64::NAN, |s| s.median),
                acks.p99.map_or(f64::NAN, |s| s.median),
            )],
        };
        let mut b2 = Bars {
            label: "send->delivery".into(),
            values: vec![(
                "routerd".into(),
                dels.p50.map_or(f64::NAN, |s| s.median),
                dels.p99.map_or(f64::NAN, |s| s.median),
            )],
        };
        for (l, a, d) in &n_delivery {
            let short = if l.contains("always") { "NATS sync always" } else { "NATS default sync" };
            b1.values.push((short.into(), a.p50.map_or(f64::NAN, |s| s.median), a.p99.map_or(f64::NAN, |s| s.median)));
            b2.values.push((short.into(), d.p50.map_or(f64::NAN, |s| s.median), d.p99.map_or(f64::NAN, |s| s.median)));
        }
        bars.push(b1);
        bars.push(b2);
    }
    for (c, t) in &r_claims {
        let put = e_puts.iter().find(|x| x.0 == *c).map(|x| &x.1);
        let txn = e_txn.iter().find(|x| x.0 == *c).map(|x| &x.1);
        triple_rows(
            &mut out,
            "directory",
            &format!("{c} clients: prekey claim vs etcd 1 KiB put"),
            t,
            "etcd 3 members, put",
            put,
            "ops/s",
        );
        triple_rows(
            &mut out,
            "directory",
            &format!("{c} clients: prekey claim vs etcd txn-delete"),
            t,
            "etcd 3 members, txn compare-and-delete",
            txn,
            "ops/s",
        );
    }
    for (name, v) in [("routerd prekey claims", &r_claims), ("etcd 1 KiB puts", &e_puts), ("etcd txn-delete", &e_txn)] {
        if !v.is_empty() {
            series.push(Series {
                name: name.into(),
                points: v.iter().filter_map(|(c, t)| t.rate.map(|r| (*c as f64, r.median))).collect(),
            });
        }
    }
    if !r_claims.is_empty() {
        let mut b = Bars { label: "claims/puts p50-p99, max clients".into(), values: Vec::new() };
        if let Some((_, t)) = r_claims.last() {
            b.values.push((
                "routerd prekey claims".into(),
                t.p50.map_or(f64::NAN, |s| s.median),
                t.p99.map_or(f64::NAN, |s| s.median),
            ));
        }
        if let Some((_, t)) = e_puts.last() {
            b.values.push((
                "etcd 1 KiB puts".into(),
                t.p50.map_or(f64::NAN, |s| s.median),
                t.p99.map_or(f64::NAN, |s| s.median),
            ));
        }
        bars.push(b);
    }
    out.extend(rows);
    if args.wants("failover") {
        let r = Stat::of(&r_fail);
        out.push(Row::new(
            "failover",
            "kill -9 leader -> next ack (write issued after the kill)",
            "s",
            r,
            "etcd 3 members, 1 KiB put loop",
            Stat::of(&e_fail),
        ));
        out.push(Row::new(
            "failover",
            "kill -9 leader -> next ack (write issued after the kill)",
            "s",
            r,
            "NATS JetStream R3 sync always, publish loop",
            Stat::of(&n_fail),
        ));
    }
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let header = format!(
        "Run {date} on {cores} cores; warm-up {} s, {} windows of {} s per point; {} in flight (delivery), {} B payloads.",
        args.warmup, plan.reps, args.window, args.inflight, args.payload
    );
    json_extra.insert("header".into(), header.clone().into());
    json_extra.insert("rows".into(), serde_json::to_value(&out)?);
    json_extra
        .insert("failover_trials_s".into(), serde_json::json!({"router": r_fail, "etcd": e_fail, "nats": n_fail}));
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(json_extra))?,
    )?;
    std::fs::write(args.out.join("results.md"), report::markdown(&out, &header))?;
    report::svg(&args.out.join("plot.svg"), &header, &series, &bars)?;
    Ok(out)
}

async fn wait_nats_leader(nc: &nats::NatsCluster) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match nc.stream_leader("BENCH").await {
            Ok(l) if nc.procs.running[l].is_some() => return Ok(l),
            _ if Instant::now() > deadline => anyhow::bail!("no NATS stream leader within 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
