//! A minimal NATS client over tokio TCP (text protocol: CONNECT, PUB, SUB,
//! MSG/HMSG, PING/PONG, +OK/-ERR) and JetStream through its JSON API on
//! `$JS.API.*`, plus a three-server JetStream cluster on loopback.

use crate::procs::{self, Group, Spec};
use crate::stats::{Event, MAX_EVENTS, now_us};
use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// One message from the server. `status` is set for JetStream status
/// messages (HMSG whose header line is `NATS/1.0 <code> ...`).
#[derive(Debug)]
pub struct Msg {
    pub subject: String,
    pub reply: Option<String>,
    pub status: Option<u16>,
    pub payload: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    subs: Mutex<HashMap<u64, mpsc::UnboundedSender<Msg>>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Msg>>>,
    closed: AtomicBool,
}

const INBOX_SID: u64 = 1;

pub struct Nats {
    out: mpsc::UnboundedSender<Vec<u8>>,
    shared: Arc<Shared>,
    inbox: String,
    next: AtomicU64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Nats {
    pub async fn connect(port: u16, timeout: Duration) -> anyhow::Result<Nats> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| anyhow!("connect to NATS :{port} timed out"))??;
        stream.set_nodelay(true)?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::with_capacity(256 * 1024, r);
        let mut line = String::new();
        let handshake = async {
            r.read_line(&mut line).await?;
            if !line.starts_with("INFO") {
                bail!("unexpected NATS greeting: {line:?}");
            }
            let connect = json!({"verbose": false, "pedantic": false, "headers": true, "no_responders": true,
                                 "protocol": 1, "lang": "router-bench", "version": "0.1"});
            w.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes()).await?;
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    bail!("NATS closed the connection during the handshake");
                }
                if line.starts_with("PONG") {
                    return Ok(());
                }
                if line.starts_with("-ERR") {
                    bail!("NATS refused CONNECT: {}", line.trim());
                }
            }
        };
        tokio::time::timeout(timeout, handshake).await.map_err(|_| anyhow!("NATS handshake timed out"))??;
        let shared = Arc::new(Shared::default());
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(256 * 1024);
            while let Some(first) = out_rx.recv().await {
                buf.clear();
                buf.extend_from_slice(&first);
                while buf.len() < 256 * 1024 {
                    match out_rx.try_recv() {
                        Ok(more) => buf.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if w.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let reader = tokio::spawn(read_loop(r, shared.clone(), out.clone()));
        let inbox = format!("_INBOX.{}", token());
        let c = Nats { out, shared, inbox, next: AtomicU64::new(INBOX_SID + 1), tasks: vec![writer, reader] };
        c.send(format!("SUB {}.* {INBOX_SID}\r\n", c.inbox).into_bytes())?;
        Ok(c)
    }

    fn send(&self, bytes: Vec<u8>) -> anyhow::Result<()> {
        if self.shared.closed.load(Ordering::Relaxed) {
            bail!("NATS connection closed");
        }
        self.out.send(bytes).map_err(|_| anyhow!("NATS connection closed"))
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    pub fn publish(&self, subject: &str, reply: Option<&str>, payload: &[u8]) -> anyhow::Result<()> {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        let mut b = Vec::with_capacity(head.len() + payload.len() + 2);
        b.extend_from_slice(head.as_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(b"\r\n");
        self.send(b)
    }

    pub fn subscribe(&self, subject: &str) -> anyhow::Result<mpsc::UnboundedReceiver<Msg>> {
        let sid = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.subs.lock().expect("subs lock").insert(sid, tx);
        self.send(format!("SUB {subject} {sid}\r\n").into_bytes())?;
        Ok(rx)
    }

    /// Publishes with a unique reply subject and waits for the single reply.
    pub async fn request(&self, subject: &str, payload: &[u8], timeout: Duration) -> anyhow::Result<Msg> {
        let reply = format!("{}.{}", self.inbox, self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().expect("pending lock").insert(reply.clone(), tx);
        let res = async {
            self.publish(subject, Some(&reply), payload)?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(m)) => Ok(m),
                Ok(Err(_)) => Err(anyhow!("NATS connection closed")),
                Err(_) => Err(anyhow!("no reply on {subject} within {timeout:?}")),
            }
        }
        .await;
        self.shared.pending.lock().expect("pending lock").remove(&reply);
        res
    }

    /// A JetStream API call; fails when the answer carries an `error`.
    pub async fn js(&self, api: &str, body: &Value) -> anyhow::Result<Value> {
        let m = self.request(&format!("$JS.API.{api}"), body.to_string().as_bytes(), Duration::from_secs(5)).await?;
        if let Some(code) = m.status {
            bail!("$JS.API.{api}: status {code}");
        }
        let v: Value = serde_json::from_slice(&m.payload).with_context(|| format!("$JS.API.{api} answer"))?;
        if let Some(e) = v.get("error") {
            bail!("$JS.API.{api}: {e}");
        }
        Ok(v)
    }
}

async fn read_loop(
    mut r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut parts = line.split_ascii_whitespace();
        let op = parts.next().unwrap_or("");
        let args: Vec<&str> = parts.collect();
        let (subject, sid, reply, hdr, total) = match (op, args.len()) {
            ("MSG", 3) => (args[0], args[1], None, 0, args[2]),
            ("MSG", 4) => (args[0], args[1], Some(args[2]), 0, args[3]),
            ("HMSG", 4) => (args[0], args[1], None, args[2].parse().unwrap_or(0), args[3]),
            ("HMSG", 5) => (args[0], args[1], Some(args[2]), args[3].parse().unwrap_or(0), args[4]),
            ("PING", _) => {
                let _ = out.send(b"PONG\r\n".to_vec());
                continue;
            }
            ("-ERR", _) => {
                eprintln!("  nats: {}", line.trim());
                continue;
            }
            _ => continue, // +OK, PONG, INFO
        };
        let total: usize = total.parse().unwrap_or(0);
        let mut data = vec![0u8; total + 2];
        if r.read_exact(&mut data).await.is_err() {
            break;
        }
        data.truncate(total);
        let status = if hdr > 0 {
            let h = String::from_utf8_lossy(&data[..hdr.min(total)]);
            h.lines().next().and_then(|l| l.split_ascii_whitespace().nth(1)).and_then(|c| c.parse().ok())
        } else {
            None
        };
        let payload = data.split_off(hdr.min(total));
        let sid: u64 = sid.parse().unwrap_or(0);
        let msg = Msg { subject: subject.to_string(), reply: reply.map(str::to_string), status, payload };
        if sid == INBOX_SID {
            if let Some(tx) = shared.pending.lock().expect("pending lock").remove(&msg.subject) {
                let _ = tx.send(msg);
            }
        } else if let Some(tx) = shared.subs.lock().expect("subs lock").get(&sid) {
            let _ = tx.send(msg);
        }
    }
    shared.closed.store(true, Ordering::Relaxed);
    shared.pending.lock().expect("pending lock").clear();
    shared.subs.lock().expect("subs lock").clear();
}

pub struct NatsCluster {
    pub procs: Group,
    pub ports: Vec<u16>,
    pub label: String,
}

impl NatsCluster {
    /// Three JetStream servers clustered over loopback routes. `sync_always`
    /// sets `sync_interval: always` (fsync before every ack).
    pub async fn start(bin: &Path, dir: &Path, base_port: u16, sync_always: bool) -> anyhow::Result<NatsCluster> {
        let n = 3u16;
        let ports: Vec<u16> = (0..n).map(|i| base_port + i).collect();
        let routes: Vec<u16> = (0..n).map(|i| base_port + 100 + i).collect();
        procs::ensure_free(&ports)?;
        procs::ensure_free(&routes)?;
        let mut specs = Vec::new();
        for i in 0..n as usize {
            let store = dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&store)?;
            let route_list: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
            let conf = format!(
                "server_name: n{id}\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 1048576\n\
                 jetstream {{\n  store_dir: \"{store}\"\n{sync}}}\n\
                 cluster {{\n  name: bench\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                id = i + 1,
                port = ports[i],
                store = store.display(),
                sync = if sync_always { "  sync_interval: always\n" } else { "" },
                route = routes[i],
                routes = route_list.join(", "),
            );
            let path = dir.join(format!("n{}.conf", i + 1));
            std::fs::write(&path, conf)?;
            specs.push(Spec {
                name: format!("nats-server n{}", i + 1),
                program: bin.to_path_buf(),
                args: vec!["-c".into(), path.display().to_string()],
                envs: vec![],
                log: dir.join(format!("n{}.log", i + 1)),
            });
        }
        let mut procs = Group::start(specs)?;
        procs::wait_ports(&ports, Duration::from_secs(20)).await?;
        procs.check_alive()?;
        let label = if sync_always {
            "NATS JetStream R3, sync_interval: always"
        } else {
            "NATS JetStream R3, default sync (not fsyncing per write)"
        };
        Ok(NatsCluster { procs, ports, label: label.into() })
    }

    /// Creates the R3 file stream (work-queue retention: acked messages are
    /// removed, like a router mailbox) and a durable pull consumer, retrying
    /// until the JetStream meta leader is elected (bounded).
    pub async fn create_stream(&self, stream: &str, max_ack_pending: u32) -> anyhow::Result<()> {
        let c = Nats::connect(self.ports[0], Duration::from_secs(2)).await?;
        let deadline = Instant::now() + Duration::from_secs(40);
        let cfg = json!({"name": stream, "subjects": [format!("{}.>", stream.to_lowercase())], "retention": "workqueue",
                         "storage": "file", "num_replicas": 3, "discard": "old", "max_msgs": -1, "max_bytes": -1});
        loop {
            match c.js(&format!("STREAM.CREATE.{stream}"), &cfg).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing_like(&format!("  waiting for JetStream: {e}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.context("create JetStream stream")),
            }
        }
        let ccfg = json!({"stream_name": stream, "config": {"name": "C", "durable_name": "C", "ack_policy": "explicit",
                          "max_ack_pending": max_ack_pending, "ack_wait": 30_000_000_000u64, "num_replicas": 0}});
        loop {
            match c.js(&format!("CONSUMER.CREATE.{stream}.C"), &ccfg).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing_like(&format!("  waiting for the consumer: {e}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.context("create JetStream consumer")),
            }
        }
    }

    /// Index (0-based) of the server leading `stream`'s Raft group.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        for p in &self.ports {
            let Ok(c) = Nats::connect(*p, Duration::from_secs(1)).await else { continue };
            if let Ok(v) = c.js(&format!("STREAM.INFO.{stream}"), &json!({})).await
                && let Some(l) = v.pointer("/cluster/leader").and_then(Value::as_str)
                && let Some(i) = l.strip_prefix('n').and_then(|x| x.parse::<usize>().ok())
            {
                return Ok(i - 1);
            }
        }
        bail!("no stream leader reported for {stream}")
    }
}

