//! `docker-cluster-test`: a three-node routerd cluster in Docker containers
//! loses its leader to SIGKILL while a provider sends; checks that every
//! acknowledged message is delivered exactly once to the application and that
//! the killed node, started again, rejoins as a caught-up voter.
//!
//! ```text
//! docker version answers?  no -> "SKIPPED: ..." and exit 0 (the only skip)
//! routerd init-dev (host)  -> configs rewritten for containers (router_chaos::layout)
//! network + 3 volumes + 3 containers (-p 127.0.0.1:<port>:7411 / :7412)
//! wait: one leader, voters [1,2,3], every container's /readyz (routerd probe via docker exec)
//! beta registers a user + device and subscribes; alpha sends --messages envelopes
//! after --kill-after acks: docker kill the leader; a new leader among the other two
//! after --restart-after acks: docker start it; wait until it is a voter and caught up
//! report; exit 0 when every check passed, 1 when one failed, 2 on an error
//! ```
//!
//! Everything it created is removed on every exit path (also Ctrl-C/SIGTERM).
//! Usage: `docker-cluster-test --image interop-router/routerd:test --routerd target/debug/routerd`
//! (normally through `bash deploy/docker-test.sh`).

use anyhow::{Context, Result, bail};
use clap::Parser;
use router_chaos::cluster::ClusterView;
use router_chaos::docker::{self, Docker};
use router_chaos::layout::{self, Layout};
use router_chaos::report::{Rejoin, Report};
use router_chaos::traffic::{self, Expectation, Recipient};
use router_sdk::{ClientConfig, RouterClient};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Three routerd containers, the leader killed mid-stream, delivery and rejoin checked")]
struct Args {
    /// routerd image (built by deploy/build-image.sh; nothing is pulled).
    #[arg(long, env = "ROUTERD_IMAGE", default_value = "interop-router/routerd:dev")]
    image: String,
    /// Local routerd binary, used on the host for `routerd init-dev` only.
    #[arg(long, env = "ROUTERD_BIN", default_value = "target/debug/routerd")]
    routerd: PathBuf,
    /// Names and labels everything the run creates (default: rchaos-<pid>-<time>).
    #[arg(long)]
    prefix: Option<String>,
    /// Envelopes the sending provider sends, one at a time.
    #[arg(long, default_value_t = 600)]
    messages: usize,
    /// Pause between two sends.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// Kill the leader's container once this many sends were acknowledged.
    #[arg(long, default_value_t = 150)]
    kill_after: usize,
    /// Start it again once this many sends were acknowledged.
    #[arg(long, default_value_t = 350)]
    restart_after: usize,
    /// Upper bound for the whole run.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Certificates, configs and container logs go here (default: a new temp dir, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work dir (it holds the dev CA's private keys and the container logs).
    #[arg(long)]
    keep_dir: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// RUST_LOG inside the containers.
    #[arg(long, default_value = "info,openraft=error")]
    rust_log: String,
}

