//! `router-bench`: routerd (three release-build processes; this build and,
//! with `--baseline-routerd`, an earlier one in the same run) against NATS
//! JetStream and etcd (three members each), every system with TLS, all on
//! loopback; and, with `--only backlog`, this build against the previous one
//! holding mail for an absent provider (see `backlog`).
//!
//! Workloads: durable 1:1 delivery, directory writes (prekey claims vs etcd
//! puts / compare-and-delete), group fan-out, and leader failover. Every
//! figure is the median (min–max) of `--reps` consecutive measurement windows
//! after a warm-up, with what a message costs read from `/proc` (`cost`).
//! Results: tables on stdout, `results.json`, `results.md` and `plot.svg`
//! under `--out`.

mod backlog;
mod compare;
mod cost;
mod etcd;
mod failover;
mod growth;
mod nats;
mod pki;
mod procs;
mod report;
mod router;
mod soak;
mod stats;

use anyhow::Context;
use clap::Parser;
use report::Row;
use stats::Plan;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark routerd against NATS JetStream and etcd on loopback")]
pub struct Args {
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
    /// or one of `backlog`, `soak`, `growth` alone (routerd only; with
    /// `--baseline-routerd`, on both builds).
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
    /// An earlier build's routerd: every router workload (and `backlog`) runs
    /// on it too, in the same run, and the tables compare this build with it.
    #[arg(long)]
    baseline_routerd: Option<PathBuf>,
    /// JetStream configurations for the delivery workload (see `nats::Variant`):
    /// a work-queue + R3 consumer + ack per message; b limits retention + R3
    /// consumer + AckAll; c = b + atomic batch publish; d = b + Nats-Msg-Id;
    /// e = b over 3 streams. All with `sync_interval: always`.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e")]
    nats_variants: Vec<String>,
    /// Also run (b) with JetStream's default sync (no fsync per write), as a reference.
    #[arg(long)]
    nats_default_sync: bool,
    /// Backlog workload: envelopes queued for the absent provider.
    #[arg(long, default_value_t = 8192)]
    backlog_envelopes: u64,
    /// Backlog workload: bytes per envelope (192 KiB: 1.5 GiB in all by default).
    #[arg(long, default_value_t = 192 * 1024)]
    backlog_bytes: usize,
    /// Backlog workload: sends in flight.
    #[arg(long, default_value_t = 16)]
    backlog_inflight: usize,
    /// Soak: seconds per phase (saturated, then paced).
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// Soak: offered load of the paced phase in msg/s (default: half of what
    /// the saturated phase accepted).
    #[arg(long)]
    soak_rate: Option<f64>,
    /// Growth: connected receive streams per level.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    growth_streams: Vec<usize>,
    /// Growth: users in the directory per level.
    #[arg(long, value_delimiter = ',', default_value = "0,10000,100000")]
    growth_users: Vec<u64>,
    /// Growth: entries queued for an absent provider per level.
    #[arg(long, value_delimiter = ',', default_value = "0,100000,1000000")]
    growth_queued: Vec<u64>,
    /// Keep the working directory (configs, data, logs of every process).
    #[arg(long)]
    keep: bool,
}

impl Args {
    pub fn plan(&self) -> Plan {
        Plan {
            warmup: Duration::from_secs_f64(self.warmup),
            window: Duration::from_secs_f64(self.window),
            reps: self.reps.max(1),
        }
    }
    pub fn wants(&self, w: &str) -> bool {
        self.only.iter().any(|x| x == w)
    }
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
    let result = match args.only.as_slice() {
        [w] if w == "backlog" => run_backlog(&args, &workdir).await,
        [w] if w == "soak" => soak::run(&args, &workdir).await.map(|()| Vec::new()),
        [w] if w == "growth" => growth::run(&args, &workdir).await.map(|()| Vec::new()),
        _ => compare::run(&args, &workdir).await,
    };
    if args.keep {
        let _ = work.keep();
    }
    let rows = result?;
    if !rows.is_empty() {
        report::print(&rows);
    }
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
