//! `interop-demo`: two providers, `alpha` and `beta`, exchange Signal
//! end-to-end-encrypted messages through a three-process routerd cluster,
//! the leader is killed (SIGKILL) mid-stream, and a report checks that
//! nothing acknowledged was lost. Exit code 0 only when every check held.

mod cluster;

use anyhow::{Context, bail};
use clap::Parser;
use cluster::ProcessCluster;
use router_e2ee::device::new_identity;
use router_e2ee::store::SledProtocolStore;
use router_e2ee::{Inbound, Messenger, Received};
use router_sdk::v1::ContentType;
use router_sdk::{ClientConfig, RouterClient};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "interop-demo", about = "Interop Router end-to-end demo")]
struct Args {
    /// The routerd binary (default: next to this executable).
    #[arg(long)]
    routerd: Option<PathBuf>,
    /// Working directory for certificates, node data and logs (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 7500)]
    base_port: u16,
    /// Messages sent in the failover stream.
    #[arg(long, default_value_t = 150)]
    messages: usize,
}

type Provider = Messenger<SledProtocolStore>;

fn client(cluster: &ProcessCluster, provider: &str, first: u64) -> anyhow::Result<RouterClient> {
    let certs = cluster.dir.join("certs");
    let read = |f: String| std::fs::read(certs.join(&f)).with_context(|| format!("read {f}"));
    let n = cluster.nodes();
    let endpoints = (0..n).map(|i| cluster.provider_endpoint((first - 1 + i) % n + 1)).collect();
    let mut cfg = ClientConfig::new(
        endpoints,
        read("ca.pem".into())?,
        read(format!("provider-{provider}.pem"))?,
        read(format!("provider-{provider}.key"))?,
    );
    cfg.attempt_timeout = Duration::from_secs(2);
    let c = RouterClient::connect(cfg)?;
    c.prefer(0);
    Ok(c)
}

async fn add_device(m: &mut Provider, dir: &Path, user: &str, device: u32) -> anyhow::Result<()> {
    let (identity, registration_id) = new_identity();
    let store_dir = dir.join(format!("{}-{device}", user.replace(':', "_")));
    let store = SledProtocolStore::open(&store_dir, identity, registration_id)?;
    m.add_device(user, device, store).await?;
    Ok(())
}

fn hex_preview(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(24).map(|b| format!("{b:02x}")).collect();
    format!("{shown}… ({} bytes)", bytes.len())
}

async fn receive_one(m: &mut Provider) -> anyhow::Result<Received> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), m.next()).await.context("timed out waiting")?? {
            Inbound::Message(r) => return Ok(r),
            Inbound::Expired { message_id, .. } => println!("  (expiry report for {message_id})"),
            Inbound::Undeliverable { message_id, reason, .. } => {
                println!("  (undeliverable report for {message_id}: {reason})")
            }
            Inbound::Group(g) => println!("  (group message {} not part of this demo)", g.message_id),
        }
    }
}

