//! `router-sim`: deterministic simulation of the router's replicated core.
//!
//! # What this crate owns
//! One seeded run ([`run_seed`]): a 3- or 5-node cluster of real openraft
//! `Raft`s over router-raft's stores and router-core's state machine, on a
//! simulated network ([`net`]) and disks that lose unsynced writes on a crash
//! ([`disk`]), all on tokio's paused clock in one thread. The seed draws the
//! fault schedule (crashes with lost writes, restarts, partitions, one-way
//! partitions, slow links, message loss, a disk lost: the node comes back
//! as a new incarnation and is readmitted at the heal, [`rejoin`]), the workload's pacing and every
//! network delay; the same seed replays the same run (the trace hash says so).
//!
//! # What it must not depend on
//! No routerd, no tonic, no sockets, no wall clock: the node's gRPC edge is
//! out of scope here (the chaos suite covers it with real processes).
//!
//! ```text
//!  seed ─> StdRng ─┬─> fault schedule ──> Cluster (N x Raft + Disk) <── Net (cut / one-way / loss / slow)
//!                  └─> clients: senders, claimers, receiver ──> History ──> checks ──> Report
//! ```
//!
//! [`amnesia`] is one scripted run: a wiped voter must not help elect a leader
//! without an acknowledged entry.
//!
//! Invariants checked per seed: no acked envelope lost, no envelope stored
//! twice for one message id, per-(sender device, recipient) order kept, no
//! one-time prekey handed out twice (nor still in stock after it was), at most
//! one leader per term, progress after the faults heal, and every replica
//! equal at the end.

#![allow(clippy::result_large_err)]

pub mod amnesia;
pub mod cluster;
pub mod disk;
pub mod net;
pub mod rejoin;
pub mod workload;

use cluster::Cluster;
use net::Net;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router_core::{Command, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use workload::{Attempt, History, Kind, Res, World};

/// The size of one simulated run.
#[derive(Clone, Debug)]
pub struct Params {
    pub nodes: u64,
    /// Simulated time with faults being injected.
    pub chaos: Duration,
    pub senders: u32,
    pub messages_per_sender: u64,
    pub prekeys: u32,
    /// Mean gap between two faults.
    pub fault_every: Duration,
    /// Mutation for the checker's own test: every disk's flush does nothing.
    pub lying_fsync: bool,
}

impl Params {
    /// The CI size: a few hundred milliseconds of real time per seed.
    pub fn quick(nodes: u64) -> Params {
        Params {
            nodes,
            chaos: Duration::from_secs(8),
            senders: 2,
            messages_per_sender: 10_000,
            prekeys: 400,
            fault_every: Duration::from_millis(700),
            lying_fsync: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub nodes: u64,
    pub faults: usize,
    pub crashes: usize,
    pub lost_writes: usize,
    pub sends: [usize; 3],
    pub claims: [usize; 3],
    pub received: usize,
    pub terms: usize,
    pub net_sent: u64,
    pub net_dropped: u64,
    pub violations: Vec<String>,
    /// A digest of everything observable in the run (ops, answers, faults,
    /// deliveries, final state): equal for two runs of one seed.
    pub trace_hash: u64,
    pub virtual_ms: u64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

thread_local! {
    /// Panics raised on this thread while a seed runs (inside openraft's or our
    /// tasks): each one is a violation (routerd aborts on any panic).
    static PANICS: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Records panics of a running seed instead of printing them; any other panic
/// (a failing test's assert) goes to the previous hook as usual.
fn install_panic_recorder() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = PANICS.with(|p| match p.borrow_mut().as_mut() {
                Some(list) => {
                    let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                    let msg = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    list.push(format!("{msg}{at}"));
                    true
                }
                None => false,
            });
            if !recorded {
                previous(info);
            }
        }));
    });
}