fn say(msg: impl AsRef<str>) {
    eprintln!("docker-cluster-test: {}", msg.as_ref());
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            say(format!("error: tokio runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    rt.block_on(async_main(args))
}

async fn async_main(args: Args) -> ExitCode {
    if let Err(e) = validate(&args) {
        say(format!("error: {e:#}"));
        return ExitCode::from(2);
    }
    let version = match docker::engine_version().await {
        Ok(v) => v,
        Err(why) => {
            let banner = "=".repeat(78);
            for line in [
                banner.as_str(),
                &format!("SKIPPED: no Docker Engine answers `docker version` ({why})."),
                "SKIPPED: the Docker cluster test (routerd containers, leader kill, rejoin) did NOT run.",
                banner.as_str(),
            ] {
                println!("{line}");
                eprintln!("{line}");
            }
            return ExitCode::SUCCESS;
        }
    };
    say(format!("Docker Engine {version}"));
    if !args.routerd.is_file() {
        say(format!(
            "error: no routerd binary at {} (--routerd / ROUTERD_BIN; `cargo build -p router-node`)",
            args.routerd.display()
        ));
        return ExitCode::from(2);
    }
    match docker::call(&["image", "inspect", "--format", "{{.Id}}", &args.image], docker::CALL_TIMEOUT).await {
        Ok(o) if o.ok => say(format!("image {} ({})", args.image, o.stdout.trim())),
        _ => {
            say(format!(
                "error: image {} not found: build it with `bash deploy/build-image.sh <routerd binary>` (IMAGE=...)",
                args.image
            ));
            return ExitCode::from(2);
        }
    }

    let prefix = args.prefix.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("rchaos-{}-{:x}", std::process::id(), t.as_millis() & 0xff_ffff)
    });
    let docker = match Docker::new(&prefix) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            say(format!("error: {e:#}"));
            return ExitCode::from(2);
        }
    };
    let (work_dir, remove_dir) = match &args.work_dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(&prefix), !args.keep_dir),
    };
    say(format!("run {prefix}: work dir {}", work_dir.display()));

    let budget = Duration::from_secs(args.timeout_secs);
    let outcome = tokio::select! {
        r = tokio::time::timeout(budget, run(&args, &docker, &work_dir)) => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("the run exceeded --timeout-secs {}", args.timeout_secs)),
        },
        sig = signalled() => Err(anyhow::anyhow!("interrupted by {sig}")),
    };

    let passed = matches!(&outcome, Ok(r) if r.passed());
    dump_logs(&docker, &work_dir, !passed).await;
    let code = match outcome {
        Ok(report) => {
            report.print();
            let json = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
            if let Some(path) = &args.report_json
                && let Err(e) = std::fs::write(path, json)
            {
                say(format!("could not write {}: {e}", path.display()));
            }
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            say(format!("error: {e:#}"));
            ExitCode::from(2)
        }
    };

    say(format!("cleaning up: containers, network and volumes labelled router-chaos.run={prefix}"));
    let problems = tokio::task::spawn_blocking({
        let docker = docker.clone();
        move || docker.cleanup()
    })
    .await
    .unwrap_or_else(|e| vec![format!("cleanup task: {e}")]);
    for p in &problems {
        say(format!("cleanup problem: {p}"));
    }
    if remove_dir {
        let _ = std::fs::remove_dir_all(&work_dir);
    } else {
        say(format!("kept {}", work_dir.display()));
    }
    if code == ExitCode::SUCCESS && !problems.is_empty() {
        return ExitCode::from(2);
    }
    code
}

fn validate(args: &Args) -> Result<()> {
    if !(1 <= args.kill_after && args.kill_after < args.restart_after && args.restart_after < args.messages) {
        bail!("need 1 <= --kill-after < --restart-after < --messages");
    }
    if args.messages > 100_000 {
        bail!("--messages is capped at 100000");
    }
    Ok(())
}

async fn signalled() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Saves every container's log in the work dir; prints the tail of each when `print`.
async fn dump_logs(docker: &Docker, work_dir: &std::path::Path, print: bool) {
    for id in 1..=3u64 {
        let name = format!("{}-router-{id}", docker.prefix());
        let Ok(logs) = docker.logs(&name).await else { continue };
        let state = docker
            .inspect(&name, "{{.State.Status}} exit={{.State.ExitCode}} restarts={{.RestartCount}}")
            .await
            .unwrap_or_default();
        let _ = std::fs::write(work_dir.join(format!("{name}.log")), &logs);
        if !print {
            continue;
        }
        let lines: Vec<&str> = logs.lines().collect();
        eprintln!("---- {name} ({state}): last {} of {} log lines", lines.len().min(40), lines.len());
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {l}");
        }
    }
}

