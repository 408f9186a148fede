//! The comparison run: routerd (this build, and a baseline build when given)
//! against NATS JetStream in several labelled configurations and etcd, every
//! system with TLS and three members on loopback, one system at a time. For
//! each point: rate and latency over the measurement windows and what a
//! message costs (CPU, disk bytes, device flushes, memory; see `cost`).

use crate::args::Args;
use crate::cost::{Cost, Meter, Samples};
use crate::failover::{self, FWriter};
use crate::nats::{self, Variant};
use crate::pki::Pki;
use crate::report::{self, Bars, Row, Series, Table, stat_cell};
use crate::stats::{Plan, Stat, Triple, summarize};
use crate::{etcd, procs, router};
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One system's figures in the delivery workload.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub system: String,
    /// Every accepted message was on disk (fsynced) on a quorum before its ack.
    pub fsync_per_write: bool,
    pub accepted: Triple,
    pub delivered: Triple,
    pub cost: Cost,
    pub errors: u64,
    pub undelivered: u64,
}

/// One system's figures at one point of the directory-write workload.
impl Delivery {
    fn of(
        system: &str,
        fsync_per_write: bool,
        plan: &Plan,
        run: &router::DeliveryRun,
        samples: &Samples,
        payload: usize,
    ) -> Self {
        run.print();
        Delivery {
            system: system.into(),
            fsync_per_write,
            accepted: summarize(plan, run.start_us, &run.acks),
            delivered: summarize(plan, run.start_us, &run.deliveries),
            cost: samples.cost(plan, run.start_us, &run.deliveries, payload),
            errors: run.errors,
            undelivered: run.undelivered,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Writes {
    pub system: String,
    pub clients: usize,
    pub ops: Triple,
    pub cost: Cost,
    pub failed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    pub system: String,
    pub gaps_s: Vec<f64>,
}

#[derive(Default, Serialize)]
pub struct Results {
    pub delivery: Vec<Delivery>,
    pub directory: Vec<Writes>,
    pub failover: Vec<Failover>,
    #[serde(skip)]
    pub group_rows: Vec<Row>,
}

pub const THIS_BUILD: &str = "routerd (this build)";
pub const BASELINE: &str = "routerd (baseline)";

fn binary(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p)
        .with_context(|| format!("routerd binary {} (build with cargo build --release -p router-node)", p.display()))
}

/// The router builds to measure: the baseline first (when given), then this build.
pub fn builds(args: &Args) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let mut v = Vec::new();
    if let Some(b) = &args.baseline_routerd {
        v.push((BASELINE, binary(b)?));
    }
    v.push((THIS_BUILD, binary(&args.routerd)?));
    Ok(v)
}

/// Three routerd processes of `bin` in `dir`, with the flags' extra config
/// (`extra_toml` in front of it) and SDK batching.
pub async fn start_router(
    args: &Args,
    bin: &Path,
    dir: &Path,
    extra_toml: &str,
) -> anyhow::Result<router::RouterCluster> {
    std::fs::create_dir_all(dir)?;
    let mut rc = router::RouterCluster::start(bin, dir, args.router_port, 3, extra_toml).await?;
    rc.send_batch = (args.send_batch, args.send_batch_calls);
    Ok(rc)
}

pub async fn run(args: &Args, work: &Path) -> anyhow::Result<Vec<Row>> {
    let plan = args.plan();
    let mut res = Results::default();
    if !args.skip_router {
        for (k, (label, bin)) in builds(args)?.into_iter().enumerate() {
            run_router(args, &plan, &work.join(format!("router-{k}")), label, &bin, &mut res).await?;
        }
    }
    if !args.skip_peers {
        let pki = Pki::create(&work.join("peer-certs"), 3)?;
        if args.wants("delivery") || args.wants("failover") {
            run_nats(args, &plan, work, &pki, &mut res).await?;
        }
        if args.wants("claims") || args.wants("failover") {
            run_etcd(args, &plan, work, &pki, &mut res).await?;
        }
    }
    write_results(args, &plan, &res)
}

async fn run_router(
    args: &Args,
    plan: &Plan,
    dir: &Path,
    label: &str,
    bin: &Path,
    res: &mut Results,
) -> anyhow::Result<()> {
    println!("== {label}: 3 processes ({})", bin.display());
    let limits =
        format!("\n[limits]\nprekey_claim_burst = 100000000\nprekey_claim_refill_ms = 1\n{}\n", args.router_config);
    let mut rc = start_router(args, bin, dir, &limits).await?;
    if args.wants("delivery") {
        println!(
            "-- delivery: {} sends in flight over {} clients, {} B, receiver window {}",
            args.inflight, args.clients, args.payload, args.receive_window
        );
        let (run, samples) = router::metered_delivery(&rc, &args.delivery_opts(plan.total(), None)).await?;
        res.delivery.push(Delivery::of(label, true, plan, &run, &samples, args.payload));
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
            let meter = Meter::start(rc.procs.pids(), dir);
            let (start, ev, errors, exhausted) = router::claims(&rc, args.claim_users, c, plan.total()).await?;
            let samples = meter.finish().await;
            println!("   {c:>3} clients: {} claims, {errors} errors, {exhausted} without a one-time key", ev.len());
            res.directory.push(Writes {
                system: format!("{label}: prekey claim"),
                clients: c,
                ops: summarize(plan, start, &ev),
                cost: samples.cost(plan, start, &ev, 0),
                failed: errors,
            });
        }
        rc.procs.check_alive()?;
    }
    if args.wants("groups") {
        res.group_rows.extend(groups(args, plan, &rc, label).await?);
        rc.procs.check_alive()?;
    }
    if args.wants("failover") {
        router::failover_setup(&rc).await?;
        let mut gaps = Vec::new();
        for trial in 0..args.failover_trials {
            let leader = rc.wait_for_leader(Duration::from_secs(30)).await? as usize;
            let survivors: Vec<usize> = (0..rc.nodes()).filter(|i| *i != leader - 1).collect();
            let writers = (0..args.failover_writers)
                .map(|i| {
                    rc.client("a", survivors[i % survivors.len()], Some(Duration::from_millis(600)))
                        .map(FWriter::Router)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let gap = failover::trial(writers, || rc.procs.kill9(leader - 1).map(drop)).await?;
            println!("-- {label} failover {}: killed node {leader}, gap {}", trial + 1, failover::show(gap));
            gaps.extend(gap);
            rc.procs.restart(leader - 1)?;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        res.failover.push(Failover { system: label.into(), gaps_s: gaps });
    }
    Ok(())
}

async fn groups(args: &Args, plan: &Plan, rc: &router::RouterCluster, label: &str) -> anyhow::Result<Vec<Row>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    println!("-- groups: {} members over 5 providers, {} sends in flight", args.group_members, args.group_inflight);
    let opts = router::GroupOpts {
        total: plan.total(),
        window: args.group_inflight,
        members: args.group_members,
        payload: args.payload,
        receive_window: args.receive_window,
    };
    let run = router::groups(rc, &opts).await?;
    println!(
        "   sent {} provider entries {} errors {} undelivered {}",
        run.acks.len(),
        run.deliveries.len(),
        run.errors,
        run.undelivered
    );
    let sends = summarize(plan, run.start_us, &run.acks);
    let entries = summarize(plan, run.start_us, &run.deliveries);
    // Member deliveries per window: the recipients named in each delivered entry.
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
    let w = format!("groups, {label}");
    Ok(vec![
        Row::new(&w, "group sends accepted", "msg/s", sends.rate, "—", None),
        Row::new(&w, "send->ack p50", "ms", sends.p50, "—", None),
        Row::new(&w, "send->ack p99", "ms", sends.p99, "—", None),
        Row::new(&w, "provider mailbox entries delivered", "/s", entries.rate, "—", None),
        Row::new(&w, "member deliveries (fan-out)", "/s", members, "—", None),
        Row::new(&w, &format!("member deliveries per core ({cores} cores)"), "/s", per_core, "—", None),
        Row::new(&w, "send->delivery p50", "ms", entries.p50, "—", None),
        Row::new(&w, "send->delivery p99", "ms", entries.p99, "—", None),
    ])
}

/// The JetStream configurations to run, from `--nats-variants`.
fn variants(args: &Args) -> anyhow::Result<Vec<Variant>> {
    args.nats_variants
        .iter()
        .map(|k| {
            Variant::ALL
                .into_iter()
                .find(|v| v.key() == k.as_str())
                .with_context(|| format!("unknown --nats-variants entry {k:?} (known: a, b, c, d, e; see --help)"))
        })
        .collect()
}

async fn run_nats(args: &Args, plan: &Plan, work: &Path, pki: &Pki, res: &mut Results) -> anyhow::Result<()> {
    let bin = args
        .nats_server
        .clone()
        .or_else(|| procs::which("nats-server"))
        .context("nats-server not found: pass --nats-server or run deploy/bench.sh")?;
    let mut runs: Vec<(Variant, bool)> = Vec::new();
    if args.wants("delivery") {
        runs.extend(variants(args)?.into_iter().map(|v| (v, true)));
        if args.nats_default_sync {
            runs.push((Variant::LimitsAckAll, false));
        }
    }
    // Failover runs on (b) with per-write fsync, after its delivery point if there is one.
    let failover_on = (Variant::LimitsAckAll, true);
    if args.wants("failover") && !runs.contains(&failover_on) {
        runs.push(failover_on);
    }
    for (variant, sync) in runs {
        let name = format!("nats-{}{}", variant.key(), if sync { "" } else { "-default-sync" });
        let dir = nats::dir_for(work, &name)?;
        let mut nc = nats::NatsCluster::start(&bin, &dir, args.nats_port, sync, pki).await?;
        let label = if sync {
            format!("{}, fsync per write", variant.label())
        } else {
            format!("{}, default sync (no fsync per write)", variant.label())
        };
        println!("== {label}");
        let streams = nc.create_streams(variant, args.receive_window).await?;
        if args.wants("delivery") {
            let meter = Meter::start(nc.procs.pids(), &dir);
            let run = nats::delivery(
                &nc,
                variant,
                &streams,
                plan.total(),
                args.inflight,
                args.clients,
                args.payload,
                args.receive_window,
            )
            .await?;
            let samples = meter.finish().await;
            res.delivery.push(Delivery::of(&label, sync, plan, &run, &samples, args.payload));
            nc.procs.check_alive()?;
        }
        if (variant, sync) == failover_on && args.wants("failover") {
            let mut gaps = Vec::new();
            for trial in 0..args.failover_trials {
                let leader = failover::wait_nats_leader(&nc, &streams[0]).await?;
                let survivors: Vec<u16> =
                    nc.ports.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, p)| *p).collect();
                let writers = (0..args.failover_writers)
                    .map(|i| {
                        FWriter::Nats(nats::Writer {
                            ports: survivors.clone(),
                            tls: nc.tls.clone(),
                            cur: i,
                            conn: None,
                        })
                    })
                    .collect();
                let gap = failover::trial(writers, || nc.procs.kill9(leader).map(drop)).await?;
                println!("-- NATS failover {}: killed n{}, gap {}", trial + 1, leader + 1, failover::show(gap));
                gaps.extend(gap);
                nc.procs.restart(leader)?;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            res.failover.push(Failover {
                system: "NATS JetStream R3, TLS, fsync per write, publish loop".into(),
                gaps_s: gaps,
            });
        }
    }
    Ok(())
}

async fn run_etcd(args: &Args, plan: &Plan, work: &Path, pki: &Pki, res: &mut Results) -> anyhow::Result<()> {
    let bin = args
        .etcd
        .clone()
        .or_else(|| procs::which("etcd"))
        .context("etcd not found: pass --etcd or run deploy/bench.sh")?;
    let dir = nats::dir_for(work, "etcd")?;
    let mut ec = etcd::EtcdCluster::start(&bin, &dir, args.etcd_port, pki).await?;
    println!("== etcd: 3 members, TLS, gRPC ({})", bin.display());
    if args.wants("claims") {
        for &c in &args.claim_concurrency {
            let meter = Meter::start(ec.procs.pids(), &dir);
            let (start, ev, bad) = etcd::puts(&ec, c, plan.total()).await?;
            let samples = meter.finish().await;
            // Stock enough keys for the compare-and-delete run at the same concurrency.
            let per_client = ((ev.len() as f64 * 2.0 / c as f64) as u64).max(200);
            etcd::stock(&ec, c, per_client).await?;
            let meter2 = Meter::start(ec.procs.pids(), &dir);
            let (start2, ev2, bad2) = etcd::txn_deletes(&ec, c, plan.total()).await?;
            let samples2 = meter2.finish().await;
            println!(
                "   {c:>3} clients: {} puts ({bad} failed), {} txn-deletes ({bad2} failed or missed)",
                ev.len(),
                ev2.len()
            );
            res.directory.push(Writes {
                system: format!("etcd: put of {} B", etcd::CLAIM_SIZED_VALUE),
                clients: c,
                ops: summarize(plan, start, &ev),
                cost: samples.cost(plan, start, &ev, 0),
                failed: bad,
            });
            res.directory.push(Writes {
                system: "etcd: txn deleting one key of a prefix".into(),
                clients: c,
                ops: summarize(plan, start2, &ev2),
                cost: samples2.cost(plan, start2, &ev2, 0),
                failed: bad2,
            });
        }
        ec.procs.check_alive()?;
    }
    if args.wants("failover") {
        let mut gaps = Vec::new();
        for trial in 0..args.failover_trials {
            let leader = ec.leader().await?;
            let survivors: Vec<usize> = (0..ec.ports.len()).filter(|i| *i != leader).collect();
            let writers = (0..args.failover_writers)
                .map(|i| {
                    FWriter::Etcd(etcd::Writer {
                        connector: ec.connector.clone(),
                        members: survivors.clone(),
                        cur: i,
                        conn: None,
                        k: 0,
                    })
                })
                .collect();
            let gap = failover::trial(writers, || ec.procs.kill9(leader).map(drop)).await?;
            println!("-- etcd failover {}: killed e{}, gap {}", trial + 1, leader + 1, failover::show(gap));
            gaps.extend(gap);
            ec.procs.restart(leader)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while ec.leader().await.is_err() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        res.failover.push(Failover { system: "etcd 3 members, TLS, put loop".into(), gaps_s: gaps });
    }
    Ok(())
}

fn ratio(a: Option<Stat>, b: Option<Stat>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}×", a.median / b.median),
        _ => "—".into(),
    }
}

