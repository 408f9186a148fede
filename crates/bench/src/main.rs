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

mod args;
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
use args::Args;
use clap::Parser;
use report::Row;
use std::time::Instant;

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
    let mut figures = Vec::new();
    for (label, bin) in compare::builds(args)? {
        println!("== backlog, {label} ({})", bin.display());
        let f =
            backlog::run(&bin, &work.join(if label == compare::BASELINE { "baseline" } else { "this" }), &opts).await?;
        println!("{f:?}");
        figures.push(f);
    }
    let new = figures.pop().context("this build's figures")?;
    let old = figures.pop();
    let rows = backlog::rows(&opts, &new, old.as_ref());
    let header = format!(
        "Backlog: {} envelopes of {} B for an absent provider, {} sends in flight; 3 nodes on loopback.",
        opts.envelopes, opts.bytes, opts.inflight
    );
    std::fs::write(args.out.join("backlog.md"), report::markdown(&rows, &header))?;
    std::fs::write(args.out.join("backlog.json"), serde_json::to_string_pretty(&rows)?)?;
    Ok(rows)
}