/// Waits until `count` sends were acknowledged (or the sender stopped).
async fn wait_acked(progress: &mut watch::Receiver<usize>, count: usize, timeout: Duration) -> Result<usize> {
    let r = tokio::time::timeout(timeout, progress.wait_for(|n| *n >= count)).await.map(|r| r.map(|n| *n));
    match r {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(_)) => Ok(*progress.borrow()), // the sender finished
        Err(_) => bail!("only {} of {count} sends acknowledged within {timeout:?}", *progress.borrow()),
    }
}

async fn run(args: &Args, docker: &Docker, work_dir: &std::path::Path) -> Result<Report> {
    let ids = [1u64, 2, 3];
    std::fs::create_dir_all(work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    let ports = layout::free_ports(2 * ids.len())?;
    let layout =
        layout::prepare(&args.routerd, work_dir, docker.prefix(), ids.len() as u64, &["alpha", "beta"], &ports).await?;
    say(format!("configs and certificates: {}", layout.dir.display()));

    docker.create_network(&layout.network).await?;
    for n in &layout.nodes {
        docker.create_volume(&n.volume).await?;
    }
    for n in &layout.nodes {
        docker.run_detached(&n.container, &layout.run_args(n.id, &args.image, &args.rust_log)).await?;
        say(format!(
            "started {} (provider 127.0.0.1:{}, peer 127.0.0.1:{}, data volume {})",
            n.container, n.provider_port, n.peer_port, n.volume
        ));
    }

    let view = ClusterView::new(&layout)?;
    let formed = Instant::now();
    let leader = match view.wait_for_leader(&ids, &ids, Duration::from_secs(120)).await {
        Ok(l) => l,
        Err(e) => bail!("the cluster did not form: {e:#}{}", container_states(docker, &layout).await),
    };
    say(format!("cluster formed in {}ms: voters [1, 2, 3], leader node {leader}", formed.elapsed().as_millis()));
    wait_ready(docker, &layout, &ids, Duration::from_secs(60)).await?;
    say("every node's /readyz answers 200 (routerd probe inside the container)");

    let ca = layout.ca_pem()?;
    let client = |provider: &str, endpoints: Vec<String>| -> Result<RouterClient> {
        let (cert, key) = layout.client_identity(&format!("provider-{provider}"))?;
        Ok(RouterClient::connect(ClientConfig::new(endpoints, ca.clone(), cert, key))?)
    };
    let all_endpoints: Vec<String> = layout.nodes.iter().map(|n| n.provider_endpoint()).collect();
    let alpha = client("alpha", all_endpoints.clone())?;
    let beta = client("beta", all_endpoints.clone())?;
    let to = Recipient { user_id: format!("handle:{}-bob", docker.prefix()), device_id: 1, registration_id: 4242 };
    traffic::register(&beta, &to).await.context("register the recipient through provider beta")?;
    say(format!("beta registered {} device {}", to.user_id, to.device_id));

    let run_deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let expect = Expectation::default();
    let receiver =
        tokio::spawn(traffic::receive(beta.clone(), 256, expect.clone(), Duration::from_millis(1500), run_deadline));
    let (progress_tx, mut progress) = watch::channel(0usize);
    let sender = tokio::spawn(traffic::send_stream(
        alpha,
        to.clone(),
        format!("{}-m", docker.prefix()),
        args.messages,
        Duration::from_millis(args.interval_ms),
        progress_tx,
    ));
    say(format!("alpha sends {} messages to {}, beta receives and acks", args.messages, to.user_id));

    wait_acked(&mut progress, args.kill_after, Duration::from_secs(120)).await?;
    let leader_before = view.current_leader().await.context("find the leader before the kill")?;
    let victim = layout.node(leader_before).container.clone();
    docker.kill(&victim).await?;
    let killed_at = Instant::now();
    say(format!("docker kill {victim} (node {leader_before}, the leader) after {} acks", *progress.borrow()));

    let survivors: Vec<u64> = ids.iter().copied().filter(|i| *i != leader_before).collect();
    let mut rejoin = Rejoin { killed: leader_before, ..Rejoin::default() };
    match view.wait_for_leader(&survivors, &ids, Duration::from_secs(60)).await {
        Ok(l) => {
            rejoin.new_leader = Some(l);
            say(format!("node {l} leads after {}ms", killed_at.elapsed().as_millis()));
        }
        Err(e) => say(format!("no new leader: {e:#}")),
    }

    let n = wait_acked(&mut progress, args.restart_after, Duration::from_secs(180)).await?;
    docker.start(&victim).await?;
    let started_at = Instant::now();
    say(format!("docker start {victim} after {n} acks (down for {}ms)", killed_at.elapsed().as_millis()));

    match view.wait_caught_up(leader_before, Duration::from_secs(120)).await {
        Ok(c) => {
            rejoin.caught_up_after = Some(started_at.elapsed());
            say(format!(
                "node {leader_before} rejoined as {} in {}ms: applied {} >= leader node {}'s {}, voters {:?}",
                c.role,
                started_at.elapsed().as_millis(),
                c.applied,
                c.leader,
                c.leader_applied,
                c.voters
            ));
            rejoin.role = c.role;
            rejoin.applied = c.applied;
            rejoin.leader_applied = c.leader_applied;
            rejoin.voters = c.voters;
        }
        Err(e) => rejoin.problem = Some(format!("{e:#}")),
    }

    let send_budget = Duration::from_secs(args.timeout_secs);
    let send_log =
        tokio::time::timeout(send_budget, sender).await.context("the sender did not finish")?.context("sender task")?;
    say(format!(
        "alpha finished: {} sent, {} acked, {} failed",
        send_log.sent,
        send_log.acked.len(),
        send_log.failed.len()
    ));

    // The restarted node answers provider calls on its own endpoint.
    let mut cfg_one =
        ClientConfig::new(vec![layout.node(leader_before).provider_endpoint()], ca.clone(), Vec::new(), Vec::new());
    let (cert, key) = layout.client_identity("provider-beta")?;
    (cfg_one.cert_pem, cfg_one.key_pem, cfg_one.call_deadline) = (cert, key, Duration::from_secs(15));
    match RouterClient::connect(cfg_one)?.resolve(&to.user_id).await {
        Ok(_) => rejoin.serves_providers = true,
        Err(e) => say(format!("node {leader_before} does not serve Resolve: {e}")),
    }

    expect.set(send_log.acked.iter().map(|(id, _)| id.clone()).collect());
    let recv_log = tokio::time::timeout(Duration::from_secs(args.timeout_secs), receiver)
        .await
        .context("the receiver did not finish")?
        .context("receiver task")?;
    say(format!(
        "beta finished: {} entries handed out, {} reconnects, complete: {}",
        recv_log.handed_out, recv_log.reconnects, recv_log.complete
    ));
    for e in recv_log.errors.iter().take(5) {
        say(format!("receiver error (retried): {e}"));
    }
    Ok(Report::build(&send_log, &recv_log, Some(killed_at), leader_before, rejoin))
}

/// Every container's readiness probe (the image's health check) answers 200.
async fn wait_ready(docker: &Docker, layout: &Layout, ids: &[u64], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for &id in ids {
        let name = &layout.node(id).container;
        let url = format!("http://127.0.0.1:{}/readyz", layout::ADMIN_PORT);
        loop {
            let out = docker
                .call(&["exec", name, "/usr/local/bin/routerd", "probe", "--url", &url], Duration::from_secs(10))
                .await?;
            if out.ok {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{name} not ready within {timeout:?}: {}", out.stderr.trim());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

/// "; <name>: running exit=0 ..." for every container, for error messages.
async fn container_states(docker: &Docker, layout: &Layout) -> String {
    let mut s = String::new();
    for n in &layout.nodes {
        let state = docker
            .inspect(&n.container, "{{.State.Status}} exit={{.State.ExitCode}}")
            .await
            .unwrap_or_else(|e| format!("{e:#}"));
        s.push_str(&format!("; {}: {state}", n.container));
    }
    s
}
