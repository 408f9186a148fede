//! routerd as three release-build processes from `routerd init-dev`, and the
//! router side of every workload, driven through `router-sdk`.

use crate::procs::{self, Group, Spec};
use crate::stats::{Event, MAX_EVENTS, Pace, now_us};
use anyhow::{Context, bail};
use rand::SeedableRng;
use router_prekeys::sign::KeyPair;
use router_proto::v1::admin_client::AdminClient;
use router_proto::v1::mailbox_entry::Kind;
use router_proto::v1::*;
use router_sdk::{ClientConfig, RouterClient};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;

pub const PROVIDERS: [&str; 5] = ["a", "b", "c", "d", "e"];

pub struct RouterCluster {
    dir: PathBuf,
    base_port: u16,
    pub procs: Group,
    admin: Vec<AdminClient<Channel>>,
    /// The SDK's `max_send_batch` and `max_send_batch_calls` for every client.
    pub send_batch: (usize, usize),
}

impl RouterCluster {
    /// `init-dev` for `nodes` nodes and providers a..e, `extra_toml` appended to
    /// every node's config, then one routerd process per node.
    pub async fn start(
        routerd: &Path,
        dir: &Path,
        base_port: u16,
        nodes: u64,
        extra_toml: &str,
    ) -> anyhow::Result<Self> {
        let ports: Vec<u16> = (1..=nodes).flat_map(|id| (1..=3).map(move |k| base_port + 10 * id as u16 + k)).collect();
        procs::ensure_free(&ports)?;
        let out = std::process::Command::new(routerd)
            .args(["init-dev", "--dir"])
            .arg(dir)
            .args([
                "--nodes",
                &nodes.to_string(),
                "--base-port",
                &base_port.to_string(),
                "--providers",
                &PROVIDERS.join(","),
            ])
            .output()
            .with_context(|| format!("run {} init-dev", routerd.display()))?;
        if !out.status.success() {
            bail!("routerd init-dev failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut specs = Vec::new();
        for id in 1..=nodes {
            let cfg = dir.join(format!("routerd-{id}.toml"));
            let mut text = std::fs::read_to_string(&cfg)?;
            text.push_str(extra_toml);
            std::fs::write(&cfg, text)?;
            specs.push(Spec {
                name: format!("routerd-{id}"),
                program: routerd.to_path_buf(),
                args: vec!["--config".into(), cfg.display().to_string()],
                envs: vec![("RUST_LOG".into(), "warn".into())],
                log: dir.join(format!("node-{id}.log")),
            });
        }
        let certs = dir.join("certs");
        let mut connector = router_sdk::admin::AdminConnector::from_files(
            &certs.join("ca.pem"),
            &certs.join("operator-admin.pem"),
            &certs.join("operator-admin.key"),
            "localhost",
        )?;
        connector.timeout = Duration::from_secs(2);
        connector.connect_timeout = Duration::from_millis(500);
        let mut admin = Vec::new();
        for id in 1..=nodes {
            admin.push(connector.client(&format!("127.0.0.1:{}", base_port + 10 * id as u16 + 2))?);
        }
        let procs = Group::start(specs)?;
        let send_batch = (router_sdk::client::DEFAULT_MAX_SEND_BATCH, router_sdk::client::DEFAULT_MAX_SEND_BATCH_CALLS);
        let c = RouterCluster { dir: dir.to_path_buf(), base_port, procs, admin, send_batch };
        c.wait_for_leader(Duration::from_secs(30)).await?;
        c.wait_for_providers(Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// Waits until every node lists providers a..e as active: a leader is
    /// elected before the onboarding `init-dev` configured has applied, and
    /// a call in between is refused `PROVIDER_NOT_ONBOARDED`.
    async fn wait_for_providers(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for a in &self.admin {
            loop {
                let listed =
                    a.clone().list_providers(ListProvidersRequest {}).await.map(|r| r.into_inner().provider_ids);
                if listed.as_ref().is_ok_and(|ids| PROVIDERS.iter().all(|p| ids.iter().any(|i| i == p))) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("providers {PROVIDERS:?} not active on every node within {timeout:?} ({listed:?})");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    pub fn nodes(&self) -> usize {
        self.procs.specs.len()
    }

    pub fn endpoints(&self) -> Vec<String> {
        (1..=self.nodes()).map(|id| format!("127.0.0.1:{}", self.base_port + 10 * id as u16 + 1)).collect()
    }

    /// A provider's client; `prefer` picks the node it talks to first.
    pub fn client(&self, provider: &str, prefer: usize, timeout: Option<Duration>) -> anyhow::Result<RouterClient> {
        let certs = self.dir.join("certs");
        let read = |f: String| std::fs::read(certs.join(&f)).with_context(|| format!("read {f}"));
        let mut cfg = ClientConfig::new(
            self.endpoints(),
            read("ca.pem".into())?,
            read(format!("provider-{provider}.pem"))?,
            read(format!("provider-{provider}.key"))?,
        );
        (cfg.max_send_batch, cfg.max_send_batch_calls) = self.send_batch;
        if let Some(t) = timeout {
            cfg.attempt_timeout = t;
            cfg.call_deadline = t;
        }
        let c = RouterClient::connect(cfg)?;
        c.prefer(prefer);
        Ok(c)
    }

    /// Fails with a log tail if a node died on its own.
    pub fn procs_alive(&mut self) -> anyhow::Result<()> {
        self.procs.check_alive()
    }

    /// Node `i`'s (0-based) status, `None` while it does not answer.
    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        let mut admin = self.admin[i].clone();
        admin.status(StatusRequest {}).await.ok().map(|r| r.into_inner())
    }

    /// Asks node `i` (0-based) to build a snapshot; returns once it started.
    pub async fn trigger_snapshot(&self, i: usize) -> anyhow::Result<()> {
        let mut admin = self.admin[i].clone();
        admin.trigger_snapshot(TriggerSnapshotRequest {}).await.context("trigger snapshot")?;
        Ok(())
    }

    /// Has node `i` snapshot everything it applied so far: seconds until its
    /// snapshot index reaches that, or `None` after `limit`. The trigger is
    /// repeated every second: openraft ignores one while a build (the
    /// automatic one, say) is still running.
    pub async fn snapshot_applied(&self, i: usize, limit: Duration) -> anyhow::Result<Option<f64>> {
        let applied = self.status(i).await.map_or(0, |s| s.last_applied_index);
        let t = Instant::now();
        let mut triggered: Option<Instant> = None;
        while t.elapsed() < limit {
            if triggered.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                // A busy node may not answer within the admin timeout: try again.
                if let Err(e) = self.trigger_snapshot(i).await {
                    eprintln!("  trigger snapshot on node {}: {e:#}", i + 1);
                }
                triggered = Some(Instant::now());
            }
            if self.status(i).await.is_some_and(|s| s.snapshot_index >= applied) {
                return Ok(Some(t.elapsed().as_secs_f64()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    }

    /// A follower (0-based) of the leader every node agrees on.
    pub async fn a_follower(&self) -> anyhow::Result<usize> {
        let leader = self.wait_for_leader(Duration::from_secs(30)).await?;
        Ok((1..=self.nodes() as u64).find(|&id| id != leader).context("a follower")? as usize - 1)
    }

    /// Node `i` killed with SIGKILL and restarted on its data (after a
    /// `sync`, so the figure is the restart's own work, not the disk still
    /// writing back): seconds until it reports `health: ok`, `None` after `limit`.
    pub async fn restart_to_ok(&mut self, i: usize, limit: Duration) -> anyhow::Result<Option<f64>> {
        let _ = std::process::Command::new("sync").status();
        self.procs.kill9(i)?;
        let t = Instant::now();
        self.procs.restart(i)?;
        self.until(i, t, limit, |s| s.health == "ok").await
    }

    /// Node `i` killed, its data directory wiped, and restarted: the leader
    /// catches it up (by snapshot once its log is purged). Seconds until it
    /// serves with `applied` applied, `None` after `limit`.
    pub async fn wipe_to_caught_up(&mut self, i: usize, applied: u64, limit: Duration) -> anyhow::Result<Option<f64>> {
        // Until the leader purged some log, the wiped node would catch up
        // from the log instead: wait for that first (openraft purges after
        // the build, once no replication still reads those entries).
        let purged = Instant::now();
        loop {
            let leader = self.wait_for_leader(Duration::from_secs(30)).await? as usize - 1;
            if self.status(leader).await.is_some_and(|s| s.purged_index > 0) {
                break;
            }
            if purged.elapsed() > Duration::from_secs(60) {
                eprintln!("  the leader purged no log within 60 s: the wiped node may catch up from the log");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.procs.kill9(i)?;
        let data = self.data_dir(i);
        std::fs::remove_dir_all(&data)?;
        std::fs::create_dir_all(&data)?;
        let t = Instant::now();
        self.procs.restart(i)?;
        self.until(i, t, limit, |s| s.health == "ok" && s.last_applied_index >= applied).await
    }

    async fn until(
        &mut self,
        i: usize,
        since: Instant,
        limit: Duration,
        done: impl Fn(&StatusResponse) -> bool,
    ) -> anyhow::Result<Option<f64>> {
        while since.elapsed() < limit {
            if self.status(i).await.is_some_and(|s| done(&s)) {
                return Ok(Some(since.elapsed().as_secs_f64()));
            }
            self.procs_alive()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    }

    /// Node `i`'s (0-based) data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{}", i + 1))
    }

    /// Node id (1-based) of the leader every running node agrees on.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut views = Vec::new();
            for (i, a) in self.admin.iter().enumerate() {
                if self.procs.running[i].is_some() {
                    let mut a = a.clone();
                    views.push(
                        a.status(StatusRequest {})
                            .await
                            .ok()
                            .map(|r| r.into_inner())
                            .filter(|s| s.has_leader)
                            .map(|s| s.leader_id),
                    );
                }
            }
            if let Some(Some(l)) = views.first()
                && views.iter().all(|v| *v == Some(*l))
                && self.procs.running.get((*l as usize).wrapping_sub(1)).is_some_and(Option::is_some)
            {
                return Ok(*l);
            }
            if Instant::now() > deadline {
                bail!("no agreed router leader within {timeout:?} (views {views:?}); logs in {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn stamp(len: usize) -> Vec<u8> {
    let mut v = vec![0x5au8; len.max(8)];
    v[..8].copy_from_slice(&now_us().to_le_bytes());
    v
}

fn stamped_latency(b: &[u8]) -> Option<u64> {
    let t = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    Some(now_us().saturating_sub(t))
}

/// Registers `user` with device 1; one already registered (an earlier point
/// on the same cluster) is fine.
pub async fn register(c: &RouterClient, user: &str, registration_id: u32) -> anyhow::Result<()> {
    let exists = |e: &router_sdk::SdkError| e.code() == Some(tonic::Code::AlreadyExists);
    match c.register_user(user).await {
        Err(e) if !exists(&e) => return Err(e).with_context(|| format!("register {user}")),
        _ => {}
    }
    match c.register_device(user, 1, registration_id).await {
        Err(e) if !exists(&e) => Err(e).with_context(|| format!("register device of {user}")),
        _ => Ok(()),
    }
}

/// Send-side and receive-side events of a delivery run (any system).
#[derive(Default)]
pub struct DeliveryRun {
    pub start_us: u64,
    /// Completion = ack from the router, latency = send -> ack.
    pub acks: Vec<Event>,
    /// Completion = handed to the receiver, latency = send -> delivery.
    pub deliveries: Vec<Event>,
    /// Group runs: member deliveries (recipients named in the delivered entries).
    pub member_deliveries: Vec<Event>,
    pub errors: u64,
    pub undelivered: u64,
}

impl DeliveryRun {
    pub fn print(&self) {
        println!(
            "   accepted {} delivered {} errors {} undelivered after drain {}",
            self.acks.len(),
            self.deliveries.len(),
            self.errors,
            self.undelivered
        );
    }
}

/// The delivery workload with the cluster's processes metered meanwhile.
pub async fn metered_delivery(
    cluster: &RouterCluster,
    o: &DeliveryOpts,
) -> anyhow::Result<(DeliveryRun, crate::cost::Samples)> {
    let meter = crate::cost::Meter::start(cluster.procs.pids(), &cluster.dir);
    let run = delivery(cluster, o).await?;
    Ok((run, meter.finish().await))
}

/// Receives from one provider's mailbox and acks in batches from a second task.
fn spawn_receiver(
    client: RouterClient,
    window: u32,
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<(Vec<Event>, Vec<Event>)>> {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
        let acker_client = client.clone();
        let acker = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            // Ends when the receiver drops its sender.
            while rx.recv_many(&mut buf, 1024).await > 0 {
                let seqs = std::mem::take(&mut buf);
                if let Err(e) = acker_client.ack(seqs).await {
                    eprintln!("  ack failed: {e}");
                }
            }
        });
        let mut sub = client.subscribe(window);
        let (mut ev, mut members) = (Vec::new(), Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let entry = match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                Err(_) => continue,
                Ok(Err(e)) => {
                    eprintln!("  receive failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Ok(Ok(e)) => e,
            };
            let (lat, n_members) = match &entry.kind {
                Some(Kind::Envelope(env)) => (env.parts.first().and_then(|p| stamped_latency(&p.ciphertext)), 0),
                Some(Kind::Group(g)) => (stamped_latency(&g.ciphertext), g.recipient_user_ids.len()),
                _ => (None, 0),
            };
            if !entry.ephemeral {
                let _ = tx.send(entry.seq);
            }
            if let Some(lat) = lat {
                let at_us = now_us();
                delivered.fetch_add(1, Ordering::Relaxed);
                if ev.len() < MAX_EVENTS {
                    ev.push(Event { at_us, lat_us: lat });
                }
                if n_members > 0 && members.len() < MAX_EVENTS {
                    members.push(Event { at_us, lat_us: n_members as u64 });
                }
            }
        }
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), acker).await;
        Ok((ev, members))
    })
}

/// Waits (bounded) for the receivers to catch up with what was accepted, then stops them.
async fn drain(accepted: u64, delivered: &AtomicU64, per_msg: u64, stop: &AtomicBool, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    while delivered.load(Ordering::Relaxed) < accepted * per_msg && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    (accepted * per_msg).saturating_sub(delivered.load(Ordering::Relaxed))
}

pub struct DeliveryOpts {
    /// Offered load in sends per second (open loop, see `Pace`); `None`:
    /// closed loop, `window` sends always in flight.
    pub pace: Option<f64>,
    pub total: Duration,
    pub window: usize,
    pub clients: usize,
    pub payload: usize,
    pub receive_window: u32,
}

/// Workload 1: `window` sends in flight from provider a to one user of
/// provider b, whose receiver acks in batches.
pub async fn delivery(cluster: &RouterCluster, o: &DeliveryOpts) -> anyhow::Result<DeliveryRun> {
    let n = cluster.nodes();
    let sender = cluster.client("a", 0, None)?;
    let receiver = cluster.client("b", 1 % n, None)?;
    register(&sender, "handle:sender", 1001).await?;
    register(&receiver, "handle:receiver", 2002).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let rx = spawn_receiver(receiver, o.receive_window, stop.clone(), delivered.clone());
    let clients: Vec<RouterClient> =
        (0..o.clients.max(1)).map(|i| cluster.client("a", i % n, None)).collect::<Result<_, _>>()?;
    let start_us = now_us();
    let payload = o.payload;
    let pace = o.pace.map(Pace::new);
    // Message ids unique to this run: the router deduplicates sends by id, so
    // a second run on the same cluster reusing ids would queue nothing.
    let run_id = now_us();
    let (acks, errors) =
        closed_loop(&clients, o.window, pace, Instant::now() + o.total, "send", move |c, t, k| async move {
            c.send(to_receiver(format!("m-{run_id}-{t}-{k}"), payload)).await.map(drop)
        })
        .await?;
    let mut run = DeliveryRun { start_us, acks, errors, ..Default::default() };
    run.undelivered = drain(run.acks.len() as u64, &delivered, 1, &stop, Duration::from_secs(30)).await;
    let (ev, _) = rx.await??;
    run.deliveries = ev;
    Ok(run)
}

pub struct GroupOpts {
    pub total: Duration,
    pub window: usize,
    pub members: usize,
    pub payload: usize,
    pub receive_window: u32,
}

/// Workload 3: sends to one group whose members are spread over providers a..e;
/// every provider receives one entry per message and acks.
pub async fn groups(cluster: &RouterCluster, o: &GroupOpts) -> anyhow::Result<DeliveryRun> {
    let n = cluster.nodes();
    let per = o.members.div_ceil(PROVIDERS.len());
    let mut members = Vec::new();
    for (pi, p) in PROVIDERS.iter().enumerate() {
        let c = cluster.client(p, pi % n, None)?;
        let users: Vec<String> = (0..per).map(|i| format!("handle:{p}-{i}")).collect();
        for chunk in users.chunks(25) {
            let futs = chunk.iter().enumerate().map(|(i, u)| {
                let c = c.clone();
                let u = u.clone();
                async move { register(&c, &u, 100 + i as u32).await }
            });
            for r in futures_join(futs).await {
                r?;
            }
        }
        members.extend(users);
    }
    let creator = "handle:a-0".to_string();
    let admin = cluster.client("a", 0, None)?;
    admin
        .create_group(CreateGroupRequest {
            group_id: "bench-group".into(),
            creator_user_id: creator.clone(),
            members: members
                .iter()
                .map(|u| GroupMember { user_id: u.clone(), role: GroupRole::Member as i32 })
                .collect(),
        })
        .await
        .context("create group")?;
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut rxs = Vec::new();
    for (pi, p) in PROVIDERS.iter().enumerate() {
        rxs.push(spawn_receiver(
            cluster.client(p, (pi + 1) % n, None)?,
            o.receive_window,
            stop.clone(),
            delivered.clone(),
        ));
    }
    let start_us = now_us();
    let clients: Vec<RouterClient> = (0..n).map(|i| cluster.client("a", i, None)).collect::<Result<_, _>>()?;
    let payload = o.payload;
    let end = Instant::now() + o.total;
    let (acks, errors) = closed_loop(&clients, o.window, None, end, "group send", move |c, t, k| {
        let creator = creator.clone();
        async move {
            let req = SendGroupRequest {
                group_id: "bench-group".into(),
                message_id: format!("g-{t}-{k}"),
                sender_user_id: creator,
                sender_device_id: 1,
                content_type: ContentType::Message as i32,
                ttl_seconds: 0,
                ciphertext: stamp(payload).into(),
                per_device: vec![],
            };
            c.send_group(req).await.map(drop)
        }
    })
    .await?;
    let mut run = DeliveryRun { start_us, acks, errors, ..Default::default() };
    run.undelivered =
        drain(run.acks.len() as u64, &delivered, PROVIDERS.len() as u64, &stop, Duration::from_secs(30)).await;
    for rx in rxs {
        let (ev, m) = rx.await??;
        run.deliveries.extend(ev);
        run.member_deliveries.extend(m);
    }
    Ok(run)
}

/// `window` tasks over `clients` (round robin), each issuing `op(client,
/// task, k)` back to back until `end`: every success is an event (completion
/// time, latency); failures are counted (the first 3 printed) and back off 20 ms.
async fn closed_loop<F, Fut>(
    clients: &[RouterClient],
    window: usize,
    pace: Option<Arc<Pace>>,
    end: Instant,
    what: &'static str,
    op: F,
) -> anyhow::Result<(Vec<Event>, u64)>
where
    F: Fn(RouterClient, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), router_sdk::SdkError>> + Send,
{
    let mut tasks = Vec::new();
    for t in 0..window {
        let (c, op, pace) = (clients[t % clients.len()].clone(), op.clone(), pace.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ev, mut errors, mut k) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < end {
                k += 1;
                let t0 = match &pace {
                    Some(p) => p.slot().await,
                    None => now_us(),
                };
                match op(c.clone(), t, k).await {
                    Ok(()) => {
                        let at = now_us();
                        if ev.len() < MAX_EVENTS {
                            ev.push(Event { at_us: at, lat_us: at - t0 });
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("  {what} failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (ev, errors)
        }));
    }
    let (mut events, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (ev, e) = t.await?;
        events.extend(ev);
        errors += e;
    }
    Ok((events, errors))
}

async fn futures_join<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("setup task panicked"));
    }
    out
}

/// Workload 2 setup: `users` users of provider a with one device each, stocked
/// with `keys_per_user` one-time EC prekeys (uploads of 100, valid signatures).
pub async fn stock_prekeys(cluster: &RouterCluster, users: usize, keys_per_user: u32) -> anyhow::Result<()> {
    let n = cluster.nodes();
    let clients: Vec<RouterClient> = (0..n).map(|i| cluster.client("a", i, None)).collect::<Result<_, _>>()?;
    let mut handles = Vec::new();
    for w in 0..8usize {
        let clients = clients.clone();
        handles.push(tokio::spawn(async move {
            for u in (w..users).step_by(8) {
                let c = &clients[u % clients.len()];
                let user = format!("handle:k{u}");
                register(c, &user, 5000 + u as u32).await?;
                // Key generation is CPU work: keep it off the async workers' hot path.
                let uploads = tokio::task::spawn_blocking(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(u as u64);
                    let identity = KeyPair::generate(&mut rng);
                    let mut out = Vec::new();
                    let mut first = 1u32;
                    while first <= keys_per_user {
                        let count = (keys_per_user + 1 - first).min(100);
                        let spk = KeyPair::generate(&mut rng);
                        let mut r = [0u8; 64];
                        rand::RngCore::fill_bytes(&mut rng, &mut r);
                        let signature = identity.sign(&spk.public, &r).to_vec();
                        out.push(UploadPrekeysRequest {
                            user_id: format!("handle:k{u}"),
                            device_id: 1,
                            identity_key: identity.public.to_vec().into(),
                            signed_prekey: Some(SignedEcPrekey {
                                key_id: 1,
                                public_key: spk.public.to_vec().into(),
                                signature: signature.into(),
                            }),
                            one_time_prekeys: (first..first + count)
                                .map(|id| EcOneTimePrekey {
                                    key_id: id,
                                    public_key: KeyPair::generate(&mut rng).public.to_vec().into(),
                                })
                                .collect(),
                            kyber_one_time_prekeys: vec![],
                            kyber_last_resort: None,
                        });
                        first += count;
                    }
                    out
                })
                .await?;
                for req in uploads {
                    c.upload_prekeys(req).await.with_context(|| format!("upload prekeys for {user}"))?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// Workload 2: `concurrency` clients of provider b claiming bundles
/// (`FetchBundles`: one linearizable write each) round-robin over the users.
pub async fn claims(
    cluster: &RouterCluster,
    users: usize,
    concurrency: usize,
    total: Duration,
) -> anyhow::Result<(u64, Vec<Event>, u64, u64)> {
    let n = cluster.nodes();
    let clients: Vec<RouterClient> =
        (0..concurrency.clamp(1, 8)).map(|i| cluster.client("b", i % n, None)).collect::<Result<_, _>>()?;
    let start_us = now_us();
    let end = Instant::now() + total;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let c = clients[t % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            let (mut ev, mut errors, mut exhausted, mut k) = (Vec::new(), 0u64, 0u64, t);
            while Instant::now() < end {
                let user = format!("handle:k{}", k % users);
                k += concurrency;
                let t0 = now_us();
                match c.fetch_bundles(&user, 0).await {
                    Ok(r) => {
                        let at = now_us();
                        if r.bundles.iter().any(|b| b.one_time_exhausted || b.one_time_prekey.is_none()) {
                            exhausted += 1;
                        }
                        if ev.len() < MAX_EVENTS {
                            ev.push(Event { at_us: at, lat_us: at - t0 });
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("  claim failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (ev, errors, exhausted)
        }));
    }
    let (mut all, mut errors, mut exhausted) = (Vec::new(), 0, 0);
    for t in tasks {
        let (ev, e, x) = t.await?;
        all.extend(ev);
        errors += e;
        exhausted += x;
    }
    Ok((start_us, all, errors, exhausted))
}

/// A 1:1 send of `payload` stamped bytes from the sender's device 1 to the
/// receiver's device 1 (the users every router workload sets up).
pub fn to_receiver(message_id: String, payload: usize) -> SendRequest {
    envelope(message_id, "handle:receiver", 2002, payload)
}

/// A 1:1 send of `payload` stamped bytes from the sender's device 1 to device 1 of `recipient`.
pub fn envelope(message_id: String, recipient: &str, registration_id: u32, payload: usize) -> SendRequest {
    SendRequest {
        message_id,
        recipient_user_id: recipient.into(),
        content_type: ContentType::Message as i32,
        ttl_seconds: 0,
        parts: vec![DeviceCiphertext {
            device_id: 1,
            registration_id,
            message_type: 1,
            ciphertext: stamp(payload).into(),
        }],
        sender_user_id: "handle:sender".into(),
        sender_device_id: 1,
    }
}

/// Workload 4 (router side): the steady writer used by the failover probe.
pub async fn failover_writer(client: RouterClient, task: usize, k: u64) -> bool {
    let req = to_receiver(format!("f-{task}-{k}-{}", now_us()), 1024);
    matches!(tokio::time::timeout(Duration::from_millis(600), client.send(req)).await, Ok(Ok(_)))
}

/// The sender (provider a) and receiver (provider b) users `to_receiver` addresses.
pub async fn register_pair(sender: &RouterClient, receiver: &RouterClient) -> anyhow::Result<()> {
    register(sender, "handle:sender", 1001).await?;
    register(receiver, "handle:receiver", 2002).await
}

pub async fn failover_setup(cluster: &RouterCluster) -> anyhow::Result<()> {
    let n = cluster.nodes();
    // Already there when the delivery workload ran first: then this fails harmlessly.
    let _ = register(&cluster.client("a", 0, None)?, "handle:sender", 1001).await;
    let _ = register(&cluster.client("b", 1 % n, None)?, "handle:receiver", 2002).await;
    Ok(())
}
