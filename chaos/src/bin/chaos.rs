//! `chaos`: fault scenarios against real `routerd` processes on 127.0.0.1.
//!
//! ```text
//! for each scenario of the profile, one after another:
//!   routerd init-dev --nodes N --base-port P (+ claim limit raised, early snapshots)
//!   start N routerd processes, wait for one leader
//!   workload: 2 senders (alpha) -> bob (beta, 2 devices), receiver acks, claimer claims carol's prekeys
//!   fault: kill -9 leader | kill -9 follower | SIGSTOP/SIGCONT leader or follower | rolling restart
//!          | wiped disk | torn or corrupt log record | leader's wall clock 400 days ahead
//!          (network profile) partitions, one-way partition, slow links
//!          (power-loss profile) power cut of the leader / of every node, unsynced writes lost
//!   heal, every node a caught-up voter, progress probe, drain, stop every process started
//!   check the history (ok / failed / unknown)
//! report: <out>/report.json, <out>/<scenario>/history.json, a table on stdout
//! exit 0: no violation; 1: a violation or a scenario error; 2: bad usage
//! (with --expect-violations, for a routerd broken on purpose: exit 0 only if
//! every scenario reported a violation)
//! ```
//!
//! Usage: `chaos --profile quick --routerd target/debug/routerd --out chaos-out`
//! (normally through `bash deploy/chaos.sh`). With `--upgrade-from OLD_ROUTERD` a
//! rolling upgrade from OLD_ROUTERD to `--routerd` is added (normally through
//! `bash deploy/upgrade-test.sh`).

use clap::{Parser, ValueEnum};
use router_chaos::scenario::{self, Fault, ScenarioResult, Spec};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Profile {
    /// A subset that fits in about three minutes on a debug build.
    Quick,
    /// Every fault on 3 and on 5 nodes, with longer phases.
    Long,
    /// Partitions, one-way partitions and slow links (iptables/tc): only
    /// inside a private network namespace, see `deploy/chaos.sh`.
    Network,
    /// Power cuts that lose every unsynced write (a loop-mounted filesystem
    /// per node): needs root, see `deploy/chaos.sh`.
    PowerLoss,
}

#[derive(Parser, Debug)]
#[command(about = "Chaos scenarios against real routerd processes; the recorded history is checked")]
struct Args {
    #[arg(long, value_enum, default_value = "quick")]
    profile: Profile,
    #[arg(long, env = "ROUTERD_BIN", default_value = "target/debug/routerd")]
    routerd: PathBuf,
    /// Report, histories, configs and node logs go here.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Run only the scenarios whose name contains this (e.g. "wipe", "5n").
    #[arg(long)]
    only: Option<String>,
    /// Seeds the port block and the run's ids.
    #[arg(long)]
    seed: Option<u64>,
    /// A routerd binary of the previous version (N): adds a rolling-upgrade
    /// scenario that starts the cluster on it and upgrades node by node to
    /// `--routerd` (N+1) under load (normally through `deploy/upgrade-test.sh`).
    #[arg(long)]
    upgrade_from: Option<PathBuf>,
    /// Checks the checker: `--routerd` breaks a guarantee on purpose (built
    /// with the `mutations` feature, `ROUTERD_MUTATION` set, which its
    /// processes inherit). Exit 0 only if every scenario reported a violation.
    #[arg(long)]
    expect_violations: bool,
}