/// Runs one seed on a fresh single-threaded runtime with a paused clock.
pub fn run_seed(seed: u64, params: &Params) -> Report {
    on_sim_runtime(|| simulate(seed, params.clone()), Report { seed, nodes: params.nodes, ..Default::default() })
}

/// Runs a simulated scenario on a fresh single-threaded runtime with a
/// paused clock; every panic on it is a violation (`aborted` is the report
/// when the scenario itself panicked).
fn on_sim_runtime<F: std::future::Future<Output = Report>>(scenario: impl FnOnce() -> F, aborted: Report) -> Report {
    install_panic_recorder();
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("tokio runtime");
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(scenario())));
    drop(rt);
    let panics = PANICS.with(|p| p.borrow_mut().take()).unwrap_or_default();
    let mut report = run.unwrap_or(aborted);
    for p in panics {
        report.violations.push(format!("panic: {p}"));
    }
    report
}

/// The amnesia scenario ([`amnesia`]) on the simulation's runtime; with
/// `check_incarnations` off it must report the lost entry.
pub fn run_amnesia(check_incarnations: bool) -> Report {
    on_sim_runtime(|| amnesia::scenario(check_incarnations), Report { nodes: 3, ..Default::default() })
}

/// The one command that replays `seed`.
pub fn replay_command(seed: u64, nodes: u64) -> String {
    format!("cargo run -p router-sim --bin sim -- --seed {seed} --nodes {nodes} --verbose")
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Crash,
    Restart,
    Isolate,
    OneWay,
    Lossy,
    Slow,
    Heal,
    /// A node loses its disk and starts empty, as a new incarnation; it is
    /// readmitted ([`rejoin`]) when the faults heal.
    Wipe,
}

const FAULTS: [Fault; 8] =
    [Fault::Crash, Fault::Restart, Fault::Isolate, Fault::OneWay, Fault::Lossy, Fault::Slow, Fault::Heal, Fault::Wipe];

