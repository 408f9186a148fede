//! `sim`: runs seeds of the deterministic simulation and reports.
//!
//! ```text
//! sim --seed 42 --verbose          replay one seed (prints its faults and trace hash)
//! sim --seeds 0..200               a range (CI runs 200 on 3 nodes through the test)
//! sim --seeds 0..10000 --nodes 5   the sweep (docs/testing/simulation.md)
//! sim --amnesia                    the wiped-voter scenario (docs/design/incarnations.md)
//! ```
//! Exit 0: every seed passed; 1: a seed violated an invariant (its replay
//! command is printed); 2: bad usage.

use clap::Parser;
use router_sim::{Params, replay_command, run_seed};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of the replicated core: seeded faults, checked invariants")]
struct Args {
    /// One seed to run (replay).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long, default_value = "0..200")]
    seeds: String,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Simulated seconds of faults per seed.
    #[arg(long, default_value_t = 8)]
    chaos_secs: u64,
    /// Print each seed's faults and figures.
    #[arg(long)]
    verbose: bool,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Checks the checker: every disk's fsync does nothing, so seeds should fail.
    #[arg(long)]
    mutate_lying_fsync: bool,
    /// Runs the amnesia scenario (a voter loses its disk) instead of seeds.
    #[arg(long, conflicts_with_all = ["seed", "mutate_lying_fsync"])]
    amnesia: bool,
    /// Checks the checker: with --amnesia, incarnations are not checked, so
    /// the scenario should lose an acknowledged entry.
    #[arg(long, requires = "amnesia")]
    mutate_no_incarnation_check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.amnesia {
        let began = Instant::now();
        let r = router_sim::run_amnesia(!args.mutate_no_incarnation_check);
        for v in &r.violations {
            println!("  violation: {v}");
        }
        println!(
            "sim: amnesia scenario {} ({} terms, {} ms simulated in {} ms)",
            if r.passed() { "ok" } else { "FAILED" },
            r.terms,
            r.virtual_ms,
            began.elapsed().as_millis()
        );
        return if r.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => {
            let Some((a, b)) = args.seeds.split_once("..") else {
                eprintln!("sim: --seeds takes A..B, got {:?}", args.seeds);
                return ExitCode::from(2);
            };
            match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) if a < b => (a..b).collect(),
                _ => {
                    eprintln!("sim: --seeds takes A..B with A < B, got {:?}", args.seeds);
                    return ExitCode::from(2);
                }
            }
        }
    };
    if !(args.nodes == 3 || args.nodes == 5) {
        eprintln!("sim: --nodes is 3 or 5");
        return ExitCode::from(2);
    }
    let params = Params {
        chaos: std::time::Duration::from_secs(args.chaos_secs),
        lying_fsync: args.mutate_lying_fsync,
        ..Params::quick(args.nodes)
    };
    let began = Instant::now();
    let mut failed = Vec::new();
    let (mut ops, mut faults, mut crashes, mut lost) = (0usize, 0usize, 0usize, 0usize);
    for &seed in &seeds {
        let t = Instant::now();
        let r = run_seed(seed, &params);
        ops += r.sends.iter().sum::<usize>() + r.claims.iter().sum::<usize>();
        faults += r.faults;
        crashes += r.crashes;
        lost += r.lost_writes;
        if args.verbose || !r.passed() {
            println!(
                "seed {seed}: {} | sends ok/failed/unknown {:?} claims {:?} received {} | faults {} (crashes {}, unsynced writes lost {}) | terms {} | messages {} dropped {} | {} ms simulated in {} ms | trace {:016x}",
                if r.passed() { "ok" } else { "FAILED" },
                r.sends,
                r.claims,
                r.received,
                r.faults,
                r.crashes,
                r.lost_writes,
                r.terms,
                r.net_sent,
                r.net_dropped,
                r.virtual_ms,
                t.elapsed().as_millis(),
                r.trace_hash
            );
        }
        if !r.passed() {
            for v in &r.violations {
                println!("  violation: {v}");
            }
            println!("  replay: {}", replay_command(seed, args.nodes));
            failed.push(seed);
            if args.fail_fast {
                break;
            }
        }
    }
    println!(
        "sim: {} seeds on {} nodes in {:.1} s: {} failed; {ops} client operations, {faults} faults ({crashes} crashes losing {lost} unsynced writes)",
        seeds.len(),
        args.nodes,
        began.elapsed().as_secs_f64(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("sim: failing seeds: {failed:?}");
        ExitCode::from(1)
    }
}
