//! The soak: the delivery workload held for `--soak-secs` (10 minutes by
//! default), first at saturation (closed loop, `--inflight` sends always in
//! flight), then at a fixed offered load below it (open loop, `--soak-rate`,
//! by default half of what the saturated phase accepted). Each phase on a
//! fresh cluster; figures per 10 s window over time (rate, p50, p99, CPU per
//! message, resident memory), so the effects of snapshots, the dedup window
//! filling and log compaction show as they happen.

use crate::args::Args;
use crate::report::{Panel, Series, Table, num_cell};
use crate::stats::Plan;
use crate::{compare, router};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

const WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub t_s: f64,
    pub accepted_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub delivery_p99_ms: f64,
    pub cpu_us_per_msg: f64,
    pub rss_mib_total: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub system: String,
    pub load: String,
    pub errors: u64,
    pub undelivered: u64,
    pub windows: Vec<Window>,
}

pub async fn run(args: &Args, work: &Path) -> anyhow::Result<()> {
    let reps = (args.soak_secs / WINDOW.as_secs()).max(1) as usize;
    let plan = Plan { warmup: Duration::ZERO, window: WINDOW, reps };
    let mut phases = Vec::new();
    for (k, (label, bin)) in compare::builds(args)?.into_iter().enumerate() {
        let saturated = phase(args, &plan, &work.join(format!("soak-{k}-saturated")), label, &bin, None).await?;
        let rate = args.soak_rate.unwrap_or_else(|| {
            let mut r: Vec<f64> = saturated.windows.iter().map(|w| w.accepted_per_s).collect();
            r.sort_by(f64::total_cmp);
            (r.get(r.len() / 2).copied().unwrap_or(1000.0) / 2.0).round()
        });
        phases.push(saturated);
        phases.push(phase(args, &plan, &work.join(format!("soak-{k}-paced")), label, &bin, Some(rate)).await?);
    }
    let mut table = Table::new(
        &format!("Soak: {} s per phase, figures per {} s window", reps as u64 * WINDOW.as_secs(), WINDOW.as_secs()),
        &["System", "load", "t s", "accepted/s", "p50 ms", "p99 ms", "delivery p99 ms", "CPU µs/msg", "RSS MiB"],
    );
    for p in &phases {
        for w in &p.windows {
            table.push(vec![
                p.system.clone(),
                p.load.clone(),
                format!("{:.0}", w.t_s),
                num_cell(Some(w.accepted_per_s)),
                num_cell(Some(w.p50_ms)),
                num_cell(Some(w.p99_ms)),
                num_cell(Some(w.delivery_p99_ms)),
                num_cell(Some(w.cpu_us_per_msg)),
                num_cell(Some(w.rss_mib_total)),
            ]);
        }
    }
    std::fs::write(args.out.join("soak.md"), table.markdown())?;
    std::fs::write(args.out.join("soak.json"), serde_json::to_string_pretty(&phases)?)?;
    let series = |f: fn(&Window) -> f64, what: &str| -> Vec<Series> {
        phases
            .iter()
            .map(|p| Series {
                name: format!("{}, {} {what}", p.system, p.load),
                points: p.windows.iter().map(|w| (w.t_s, f(w))).collect(),
            })
            .collect()
    };
    let mut latency = series(|w| w.p99_ms, "p99");
    latency.extend(series(|w| w.p50_ms, "p50"));
    let panels = [
        Panel {
            title: "send→ack latency per window (ms)".into(),
            x_label: "s".into(),
            y_label: "ms".into(),
            series: latency,
        },
        Panel {
            title: "accepted msg/s per window".into(),
            x_label: "s".into(),
            y_label: "msg/s".into(),
            series: series(|w| w.accepted_per_s, ""),
        },
        Panel {
            title: "resident memory, three nodes (MiB)".into(),
            x_label: "s".into(),
            y_label: "MiB".into(),
            series: series(|w| w.rss_mib_total, ""),
        },
    ];
    crate::report::line_svg(&args.out.join("soak.svg"), "Soak: delivery over time", &panels)?;
    println!("soak: {} phases; soak.md, soak.json, soak.svg in {}", phases.len(), args.out.display());
    Ok(())
}

async fn phase(
    args: &Args,
    plan: &Plan,
    dir: &Path,
    label: &str,
    bin: &Path,
    rate: Option<f64>,
) -> anyhow::Result<Phase> {
    let load = match rate {
        None => format!("saturated ({} in flight)", args.inflight),
        Some(r) => format!("offered {r:.0} msg/s"),
    };
    println!("== soak, {label}, {load}, {} s", plan.total().as_secs());
    let _ = std::process::Command::new("sync").status();
    let mut rc = compare::start_router(args, bin, dir, &args.router_config).await?;
    let (run, samples) = router::metered_delivery(&rc, &args.delivery_opts(plan.total(), rate)).await?;
    rc.procs.check_alive()?;
    let acks = plan.split(run.start_us, &run.acks);
    let dels = plan.split(run.start_us, &run.deliveries);
    let costs = samples.windows(plan, run.start_us, &run.deliveries, args.payload);
    let windows = (0..plan.reps)
        .map(|i| Window {
            t_s: ((i + 1) as u64 * WINDOW.as_secs()) as f64,
            accepted_per_s: acks[i].0,
            p50_ms: acks[i].1,
            p99_ms: acks[i].2,
            delivery_p99_ms: dels[i].2,
            cpu_us_per_msg: costs[i].as_ref().map_or(f64::NAN, |c| c.cpu_us_per_msg),
            rss_mib_total: costs[i].as_ref().map_or(f64::NAN, |c| c.rss_mib_total),
        })
        .collect();
    println!("   accepted {} errors {} undelivered {}", run.acks.len(), run.errors, run.undelivered);
    Ok(Phase { system: label.into(), load, errors: run.errors, undelivered: run.undelivered, windows })
}