fn specs(profile: Profile) -> Vec<Spec> {
    let base = |fault, nodes| Spec {
        fault,
        nodes,
        warmup: Duration::from_secs(4),
        down: Duration::from_secs(2),
        after: Duration::from_secs(3),
        senders: 2,
        send_window: 4,
        send_interval: Duration::from_millis(15),
        claim_interval: Duration::from_millis(60),
        prekeys_per_device: 1000,
        upgrade_from: None,
    };
    match profile {
        Profile::Quick => vec![
            base(Fault::KillLeader, 3),
            base(Fault::KillFollower, 3),
            base(Fault::PauseLeader, 3),
            base(Fault::WipeFollower, 3),
            Spec { down: Duration::from_millis(500), ..base(Fault::RollingRestart, 3) },
            base(Fault::KillLeader, 5),
            base(Fault::PauseFollower, 3),
            base(Fault::TornLogTail, 3),
            base(Fault::CorruptLogRecord, 3),
            base(Fault::ClockJumpLeader, 3),
        ],
        Profile::Network => vec![
            base(Fault::PartitionLeader, 3),
            base(Fault::OneWayLeaderOut, 3),
            base(Fault::SlowLinks, 3),
            base(Fault::PartitionMinority, 5),
            base(Fault::PartitionLeader, 5),
        ],
        Profile::PowerLoss => {
            vec![base(Fault::PowerLossLeader, 3), base(Fault::PowerLossAll, 3), base(Fault::PowerLossLeader, 5)]
        }
        Profile::Long => {
            let faults = [
                Fault::KillLeader,
                Fault::KillFollower,
                Fault::PauseLeader,
                Fault::RollingRestart,
                Fault::WipeFollower,
                Fault::PauseFollower,
                Fault::TornLogTail,
                Fault::CorruptLogRecord,
                Fault::ClockJumpLeader,
            ];
            [3, 5]
                .into_iter()
                .flat_map(|n| faults.into_iter().map(move |f| (f, n)))
                .map(|(f, n)| Spec {
                    warmup: Duration::from_secs(10),
                    down: if f == Fault::RollingRestart { Duration::from_secs(1) } else { Duration::from_secs(5) },
                    after: Duration::from_secs(10),
                    claim_interval: Duration::from_millis(40),
                    ..base(f, n)
                })
                .collect()
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.routerd.is_file() {
        eprintln!("chaos: no routerd binary at {} (cargo build -p router-node)", args.routerd.display());
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async_main(args))
}

async fn async_main(args: Args) -> ExitCode {
    let seed = args.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (t.as_millis() as u64) ^ u64::from(std::process::id())
    });
    let routerd = std::fs::canonicalize(&args.routerd).unwrap_or(args.routerd.clone());
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("chaos: create {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    let out = std::fs::canonicalize(&args.out).unwrap_or(args.out.clone());
    let mut specs = specs(args.profile);
    if let Some(old) = &args.upgrade_from {
        if !old.is_file() {
            eprintln!("chaos: no routerd binary to upgrade from at {}", old.display());
            return ExitCode::from(2);
        }
        let old = std::fs::canonicalize(old).unwrap_or(old.clone());
        let upgrade = Spec {
            fault: Fault::RollingUpgrade,
            down: Duration::from_secs(3),
            upgrade_from: Some(old),
            ..specs[0].clone()
        };
        specs.push(Spec { nodes: 3, ..upgrade });
    }
    if let Some(f) = &args.only {
        specs.retain(|s| s.name().contains(f.as_str()));
    }
    eprintln!(
        "chaos: profile {:?}, {} scenarios, seed {seed}, routerd {}, out {}",
        args.profile,
        specs.len(),
        routerd.display(),
        out.display()
    );
    let started = std::time::Instant::now();
    let mut results: Vec<ScenarioResult> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        eprintln!("chaos: [{}/{}] {} ...", i + 1, specs.len(), spec.name());
        let r = tokio::select! {
            r = scenario::run(spec, &routerd, &out, seed.wrapping_add(i as u64)) => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("chaos: interrupted; the scenario's processes were stopped");
                return ExitCode::from(1);
            }
        };
        eprintln!(
            "chaos: [{}/{}] {} {} in {} ms",
            i + 1,
            specs.len(),
            r.scenario,
            if r.passed() { "passed" } else { "FAILED" },
            r.duration_ms
        );
        for v in &r.violations {
            eprintln!("chaos:    violation: {}: {}", v.invariant, v.detail);
        }
        if let Some(e) = &r.error {
            eprintln!("chaos:    error: {e}");
        }
        results.push(r);
    }
    let passed = results.iter().all(ScenarioResult::passed);
    let report = serde_json::json!({
        "profile": format!("{:?}", args.profile).to_lowercase(),
        "seed": seed,
        "routerd": routerd.display().to_string(),
        "duration_ms": started.elapsed().as_millis() as u64,
        "passed": passed,
        "not_covered": not_covered(args.profile),
        "scenarios": results,
    });
    let path = out.join("report.json");
    if let Err(e) = std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap_or_default()) {
        eprintln!("chaos: write {}: {e}", path.display());
    }
    let table = table(&results);
    print!("{table}");
    let _ = std::fs::write(out.join("summary.txt"), &table);
    println!("report: {}  ({} s)", path.display(), started.elapsed().as_secs());
    if args.expect_violations {
        let missed: Vec<&str> =
            results.iter().filter(|r| r.violations.is_empty()).map(|r| r.scenario.as_str()).collect();
        if missed.is_empty() {
            println!(
                "chaos: every scenario caught the mutation ({})",
                std::env::var("ROUTERD_MUTATION").unwrap_or_default()
            );
            return ExitCode::SUCCESS;
        }
        println!("chaos: the checker stayed green under a broken routerd in {missed:?}");
        return ExitCode::from(1);
    }
    if passed { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// The faults other profiles inject.
fn not_covered(profile: Profile) -> Vec<&'static str> {
    let network = ["network partitions", "one-way partitions", "slow links"];
    let process = [
        "kill -9",
        "SIGSTOP/SIGCONT",
        "rolling restart",
        "wiped data directory",
        "torn / corrupt log record",
        "wall clock jump",
    ];
    let power = ["lost unsynced writes (power cut)"];
    match profile {
        Profile::Quick | Profile::Long => network.iter().chain(&power).copied().collect(),
        Profile::Network => process.iter().chain(&power).copied().collect(),
        Profile::PowerLoss => process.iter().chain(&network).copied().collect(),
    }
}

fn table(results: &[ScenarioResult]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<26} {:>5} {:>17} {:>14} {:>8} {:>9} {:>9} {:>9} {:>6}  {}\n",
        "scenario",
        "nodes",
        "send ok/fail/unk",
        "claim ok/f/u",
        "keys",
        "fault ms",
        "unavl ms",
        "recov ms",
        "viol",
        "verdict"
    ));
    for r in results {
        let count = |kind: &str, o: &str| r.stats.ops.get(kind).and_then(|m| m.get(o)).copied().unwrap_or(0);
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        s.push_str(&format!(
            "{:<26} {:>5} {:>17} {:>14} {:>8} {:>9} {:>9} {:>9} {:>6}  {}\n",
            r.scenario,
            r.nodes,
            format!("{}/{}/{}", count("send", "ok"), count("send", "failed"), count("send", "unknown")),
            format!("{}/{}/{}", count("claim", "ok"), count("claim", "failed"), count("claim", "unknown")),
            r.stats.prekeys_claimed,
            r.fault_duration_ms,
            r.stats.max_unavailability_ms,
            ms(r.recovery_ms),
            r.violations.len(),
            if r.error.is_some() {
                "ERROR"
            } else if r.passed() {
                "ok"
            } else {
                "VIOLATED"
            }
        ));
    }
    s
}