fn tracing_like(s: &str) {
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("{s}");
    }
}

fn stamped(len: usize) -> Vec<u8> {
    let mut v = vec![0x5au8; len.max(8)];
    v[..8].copy_from_slice(&now_us().to_le_bytes());
    v
}

pub struct JsRun {
    pub start_us: u64,
    pub acks: Vec<Event>,
    pub deliveries: Vec<Event>,
    pub errors: u64,
    pub undelivered: u64,
}

/// Workload 1 on JetStream: `window` publishes in flight over `clients`
/// connections (each waits for its PubAck), one pull consumer acking each
/// message (`+ACK`), with up to `pull_outstanding` messages requested.
pub async fn delivery(
    cluster: &NatsCluster,
    total: Duration,
    window: usize,
    clients: usize,
    payload: usize,
    pull_outstanding: u32,
) -> anyhow::Result<JsRun> {
    let stream = "BENCH";
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let consumer = tokio::spawn(consume(
        cluster.ports[1 % cluster.ports.len()],
        stream,
        pull_outstanding,
        stop.clone(),
        delivered.clone(),
    ));
    let mut conns = Vec::new();
    for i in 0..clients.max(1) {
        conns.push(Arc::new(Nats::connect(cluster.ports[i % cluster.ports.len()], Duration::from_secs(2)).await?));
    }
    let start_us = now_us();
    let end = Instant::now() + total;
    let mut tasks = Vec::new();
    for t in 0..window {
        let c = conns[t % conns.len()].clone();
        tasks.push(tokio::spawn(async move {
            let (mut ev, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < end {
                let t0 = now_us();
                match c.request("bench.m", &stamped(payload), Duration::from_secs(5)).await {
                    Ok(m) if m.status.is_none() && !contains(&m.payload, b"\"error\"") => {
                        let at = now_us();
                        if ev.len() < MAX_EVENTS {
                            ev.push(Event { at_us: at, lat_us: at - t0 });
                        }
                    }
                    other => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!(
                                "  publish failed: {:?}",
                                other.map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (ev, errors)
        }));
    }
    let mut run = JsRun { start_us, acks: Vec::new(), deliveries: Vec::new(), errors: 0, undelivered: 0 };
    for t in tasks {
        let (ev, e) = t.await?;
        run.acks.extend(ev);
        run.errors += e;
    }
    let accepted = run.acks.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    run.undelivered = accepted.saturating_sub(delivered.load(Ordering::Relaxed));
    run.deliveries = consumer.await??;
    Ok(run)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Pull consumer: keeps `outstanding` messages requested in pulls of up to
/// 1,024 (1 s expiry); acks every message with `+ACK`.
async fn consume(
    port: u16,
    stream: &str,
    outstanding: u32,
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
) -> anyhow::Result<Vec<Event>> {
    let c = Nats::connect(port, Duration::from_secs(2)).await?;
    let prefix = format!("_PULL.{}", token());
    let mut rx = c.subscribe(&format!("{prefix}.*"))?;
    let batch = outstanding.clamp(1, 1024);
    let pulls = outstanding.div_ceil(batch).max(1);
    let next_subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.C");
    let body = json!({"batch": batch, "expires": 1_000_000_000u64}).to_string();
    // Pulls in the order they were issued: JetStream fills them in that order,
    // and a pulled message carries the stream subject, not the pull's inbox.
    let mut remaining: std::collections::VecDeque<(String, u32)> = std::collections::VecDeque::new();
    let mut req_no = 0u64;
    let mut ev = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        while (remaining.len() as u32) < pulls {
            req_no += 1;
            let reply = format!("{prefix}.{req_no}");
            c.publish(&next_subject, Some(&reply), body.as_bytes())?;
            remaining.push_back((reply, batch));
        }
        let m = match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Err(_) => continue,
            Ok(None) => bail!("consumer connection closed"),
            Ok(Some(m)) => m,
        };
        if let Some(code) = m.status {
            tracing_like(&format!("  pull {} ended: status {code}", m.subject));
            // 408 request expired, 409 limits, 404 no messages: that pull is over.
            remaining.retain(|(r, _)| *r != m.subject);
            continue;
        }
        if let Some(front) = remaining.front_mut() {
            front.1 -= 1;
            if front.1 == 0 {
                remaining.pop_front();
            }
        }
        if let Some(reply) = &m.reply {
            c.publish(reply, None, b"+ACK")?;
        }
        if m.payload.len() >= 8 {
            let t = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
            let at = now_us();
            delivered.fetch_add(1, Ordering::Relaxed);
            if ev.len() < MAX_EVENTS {
                ev.push(Event { at_us: at, lat_us: at.saturating_sub(t) });
            }
        }
    }
    Ok(ev)
}

/// Failover probe writer: publishes with ack to the surviving servers only.
pub struct Writer {
    pub ports: Vec<u16>,
    pub cur: usize,
    pub conn: Option<Nats>,
}

impl Writer {
    pub async fn write(&mut self) -> bool {
        if self.conn.as_ref().is_none_or(Nats::is_closed) {
            self.cur = (self.cur + 1) % self.ports.len();
            self.conn = Nats::connect(self.ports[self.cur], Duration::from_millis(300)).await.ok();
        }
        let Some(c) = &self.conn else { return false };
        match c.request("bench.f", &stamped(1024), Duration::from_millis(600)).await {
            Ok(m) => m.status.is_none() && !contains(&m.payload, b"\"error\""),
            Err(_) => false,
        }
    }
}

pub fn dir_for(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = base.join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