fn rss(c: &Cost) -> String {
    stat_cell(c.rss_mib_total)
}

/// The delivery table: one row per system, ratios against this build.
pub fn delivery_table(rows: &[Delivery]) -> Table {
    let this = rows.iter().find(|d| d.system == THIS_BUILD);
    let mut t = Table::new(
        "Durable 1:1 delivery (3 members, TLS; cost per delivered message, all three server processes)",
        &[
            "System",
            "accepted msg/s",
            "send→ack p50 ms",
            "send→ack p99 ms",
            "send→delivery p99 ms",
            "CPU µs/msg",
            "disk B/msg",
            "disk B / payload B",
            "device flushes/s",
            "RSS MiB (3 procs)",
            "this build ÷ system: msg/s",
            "p99 send→ack",
        ],
    );
    for d in rows {
        t.push(vec![
            d.system.clone(),
            stat_cell(d.accepted.rate),
            stat_cell(d.accepted.p50),
            stat_cell(d.accepted.p99),
            stat_cell(d.delivered.p99),
            stat_cell(d.cost.cpu_us_per_msg),
            stat_cell(d.cost.disk_bytes_per_msg),
            stat_cell(d.cost.write_amplification),
            stat_cell(d.cost.device_flushes_per_s),
            rss(&d.cost),
            this.map_or("—".into(), |x| ratio(x.accepted.rate, d.accepted.rate)),
            this.map_or("—".into(), |x| ratio(x.accepted.p99, d.accepted.p99)),
        ]);
    }
    t
}

