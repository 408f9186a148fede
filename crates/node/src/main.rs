//! `routerd`: run a node from a config file, or `routerd dev` for a local
//! three-node cluster with generated certificates.

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use router_node::dev::{LocalCluster, LocalClusterSpec, fixed_addrs, write_layout_federated};
use router_node::{Config, Listeners, Node, install_crypto_provider, telemetry};
use std::path::PathBuf;
use std::time::Duration;

/// EX_USAGE: the configuration is invalid.
const EXIT_CONFIG: i32 = 64;
/// The node failed closed (its Raft core stopped on a storage error): sysexits' EX_IOERR.
const EXIT_FAILED: i32 = 74;

#[derive(Parser)]
#[command(name = "routerd", version, about = "Interop Router node")]
struct Cli {
    /// Path of routerd.toml.
    #[arg(long, env = "ROUTERD_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides node_id from the file.
    #[arg(long, env = "ROUTERD_NODE_ID")]
    node_id: Option<u64>,
    /// Overrides data_dir from the file.
    #[arg(long, env = "ROUTERD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// StatefulSet pod ordinal: node_id = index + 1 (unless --node-id is given).
    #[arg(long, env = "ROUTERD_POD_INDEX")]
    pod_index: Option<u64>,
    /// Overrides [advertise] peer.
    #[arg(long, env = "ROUTERD_ADVERTISE_PEER")]
    advertise_peer: Option<String>,
    /// Overrides [advertise] provider.
    #[arg(long, env = "ROUTERD_ADVERTISE_PROVIDER")]
    advertise_provider: Option<String>,
    /// Override [tls] ca / cert / key.
    #[arg(long, env = "ROUTERD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[arg(long, env = "ROUTERD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "ROUTERD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Seconds to drain on SIGTERM (match terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 20)]
    grace_seconds: u64,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Local 3-node cluster on 127.0.0.1 with a dev CA and certificates for providers alpha and beta.
    Dev {
        #[arg(long, default_value = ".dev-cluster")]
        dir: PathBuf,
        #[arg(long, default_value_t = 7400)]
        base_port: u16,
    },
    /// GETs an http:// URL (e.g. the admin /readyz) and exits 0 on HTTP 200:
    /// a health check for images without a shell or curl.
    Probe {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Writes a dev CA, certificates and one routerd-<id>.toml per node into --dir,
    /// for running each node as its own process (`routerd --config <dir>/routerd-1.toml`).
    InitDev {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value_t = 7400)]
        base_port: u16,
        /// Providers to certify and onboard at bootstrap.
        #[arg(long, value_delimiter = ',', default_value = "alpha,beta")]
        providers: Vec<String>,
        /// Also a `[federation]` section under this cluster id: a cluster
        /// certificate (certs/cluster.pem) and node i's federation listener
        /// on base-port + 10 i + 4.
        #[arg(long)]
        federation_id: Option<String>,
    },
}

/// The flags (ids as clap derives them) that configure a node run from
/// `--config`; no subcommand reads them.
const NODE_FLAGS: [&str; 10] = [
    "config",
    "node_id",
    "data_dir",
    "pod_index",
    "advertise_peer",
    "advertise_provider",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "grace_seconds",
];

/// A node flag given on the command line with a subcommand would be silently
/// ignored (`routerd --data-dir X dev` would write `./.dev-cluster`): refused
/// instead. Values from the environment (`ROUTERD_*`, set in containers) are
/// not refused: `routerd probe` runs as a health check beside them.
fn refuse_node_flags_for_subcommands(matches: &clap::ArgMatches) {
    let Some(sub) = matches.subcommand_name() else { return };
    let given: Vec<String> = NODE_FLAGS
        .iter()
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if !given.is_empty() {
        eprintln!(
            "routerd: {} configure{} a node run from --config, and `routerd {sub}` does not use {}; \
             see `routerd {sub} --help` for its own flags",
            given.join(", "),
            if given.len() == 1 { "s" } else { "" },
            if given.len() == 1 { "it" } else { "them" },
        );
        std::process::exit(EXIT_CONFIG);
    }
}