#[tokio::main]
async fn main() {
    match run(Args::parse()).await {
        Ok(true) => println!("\nRESULT: every check held."),
        Ok(false) => {
            println!("\nRESULT: a check FAILED (see above).");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("\ninterop-demo failed: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let routerd = match args.routerd {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("routerd"),
    };
    if !routerd.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p router-node) or pass --routerd",
            routerd.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let mut ok = true;
    let mut check = |what: &str, held: bool| {
        println!("  [{}] {what}", if held { "ok" } else { "FAILED" });
        ok &= held;
    };

    println!("== 1. Starting a 3-node cluster ({} processes, sled storage in {})", 3, dir.display());
    let mut cluster = ProcessCluster::start(&routerd, &dir, args.base_port, 3).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    for id in 1..=3 {
        println!(
            "  node {id}: pid {:?}, provider endpoint {}",
            cluster.pid(id).unwrap_or(0),
            cluster.provider_endpoint(id)
        );
    }
    println!("  leader: node {leader}");

    println!("\n== 2. Providers register users, devices and Signal prekeys (PQXDH: EC + Kyber1024)");
    let stores = dir.join("provider-stores");
    let mut alpha = Messenger::new(client(&cluster, "alpha", 1)?);
    let mut beta = Messenger::new(client(&cluster, "beta", 2)?);
    add_device(&mut alpha, &stores, "handle:alice", 1).await?;
    add_device(&mut alpha, &stores, "handle:amy", 1).await?;
    add_device(&mut alpha, &stores, "handle:amy", 2).await?;
    add_device(&mut beta, &stores, "handle:bob", 1).await?;
    add_device(&mut beta, &stores, "handle:bob", 2).await?;
    add_device(&mut beta, &stores, "handle:bea", 1).await?;
    println!(
        "  alpha: handle:alice (1 device), handle:amy (2 devices); beta: handle:bob (2 devices), handle:bea (1 device)"
    );

    println!("\n== 3. End-to-end-encrypted conversations, both ways");
    let mut plaintexts: Vec<Vec<u8>> = Vec::new();
    let file: Vec<u8> = {
        let mut f = b"%PDF-1.7 quarterly-report.pdf -- interop demo attachment\n".to_vec();
        f.extend((0..48 * 1024).map(|i| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i % 26]));
        f
    };
    /// (sending provider, from (user, device), to user, content type, plaintext)
    type Conversation<'a> = (&'a str, (&'a str, u32), &'a str, ContentType, Vec<u8>);
    let conversations: Vec<Conversation> = vec![
        (
            "alpha",
            ("handle:alice", 1),
            "handle:bob",
            ContentType::Message,
            b"Hi Bob, it's Alice from alpha. Lunch at noon?".to_vec(),
        ),
        (
            "beta",
            ("handle:bob", 2),
            "handle:alice",
            ContentType::Message,
            b"Hi Alice! Noon works - Bob, on beta.".to_vec(),
        ),
        ("alpha", ("handle:amy", 2), "handle:bea", ContentType::Message, file.clone()),
        ("beta", ("handle:bea", 1), "handle:amy", ContentType::Message, b"Got the report, thanks Amy.".to_vec()),
    ];
    for (i, (sender, from, to, ct, text)) in conversations.into_iter().enumerate() {
        let (tx, rx) = if sender == "alpha" { (&mut alpha, &mut beta) } else { (&mut beta, &mut alpha) };
        let id = format!("conv-{i}");
        let sent = tx.send(from, to, ct, &id, &text).await?;
        let got = receive_one(rx).await?;
        rx.ack(vec![got.seq]).await?;
        let preview = String::from_utf8_lossy(&text[..text.len().min(60)]).replace('\n', " ");
        println!(
            "  {}/{} -> {to}: \"{preview}\"{}",
            sender,
            from.0,
            if text.len() > 60 { format!(" … ({} bytes, a file)", text.len()) } else { String::new() }
        );
        println!(
            "    router stored (mailbox seq {}), device {} ciphertext: {}",
            sent.mailbox_seq,
            got.ciphertexts[0].0,
            hex_preview(&got.ciphertexts[0].1)
        );
        let all_decrypted =
            !got.plaintexts.is_empty() && got.plaintexts.iter().all(|(_, p)| *p == text) && got.failures.is_empty();
        let not_plain = got
            .ciphertexts
            .iter()
            .all(|(_, c)| !c.windows(16.min(text.len())).any(|w| text.windows(w.len()).next() == Some(w)));
        check(
            &format!("{to}: {} device(s) decrypted it, ciphertext differs from plaintext", got.plaintexts.len()),
            all_decrypted && not_plain,
        );
        plaintexts.push(text[..text.len().min(40)].to_vec());
    }

    println!(
        "\n== 4. A stream of {} messages alice -> bob; the leader is killed (SIGKILL) a third of the way in",
        args.messages
    );
    let delivered: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let decrypted_ok = Arc::new(Mutex::new(0usize));
    let total = args.messages;
    let receiver = {
        let delivered = delivered.clone();
        let decrypted_ok = decrypted_ok.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while delivered.lock().unwrap().len() < total && Instant::now() < deadline {
                let Ok(r) = receive_one(&mut beta).await else { continue };
                let expected = format!("stream message {} from alice", r.message_id.trim_start_matches("stream-"));
                if r.plaintexts.len() == 2 && r.plaintexts.iter().all(|(_, p)| p == expected.as_bytes()) {
                    *decrypted_ok.lock().unwrap() += 1;
                }
                *delivered.lock().unwrap().entry(r.message_id.clone()).or_default() += 1;
                if beta.ack(vec![r.seq]).await.is_err() {
                    eprintln!("  ack of {} failed; it will be redelivered", r.seq);
                }
            }
            beta
        })
    };
    let mut acked = BTreeSet::new();
    let (mut killed, mut kill_at, mut first_after_kill) = (None, None, None);
    let mut slowest = Duration::ZERO;
    for i in 0..total {
        if i == total / 3 {
            let l = cluster.wait_for_leader(Duration::from_secs(10)).await?;
            let pid = cluster.kill(l)?;
            println!("  >> killed leader node {l} (pid {pid}) after {i} messages");
            killed = Some(l);
            kill_at = Some(Instant::now());
        }
        let id = format!("stream-{i}");
        let text = format!("stream message {i} from alice");
        let started = Instant::now();
        alpha.send(("handle:alice", 1), "handle:bob", ContentType::Message, &id, text.as_bytes()).await?;
        slowest = slowest.max(started.elapsed());
        if let (Some(at), None) = (kill_at, first_after_kill) {
            first_after_kill = Some(at.elapsed());
        }
        acked.insert(id);
        if (i + 1) % 25 == 0 {
            println!("  sent and acked {}/{total}, delivered {}", i + 1, delivered.lock().unwrap().len());
        }
        if i < 5 {
            plaintexts.push(text.into_bytes());
        }
    }
    let wait_until = Instant::now() + Duration::from_secs(60);
    while delivered.lock().unwrap().len() < acked.len() && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.abort();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let delivered = delivered.lock().unwrap().clone();
    let lost: Vec<&String> = acked.iter().filter(|id| !delivered.contains_key(*id)).collect();
    let duplicates = delivered.values().filter(|n| **n > 1).count();
    let decrypted = *decrypted_ok.lock().unwrap();

    println!("\n== 5. The killed node restarts from its data directory and rejoins");
    if let Some(k) = killed {
        cluster.spawn(k)?;
        let l = cluster.wait_for_leader(Duration::from_secs(20)).await?;
        println!("  node {k} is back; cluster leader: node {l}");
    }

    println!("\n== 6. The router's storage holds ciphertext only");
    let (bytes, hits) = cluster.scan_storage(&plaintexts);
    println!(
        "  scanned {:.1} MiB of storage files (log, snapshots, payloads) on 3 nodes for {} plaintexts: {hits} occurrences",
        bytes as f64 / 1048576.0,
        plaintexts.len()
    );
    check("no plaintext in router storage", hits == 0);

    println!("\n== Report");
    println!("  {:<34} {}", "sent (stream)", total);
    println!("  {:<34} {}", "acked by the router", acked.len());
    println!("  {:<34} {}", "delivered to beta", delivered.len());
    println!("  {:<34} {}", "decrypted on both of bob's devices", decrypted);
    println!("  {:<34} {}", "lost (acked, never delivered)", lost.len());
    println!("  {:<34} {}", "delivered twice to the app", duplicates);
    println!("  {:<34} node {} -> node {}", "leader", killed.map_or(0, |k| k), new_leader);
    println!("  {:<34} {:?}", "failover (kill -> next ack)", first_after_kill.unwrap_or_default());
    println!("  {:<34} {:?}", "slowest send", slowest);
    check("every acked message was delivered (lost = 0)", lost.is_empty());
    check("every delivered message decrypted", decrypted == delivered.len());
    check("no duplicate reached the application", duplicates == 0);
    check("all sends acked", acked.len() == total);
    Ok(ok)
}