/// The directory-write table: one row per system and concurrency.
pub fn directory_table(rows: &[Writes]) -> Table {
    let mut t = Table::new(
        "Directory writes (one linearizable write each; cost per operation, all three server processes)",
        &[
            "System and operation",
            "clients",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "CPU µs/op",
            "disk B/op",
            "device flushes/s",
            "RSS MiB (3 procs)",
            "this build's claims ÷ system: ops/s",
        ],
    );
    for w in rows {
        let this = rows.iter().find(|x| x.clients == w.clients && x.system.starts_with(THIS_BUILD));
        t.push(vec![
            w.system.clone(),
            w.clients.to_string(),
            stat_cell(w.ops.rate),
            stat_cell(w.ops.p50),
            stat_cell(w.ops.p99),
            stat_cell(w.cost.cpu_us_per_msg),
            stat_cell(w.cost.disk_bytes_per_msg),
            stat_cell(w.cost.device_flushes_per_s),
            rss(&w.cost),
            this.map_or("—".into(), |x| ratio(x.ops.rate, w.ops.rate)),
        ]);
    }
    t
}

pub fn failover_table(rows: &[Failover]) -> Table {
    let mut t = Table::new(
        "Failover: kill -9 of the leader → first success of a write issued after the kill",
        &["System", "gap s: median (min–max)", "trials", "each trial s"],
    );
    for f in rows {
        t.push(vec![
            f.system.clone(),
            stat_cell(Stat::of(&f.gaps_s)),
            f.gaps_s.len().to_string(),
            f.gaps_s.iter().map(|g| format!("{g:.2}")).collect::<Vec<_>>().join(", "),
        ]);
    }
    t
}