/// Default log filter when RUST_LOG is unset.
const LOG_FILTER: &str = "info,openraft=error";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    install_crypto_provider();
    // A panic anywhere (e.g. in apply) must take the process down rather than
    // leave a half-working replica; the supervisor restarts it from disk.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    refuse_node_flags_for_subcommands(&matches);
    match cli.command {
        Some(Cmd::Dev { dir, base_port }) => {
            let _telemetry = telemetry::init(&Default::default(), LOG_FILTER)?;
            return run_dev(dir, base_port).await;
        }
        Some(Cmd::InitDev { dir, nodes, base_port, providers, federation_id }) => {
            let providers: Vec<&str> = providers.iter().map(String::as_str).collect();
            let federation_addrs: Vec<std::net::SocketAddr> = match federation_id {
                Some(_) => (1..=nodes as u16).map(|i| ([127, 0, 0, 1], base_port + 10 * i + 4).into()).collect(),
                None => Vec::new(),
            };
            let spec = LocalClusterSpec { federation: federation_id, ..LocalClusterSpec::new(&dir, nodes, &providers) };
            write_layout_federated(&spec, &fixed_addrs(base_port, nodes), &federation_addrs)?;
            println!("wrote certificates and routerd-1..{nodes}.toml to {}", dir.display());
            return Ok(());
        }
        Some(Cmd::Probe { url, timeout_ms }) => {
            let code = router_node::probe::probe(&url, std::time::Duration::from_millis(timeout_ms)).await;
            std::process::exit(code);
        }
        None => {}
    }
    let Some(path) = cli.config else {
        eprintln!("routerd: --config (or ROUTERD_CONFIG) is required; `routerd dev` starts a local cluster");
        std::process::exit(EXIT_CONFIG);
    };
    let overrides = router_node::config::Overrides {
        node_id: cli.node_id,
        pod_index: cli.pod_index,
        data_dir: cli.data_dir,
        advertise_peer: cli.advertise_peer,
        advertise_provider: cli.advertise_provider,
        tls_ca: cli.tls_ca,
        tls_cert: cli.tls_cert,
        tls_key: cli.tls_key,
    };
    let cfg = match Config::load(&path).and_then(|c| c.with_overrides(overrides)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("routerd: invalid configuration: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let telemetry = telemetry::init(&cfg.telemetry, LOG_FILTER)?;
    router_node::mutation::install()?;
    let listeners = Listeners::bind(&cfg).await?;
    let node = Node::start(cfg, listeners).await.context("start node")?;
    tokio::select! {
        () = wait_for_signal() => {}
        reason = node.failed() => {
            tracing::error!("exiting: this node failed closed ({reason})");
            node.crash().await;
            telemetry.flush();
            std::process::exit(EXIT_FAILED);
        }
    }
    tracing::info!("shutting down");
    node.shutdown(Duration::from_secs(cli.grace_seconds)).await;
    telemetry.flush();
    Ok(())
}

async fn run_dev(dir: PathBuf, base_port: u16) -> anyhow::Result<()> {
    let spec = LocalClusterSpec { base_port: Some(base_port), ..LocalClusterSpec::new(&dir, 3, &["alpha", "beta"]) };
    let cluster = LocalCluster::start(spec).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    println!("\nInterop Router dev cluster is up (leader: node {leader}). Data and certificates: {}", dir.display());
    println!("{:<6} {:<22} {:<22} {:<22}", "node", "provider (gRPC)", "peer/admin (gRPC)", "admin (HTTP)");
    for n in &cluster.nodes {
        println!("{:<6} {:<22} {:<22} http://{}", n.id, n.provider_addr, n.peer_addr, n.admin_addr);
    }
    println!("\nCA: {}", cluster.ca.display());
    for (p, c) in &cluster.provider_certs {
        println!("provider {p}: cert {} key {}", c.cert.display(), c.key.display());
    }
    println!(
        "operator:       cert {} key {}",
        cluster.operator_cert.cert.display(),
        cluster.operator_cert.key.display()
    );
    let a = &cluster.provider_certs["alpha"];
    println!(
        "\nTry: grpcurl -cacert {} -cert {} -key {} -d '{{\"user_id\":\"handle:alice\"}}' {} interop_router.v1.Directory/RegisterUser",
        cluster.ca.display(),
        a.cert.display(),
        a.key.display(),
        cluster.nodes[0].provider_addr
    );
    println!("Ctrl-C stops the cluster.");
    wait_for_signal().await;
    cluster.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