async fn simulate(seed: u64, p: Params) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let net = Net::new(StdRng::seed_from_u64(rng.r#gen()));
    let mut cluster = Cluster::start(p.nodes, net.clone(), &mut rng, p.lying_fsync).await;
    let world = World {
        net: net.clone(),
        history: Arc::new(Mutex::new(History::default())),
        t0: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let mut report = Report { seed, nodes: p.nodes, ..Default::default() };

    // Setup on a healthy network: the elector runs alongside.
    let setup = {
        let w = world.clone();
        let mut r = StdRng::seed_from_u64(rng.r#gen());
        let cmds = workload::setup_commands(&cluster.incarnations(), p.senders, p.prekeys);
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            for cmd in cmds {
                w.must(&mut r, cmd, deadline).await?;
            }
            Ok::<(), String>(())
        })
    };
    while !setup.is_finished() {
        cluster.tick(&mut rng).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Err(e) = setup.await.expect("setup task") {
        report.violations.push(format!("setup failed: {e}"));
        cluster.shutdown().await;
        return report;
    }

    // Workload and faults.
    let recv_stop = Arc::new(AtomicBool::new(false));
    let receiver =
        tokio::spawn(workload::receiver(world.clone(), StdRng::seed_from_u64(rng.r#gen()), recv_stop.clone()));
    let mut clients = Vec::new();
    for d in 1..=p.senders {
        let r = StdRng::seed_from_u64(rng.r#gen());
        clients.push(tokio::spawn(workload::sender(world.clone(), r, d, p.messages_per_sender)));
    }
    let mut claimers = Vec::new();
    for requester in [workload::ALPHA, workload::BETA] {
        let r = StdRng::seed_from_u64(rng.r#gen());
        claimers.push(tokio::spawn(workload::claimer(world.clone(), r, requester, p.prekeys / 2 - 20)));
    }
    let chaos_end = Instant::now() + p.chaos;
    let mut next_fault = Instant::now() + jitter(&mut rng, p.fault_every);
    while Instant::now() < chaos_end {
        cluster.tick(&mut rng).await;
        if Instant::now() >= next_fault {
            inject(&mut cluster, &mut rng, &world, &mut report).await;
            next_fault = Instant::now() + jitter(&mut rng, p.fault_every);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Heal: network whole, every node up, a node that lost its disk readmitted.
    heal_network(&net);
    for id in cluster.down_ids() {
        cluster.boot(id).await;
        fault(&world, format!("node {id} restarted (heal)"));
    }
    for id in std::mem::take(&mut cluster.wiped) {
        match rejoin::readmit(&mut cluster, &mut rng, &world, id).await {
            Ok(()) => fault(&world, format!("node {id} readmitted as a new incarnation")),
            Err(e) => report.violations.push(format!("node {id} (wiped) was not readmitted: {e}")),
        }
    }
    world.stop.store(true, Ordering::SeqCst);
    for c in clients {
        drive(&mut cluster, &mut rng, c).await;
    }
    for c in claimers {
        drive(&mut cluster, &mut rng, c).await;
    }

    // Progress: a fresh send goes through within 20 s of simulated time.
    let probe = {
        let w = world.clone();
        let mut r = StdRng::seed_from_u64(rng.r#gen());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let env = Command::Send(workload::probe_envelope());
                if let Attempt::Done(Outcome::Sent { .. }) = w.submit(&mut r, env).await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
    };
    if !drive(&mut cluster, &mut rng, probe).await {
        report.violations.push("no progress: a send after the heal did not commit within 20 s".into());
    }

    // Drain: the receiver reads until every ok send arrived (or 20 s pass).
    let drain_deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < drain_deadline && !all_ok_delivered(&world.history()) {
        cluster.tick(&mut rng).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    recv_stop.store(true, Ordering::SeqCst);
    drive(&mut cluster, &mut rng, receiver).await;

    // Replicas converge: every node applies up to the leader and holds the same state.
    let converge_deadline = Instant::now() + Duration::from_secs(20);
    let mut converged = false;
    while Instant::now() < converge_deadline {
        cluster.tick(&mut rng).await;
        let applied: BTreeSet<_> = cluster.up_ids().iter().map(|&id| cluster.applied(id)).collect();
        if applied.len() == 1 && cluster.agreed_leader().is_some() {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let states: Vec<_> = cluster.up_ids().iter().map(|&id| (id, cluster.state_of(id))).collect();
    if !converged {
        report.violations.push(format!(
            "replicas did not converge: applied {:?}",
            cluster.up_ids().iter().map(|&id| (id, cluster.applied(id))).collect::<Vec<_>>()
        ));
    } else if let Some((first_id, first)) = states.first() {
        for (id, s) in &states[1..] {
            if s != first {
                report.violations.push(format!("replica of node {id} differs from node {first_id}'s"));
            }
        }
    }

    report.violations.append(&mut cluster.violations);
    let history = std::mem::take(&mut *world.history());
    let final_state = states.first().and_then(|(_, s)| s.clone());
    check(&history, final_state.as_ref(), p.prekeys, &mut report);
    report.terms = cluster.leaders.len();
    {
        let n = net.lock();
        report.net_sent = n.sent;
        report.net_dropped = n.dropped;
    }
    report.virtual_ms = world.now_ms();
    report.trace_hash = trace_hash(&history, final_state.as_ref());
    cluster.shutdown().await;
    report
}

/// Keeps the elector running while `task` finishes; returns its result.
pub(crate) async fn drive<T: Send + 'static>(
    cluster: &mut Cluster,
    rng: &mut StdRng,
    task: tokio::task::JoinHandle<T>,
) -> T {
    while !task.is_finished() {
        cluster.tick(rng).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.await.expect("client task panicked")
}

fn jitter(rng: &mut StdRng, mean: Duration) -> Duration {
    let ms = mean.as_millis() as u64;
    Duration::from_millis(rng.gen_range(ms / 2..=ms * 3 / 2))
}

pub(crate) fn fault(world: &World, what: String) {
    let at = world.now_ms();
    world.history().faults.push((at, what));
}

pub(crate) fn heal_network(net: &Net) {
    let mut n = net.lock();
    n.cut.clear();
    n.loss = 0.0;
    n.slow_ms.clear();
}

async fn inject(cluster: &mut Cluster, rng: &mut StdRng, world: &World, report: &mut Report) {
    let ids: Vec<u64> = (1..=cluster.nodes.len() as u64).collect();
    let f = FAULTS[rng.gen_range(0..FAULTS.len())];
    report.faults += 1;
    match f {
        Fault::Crash => {
            let up = cluster.up_ids();
            // Keep a majority up most of the time, but sometimes take it down too.
            if up.len() as u64 * 2 <= cluster.nodes.len() as u64 + 1 && rng.gen_bool(0.7) {
                return restart_one(cluster, rng, world).await;
            }
            let victim = up[rng.gen_range(0..up.len())];
            let pending = cluster.nodes.iter().find(|n| n.id == victim).map_or(0, |n| n.disk.pending_writes());
            let keep = if pending > 0 && rng.gen_bool(0.5) { rng.gen_range(0..pending) } else { 0 };
            let lost = cluster.crash(victim, keep).await;
            report.crashes += 1;
            report.lost_writes += lost;
            fault(world, format!("node {victim} crashed, {lost} unsynced writes lost"));
        }
        Fault::Restart => restart_one(cluster, rng, world).await,
        Fault::Isolate => {
            let victim = ids[rng.gen_range(0..ids.len())];
            let mut n = cluster.net.lock();
            for &other in &ids {
                if other != victim {
                    n.cut.insert((victim, other));
                    n.cut.insert((other, victim));
                }
            }
            drop(n);
            fault(world, format!("node {victim} partitioned away"));
        }
        Fault::OneWay => {
            let a = ids[rng.gen_range(0..ids.len())];
            let b = ids[rng.gen_range(0..ids.len())];
            if a != b {
                cluster.net.lock().cut.insert((a, b));
                fault(world, format!("link {a} -> {b} cut (one way)"));
            }
        }
        Fault::Lossy => {
            let loss = rng.gen_range(0.05..0.3);
            cluster.net.lock().loss = loss;
            fault(world, format!("{:.0}% of messages lost", loss * 100.0));
        }
        Fault::Slow => {
            let victim = ids[rng.gen_range(0..ids.len())];
            let ms = rng.gen_range(50..400);
            cluster.net.lock().slow_ms.insert(victim, ms);
            fault(world, format!("node {victim}'s link slowed by {ms} ms"));
        }
        Fault::Heal => {
            heal_network(&cluster.net);
            fault(world, "network healed".into());
        }
        Fault::Wipe => {
            let up = cluster.up_ids();
            // One node awaiting readmission at a time.
            if !cluster.wiped.is_empty() || up.is_empty() {
                return;
            }
            let victim = up[rng.gen_range(0..up.len())];
            cluster.wipe(victim).await;
            report.crashes += 1;
            fault(world, format!("node {victim} lost its disk and started empty"));
        }
    }
}

async fn restart_one(cluster: &mut Cluster, rng: &mut StdRng, world: &World) {
    let down = cluster.down_ids();
    if down.is_empty() {
        return;
    }
    let id = down[rng.gen_range(0..down.len())];
    cluster.boot(id).await;
    fault(world, format!("node {id} restarted"));
}

fn all_ok_delivered(h: &History) -> bool {
    let got: BTreeSet<&str> = h.received.iter().map(|r| r.message_id.as_str()).collect();
    h.ops.iter().all(|o| match o.kind {
        Kind::Send { device, index } if o.res == Res::Ok => got.contains(workload::message_id(device, index).as_str()),
        _ => true,
    })
}

fn check(h: &History, final_state: Option<&router_core::State>, prekeys: u32, report: &mut Report) {
    let v = &mut report.violations;
    for u in &h.unexpected {
        v.push(format!("unexpected answer: {u}"));
    }
    // Delivery: stored once per message id, nothing acked lost, order per sender device.
    let mut by_id: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &h.received {
        by_id.entry(r.message_id.as_str()).or_default().push(r.seq);
    }
    for (id, seqs) in &by_id {
        if seqs.len() > 1 {
            v.push(format!("message {id} stored {} times (seqs {seqs:?})", seqs.len()));
        }
    }
    for o in &h.ops {
        let idx = match o.kind {
            Kind::Send { device, index } => {
                match o.res {
                    Res::Ok => report.sends[0] += 1,
                    Res::Failed => report.sends[1] += 1,
                    Res::Unknown => report.sends[2] += 1,
                }
                (device, index)
            }
            Kind::Claim { .. } => {
                match o.res {
                    Res::Ok => report.claims[0] += 1,
                    Res::Failed => report.claims[1] += 1,
                    Res::Unknown => report.claims[2] += 1,
                }
                continue;
            }
        };
        let id = workload::message_id(idx.0, idx.1);
        if o.res == Res::Ok && !by_id.contains_key(id.as_str()) {
            v.push(format!("acked message {id} (answered at {} ms, {}) never delivered", o.end_ms, o.detail));
        }
    }
    report.received = h.received.len();
    let mut last: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut received = h.received.clone();
    received.sort_by_key(|r| r.seq);
    for r in &received {
        let Some((device, index)) = parse_message_id(&r.message_id) else { continue };
        if let Some(&(prev, prev_seq)) = last.get(&device)
            && index <= prev
        {
            v.push(format!(
                "order: device {device} message {index} (seq {}) after message {prev} (seq {prev_seq})",
                r.seq
            ));
        }
        last.insert(device, (index, r.seq));
    }
    // Prekeys: no one-time key handed out twice, none handed out and still in stock.
    let mut handed: BTreeMap<u32, usize> = BTreeMap::new();
    for o in &h.ops {
        if let Kind::Claim { one_time: Some(k), .. } = o.kind
            && o.res == Res::Ok
        {
            *handed.entry(k).or_default() += 1;
        }
    }
    for (k, n) in &handed {
        if *n > 1 {
            v.push(format!("one-time prekey {k} handed out {n} times"));
        }
    }
    if let Some(state) = final_state {
        let stock: BTreeSet<u32> = state
            .user(&router_core::UserId::new(workload::KEY_OWNER))
            .and_then(|u| u.devices.get(&1))
            .and_then(|d| d.keys.as_ref())
            .map(|k| k.one_time.iter().map(|p| p.key_id).collect())
            .unwrap_or_default();
        for k in handed.keys() {
            if stock.contains(k) {
                v.push(format!("one-time prekey {k} was handed out but is back in stock"));
            }
        }
        if stock.len() + handed.len() > prekeys as usize {
            v.push(format!("{} keys in stock + {} handed out > {prekeys} uploaded", stock.len(), handed.len()));
        }
    }
}

fn parse_message_id(id: &str) -> Option<(u32, u64)> {
    let mut parts = id.strip_prefix("m-")?.split('-');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// FNV-1a over a canonical rendering of the run.
fn trace_hash(h: &History, final_state: Option<&router_core::State>) -> u64 {
    let mut text = String::new();
    for o in &h.ops {
        text.push_str(&format!("{:?}|{:?}|{}|{}|{}\n", o.kind, o.res, o.start_ms, o.end_ms, o.detail));
    }
    for r in &h.received {
        text.push_str(&format!("r{}|{}|{}\n", r.seq, r.message_id, r.at_ms));
    }
    for (at, f) in &h.faults {
        text.push_str(&format!("f{at}|{f}\n"));
    }
    if let Some(s) = final_state {
        text.push_str(&format!("{s:?}"));
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