/// Pairwise rows: this build against the strongest peer configuration of each
/// workload (and against the baseline build when there is one).
fn pairwise(res: &Results) -> Vec<Row> {
    let mut out = Vec::new();
    let this = res.delivery.iter().find(|d| d.system == THIS_BUILD);
    let best_peer =
        res.delivery.iter().filter(|d| !d.system.starts_with("routerd") && d.fsync_per_write).max_by(|a, b| {
            let r = |d: &Delivery| d.accepted.rate.map_or(0.0, |s| s.median);
            r(a).total_cmp(&r(b))
        });
    let baseline = res.delivery.iter().find(|d| d.system == BASELINE);
    if let Some(t) = this {
        for other in [best_peer, baseline].into_iter().flatten() {
            let name = &other.system;
            out.push(Row::new("delivery", "accepted msg/s", "msg/s", t.accepted.rate, name, other.accepted.rate));
            out.push(Row::new("delivery", "send->ack p99", "ms", t.accepted.p99, name, other.accepted.p99));
            out.push(Row::new("delivery", "send->delivery p99", "ms", t.delivered.p99, name, other.delivered.p99));
            out.push(Row::new(
                "delivery",
                "CPU per delivered msg",
                "µs",
                t.cost.cpu_us_per_msg,
                name,
                other.cost.cpu_us_per_msg,
            ));
            out.push(Row::new(
                "delivery",
                "disk bytes per msg",
                "B",
                t.cost.disk_bytes_per_msg,
                name,
                other.cost.disk_bytes_per_msg,
            ));
        }
    }
    for w in res.directory.iter().filter(|w| w.system.starts_with(THIS_BUILD)) {
        for other in res.directory.iter().filter(|x| x.clients == w.clients && !x.system.starts_with(THIS_BUILD)) {
            out.push(Row::new(
                "directory",
                &format!("{} clients: ops/s", w.clients),
                "ops/s",
                w.ops.rate,
                &other.system,
                other.ops.rate,
            ));
        }
    }
    if let Some(t) = res.failover.iter().find(|f| f.system == THIS_BUILD) {
        for other in res.failover.iter().filter(|f| f.system != THIS_BUILD) {
            out.push(Row::new(
                "failover",
                "kill -9 leader -> next ack",
                "s",
                Stat::of(&t.gaps_s),
                &other.system,
                Stat::of(&other.gaps_s),
            ));
        }
    }
    out.extend(res.group_rows.iter().cloned());
    out
}

fn write_results(args: &Args, plan: &Plan, res: &Results) -> anyhow::Result<Vec<Row>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let header = format!(
        "Run {} on {cores} cores; warm-up {} s, {} windows of {} s per point; {} in flight (delivery), {} B payloads; \
         every system with TLS (client and member-to-member), three members on 127.0.0.1.",
        report::utc_now(),
        args.warmup,
        plan.reps,
        args.window,
        args.inflight,
        args.payload
    );
    let tables = [delivery_table(&res.delivery), directory_table(&res.directory), failover_table(&res.failover)];
    let rows = pairwise(res);
    let mut md = format!("{header}\n\n");
    for t in tables.iter().filter(|t| !t.rows.is_empty()) {
        t.print();
        md.push_str(&t.markdown());
        md.push('\n');
    }
    md.push_str("### This build against the strongest configuration of each peer\n\n");
    md.push_str(&report::markdown(&rows, ""));
    std::fs::write(args.out.join("results.md"), md)?;
    let json = serde_json::json!({"header": header, "results": res, "rows": rows});
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    let mut series = Vec::new();
    for name in res.directory.iter().map(|w| w.system.clone()).collect::<std::collections::BTreeSet<_>>() {
        series.push(Series {
            name: name.clone(),
            points: res
                .directory
                .iter()
                .filter(|w| w.system == name)
                .filter_map(|w| w.ops.rate.map(|r| (w.clients as f64, r.median)))
                .collect(),
        });
    }
    let bars = vec![Bars {
        label: "delivery send->ack".into(),
        values: res
            .delivery
            .iter()
            .map(|d| {
                (
                    d.system.split(',').next().unwrap_or(&d.system).to_string(),
                    d.accepted.p50.map_or(f64::NAN, |s| s.median),
                    d.accepted.p99.map_or(f64::NAN, |s| s.median),
                )
            })
            .collect(),
    }];
    report::svg(&args.out.join("plot.svg"), &header, &series, &bars)?;
    Ok(rows)
}
