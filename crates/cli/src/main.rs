//! `routerctl`: the operator CLI. Talks to the admin API on the nodes' peer
//! ports with an operator certificate (mTLS).
//!
//! Exit codes: 0 success, 1 the cluster refused or failed the operation,
//! 2 usage error (clap), 3 unavailable, worth retrying: no node could be
//! reached, no leader, or the operation timed out (`UNAVAILABLE` /
//! `DEADLINE_EXCEEDED`); also a local file that cannot be read or written.
//!
//! Commands other than `status` and `snapshot` (which ask every endpoint)
//! go to the leader, found by asking the endpoints in turn, so one node
//! being down does not stop them.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use router_sdk::SdkError;
use router_sdk::admin::AdminConnector;
use router_sdk::v1::admin_client::AdminClient;
use router_sdk::v1::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "routerctl", version, about = "Operate an Interop Router cluster")]
struct Cli {
    /// Peer (admin) endpoint of a node, host:port; repeat for several nodes.
    #[arg(long = "endpoint", short = 'e', env = "ROUTERCTL_ENDPOINTS", value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// CA certificate (PEM).
    #[arg(long, env = "ROUTERCTL_CA")]
    ca: PathBuf,
    /// Operator certificate (PEM, URI SAN spiffe://interop-router/operator/<name>).
    #[arg(long, env = "ROUTERCTL_CERT")]
    cert: PathBuf,
    /// Operator private key (PEM).
    #[arg(long, env = "ROUTERCTL_KEY")]
    key: PathBuf,
    /// Name the node certificates are valid for.
    #[arg(long, env = "ROUTERCTL_SERVER_NAME", default_value = "localhost")]
    server_name: String,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every reachable node's view: role, term, leader, log, commit, applied, health, lag.
    Status,
    /// Cluster membership.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Leadership.
    #[command(subcommand)]
    Leader(LeaderCmd),
    /// Take a snapshot (and compact the log) on every given node.
    Snapshot,
    /// Providers.
    #[command(subcommand)]
    Provider(ProviderCmd),
    /// A user's owner, devices and prekey stock.
    User { user_id: String },
    /// Mailbox depth and oldest-entry age per provider.
    Mailbox {
        #[arg(long)]
        provider: Option<String>,
    },
    /// Write a consistent backup of one node's state to a file.
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Load a backup into a new, empty cluster.
    Restore {
        #[arg(long = "in")]
        input: PathBuf,
    },
    /// Federation peers: other operators' clusters this one exchanges traffic with.
    #[command(subcommand)]
    Peer(PeerCmd),
}

#[derive(Subcommand)]
enum PeerCmd {
    /// Register a peer cluster (or update its endpoints, CA and providers).
    Add {
        /// The peer's cluster id (as in its cluster certificate).
        cluster_id: String,
        /// A federation endpoint of the peer (host:port); repeat for each of its nodes.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// The CA (PEM file) that signs the peer's cluster certificate.
        #[arg(long)]
        ca: PathBuf,
        /// A provider the peer serves; repeat for each.
        #[arg(long = "provider", required = true)]
        providers: Vec<String>,
        /// Entries its outbound queue may hold (default: the cluster's mailbox limit).
        #[arg(long, default_value_t = 0)]
        max_queued: u64,
    },
    /// Stop all traffic with a peer (its queue waits; entries expire with reports).
    Suspend { cluster_id: String },
    /// Resume traffic with a suspended peer.
    Resume { cluster_id: String },
    /// Forget a peer (refused while its outbound queue holds entries).
    Remove { cluster_id: String },
    /// Peers with status, outbound queue and link state (the leader's view).
    List,
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Add a node: as a learner first, promoted to voter once caught up.
    Add {
        #[arg(long)]
        id: u64,
        /// Its peer endpoint (host:port).
        #[arg(long)]
        peer: String,
        /// Its provider endpoint (host:port).
        #[arg(long)]
        provider: String,
        /// Stay a learner (no promotion).
        #[arg(long)]
        learner: bool,
    },
    /// Promote a caught-up learner to voter.
    Promote {
        #[arg(long)]
        id: u64,
    },
    /// Remove a node (voter or learner) from the cluster.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand)]
enum LeaderCmd {
    /// Hand leadership to another voter (default: the most caught-up one).
    Transfer {
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ProviderCmd {
    /// Onboard a provider directly (active at once; for bootstrap and tests).
    Add {
        provider_id: String,
    },
    /// File a provider's request for interoperability (starts the three-month clock).
    Request {
        provider_id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        contact: String,
        /// A host the provider serves media from; repeat for several.
        #[arg(long = "media-host")]
        media_hosts: Vec<String>,
    },
    Approve {
        provider_id: String,
    },
    Activate {
        provider_id: String,
    },
    Suspend {
        provider_id: String,
    },
    Reactivate {
        provider_id: String,
    },
    Revoke {
        provider_id: String,
    },
    /// Every provider with status, request date, DMA deadline and whether it is overdue.
    List,
}

/// An error with the exit code it maps to.
struct Failure {
    code: i32,
    error: anyhow::Error,
}

impl From<SdkError> for Failure {
    fn from(e: SdkError) -> Self {
        let code = match e {
            SdkError::Rejected { .. } => 1,
            SdkError::Unavailable { .. } | SdkError::Config(_) => 3,
        };
        Failure { code, error: e.into() }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        let code = match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => 3,
            _ => 1,
        };
        Failure { code, error: anyhow::anyhow!("{}", router_sdk::error::describe(&s)) }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure { code: 3, error }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(f) = run(cli).await {
        eprintln!("routerctl: {:#}", f.error);
        std::process::exit(f.code);
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let admin = AdminConnector::from_files(&cli.ca, &cli.cert, &cli.key, &cli.server_name)
        .context("load the CA and operator certificate")?;
    let out = cli.output;
    let leader = || async { admin.leader_endpoint(&cli.endpoints).await };
    match cli.command {
        Cmd::Status => {
            let mut rows = Vec::new();
            for e in &cli.endpoints {
                match admin.client(e)?.status(StatusRequest {}).await {
                    Ok(s) => rows.push((e.clone(), Some(s.into_inner()))),
                    Err(status) => {
                        eprintln!("routerctl: {e}: {}", status.message());
                        rows.push((e.clone(), None));
                    }
                }
            }
            print_status(out, &rows);
            if rows.iter().all(|(_, s)| s.is_none()) {
                return Err(Failure { code: 3, error: anyhow::anyhow!("no node answered") });
            }
        }
        Cmd::Member(MemberCmd::Add { id, peer, provider, learner }) => {
            let mut c = admin.client(&leader().await?)?;
            // Incarnation 0: the leader asks the node for its own once it is a member.
            let node = NodeInfo { node_id: id, peer_endpoint: peer, provider_endpoint: provider, incarnation: 0 };
            // Blocks until the learner has caught up with the leader's log.
            c.add_learner(AddLearnerRequest { node: Some(node) }).await?;
            if !learner {
                let voters = voter_ids(&mut c).await?;
                let mut all: Vec<u64> = voters.into_iter().chain([id]).collect();
                all.sort_unstable();
                all.dedup();
                c.change_membership(ChangeMembershipRequest { voter_ids: all, remove_unlisted: false }).await?;
            }
            done(
                out,
                json!({"added": id, "voter": !learner}),
                &format!("node {id} added{}", if learner { " as a learner" } else { " as a voter" }),
            );
        }
        Cmd::Member(MemberCmd::Promote { id }) => {
            let mut c = admin.client(&leader().await?)?;
            let mut all = voter_ids(&mut c).await?;
            all.push(id);
            all.sort_unstable();
            all.dedup();
            c.change_membership(ChangeMembershipRequest { voter_ids: all, remove_unlisted: false }).await?;
            done(out, json!({"promoted": id}), &format!("node {id} is a voter"));
        }
        Cmd::Member(MemberCmd::Remove { id }) => {
            let mut c = admin.client(&leader().await?)?;
            c.remove_member(RemoveMemberRequest { node_id: id }).await?;
            done(out, json!({"removed": id}), &format!("node {id} removed"));
        }
        Cmd::Leader(LeaderCmd::Transfer { to }) => {
            let mut c = admin.client(&leader().await?)?;
            let r = c.transfer_leader(TransferLeaderRequest { to_node_id: to.unwrap_or(0) }).await?.into_inner();
            done(out, json!({"leader": r.new_leader_id}), &format!("node {} now leads", r.new_leader_id));
        }
        Cmd::Snapshot => {
            // Every endpoint is asked, even after one fails; the first failure sets the exit code.
            let mut first_failure = None;
            let mut triggered = Vec::new();
            for e in &cli.endpoints {
                match admin.client(e)?.trigger_snapshot(TriggerSnapshotRequest {}).await {
                    Ok(_) => triggered.push(e.clone()),
                    Err(status) => {
                        eprintln!("routerctl: {e}: {}", router_sdk::error::describe(&status));
                        first_failure.get_or_insert(status);
                    }
                }
            }
            done(out, json!({"snapshot": triggered}), &format!("snapshot triggered on {}", triggered.join(", ")));
            if let Some(status) = first_failure {
                return Err(status.into());
            }
        }
        Cmd::Provider(ProviderCmd::Add { provider_id }) => {
            admin
                .client(&leader().await?)?
                .add_provider(AddProviderRequest { provider_id: provider_id.clone() })
                .await?;
            done(out, json!({"provider": provider_id}), &format!("provider {provider_id} onboarded"));
        }
        Cmd::Provider(ProviderCmd::Request { provider_id, name, contact, media_hosts }) => {
            let req = RequestProviderRequest { provider_id: provider_id.clone(), name, contact, media_hosts };
            admin.client(&leader().await?)?.request_provider(req).await?;
            done(
                out,
                json!({"provider": provider_id, "status": "requested"}),
                &format!("request of provider {provider_id} filed"),
            );
        }
        Cmd::Provider(
            ref cmd @ (ProviderCmd::Approve { ref provider_id }
            | ProviderCmd::Activate { ref provider_id }
            | ProviderCmd::Suspend { ref provider_id }
            | ProviderCmd::Reactivate { ref provider_id }
            | ProviderCmd::Revoke { ref provider_id }),
        ) => {
            let action = match cmd {
                ProviderCmd::Approve { .. } => ProviderAction::Approve,
                ProviderCmd::Activate { .. } => ProviderAction::Activate,
                ProviderCmd::Suspend { .. } => ProviderAction::Suspend,
                ProviderCmd::Reactivate { .. } => ProviderAction::Reactivate,
                _ => ProviderAction::Revoke,
            };
            let req = SetProviderStatusRequest { provider_id: provider_id.clone(), action: action as i32 };
            let r = admin.client(&leader().await?)?.set_provider_status(req).await?.into_inner();
            done(
                out,
                json!({"provider": provider_id, "status": r.status}),
                &format!("provider {provider_id} is {}", r.status),
            );
        }
        Cmd::Provider(ProviderCmd::List) => {
            let r = admin.client(&leader().await?)?.list_providers(ListProvidersRequest {}).await?.into_inner();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"providers": r.providers.iter().map(|p| json!({
                        "provider": p.provider_id, "status": p.status, "name": p.name, "contact": p.contact,
                        "media_hosts": p.media_hosts, "requested_at_ms": p.requested_at_ms,
                        "deadline_ms": p.deadline_ms, "overdue": p.overdue, "activated_at_ms": p.activated_at_ms,
                    })).collect::<Vec<_>>()})
                ),
                Output::Table => {
                    println!(
                        "{:<16} {:<10} {:<24} {:<12} {:<12} {:<8}",
                        "PROVIDER", "STATUS", "NAME", "REQUESTED", "DEADLINE", "OVERDUE"
                    );
                    for p in r.providers {
                        println!(
                            "{:<16} {:<10} {:<24} {:<12} {:<12} {:<8}",
                            p.provider_id,
                            p.status,
                            p.name,
                            date(p.requested_at_ms),
                            date(p.deadline_ms),
                            if p.overdue { "YES" } else { "no" }
                        );
                    }
                }
            }
        }
        Cmd::User { user_id } => {
            let r = admin.client(&leader().await?)?.lookup_user(LookupUserRequest { user_id }).await?.into_inner();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"user": r.user_id, "provider": r.provider_id, "devices": r.devices.iter().map(|d| json!({
                        "device": d.device_id, "registration_id": d.registration_id, "has_keys": d.has_keys,
                        "one_time_prekeys": d.one_time_prekeys, "kyber_one_time_prekeys": d.kyber_one_time_prekeys,
                        "kyber_last_resort": d.has_kyber_last_resort})).collect::<Vec<_>>()})
                ),
                Output::Table => {
                    println!("user {} (provider {})", r.user_id, r.provider_id);
                    println!(
                        "{:<8} {:<10} {:<6} {:>9} {:>9} {:>12}",
                        "DEVICE", "REG_ID", "KEYS", "EC_OTPK", "KYBER_OTPK", "LAST_RESORT"
                    );
                    for d in r.devices {
                        println!(
                            "{:<8} {:<10} {:<6} {:>9} {:>9} {:>12}",
                            d.device_id,
                            d.registration_id,
                            d.has_keys,
                            d.one_time_prekeys,
                            d.kyber_one_time_prekeys,
                            d.has_kyber_last_resort
                        );
                    }
                }
            }
        }
        Cmd::Mailbox { provider } => {
            let r = admin
                .client(&leader().await?)?
                .mailbox_depth(MailboxDepthRequest { provider_id: provider.unwrap_or_default() })
                .await?
                .into_inner();
            match out {
                Output::Json => println!(
                    "{}",
                    Value::Array(r.mailboxes.iter().map(|m| json!({"provider": m.provider_id, "depth": m.depth, "oldest_age_ms": m.oldest_age_ms, "next_seq": m.next_seq})).collect())
                ),
                Output::Table => {
                    println!("{:<20} {:>10} {:>14} {:>10}", "PROVIDER", "DEPTH", "OLDEST_AGE_MS", "NEXT_SEQ");
                    for m in r.mailboxes {
                        println!("{:<20} {:>10} {:>14} {:>10}", m.provider_id, m.depth, m.oldest_age_ms, m.next_seq);
                    }
                }
            }
        }
        Cmd::Backup { out: path } => {
            // The leader serves the latest state (it applies everything committed first).
            let mut stream = admin.client(&leader().await?)?.backup(BackupRequest {}).await?.into_inner();
            // Written as it arrives to a temporary name (mode 0600: it holds
            // the whole directory), fsynced, then renamed: the file at `path`
            // is a complete backup or is not there.
            let tmp = tmp_path_for(&path);
            let mut file = {
                use std::os::unix::fs::OpenOptionsExt as _;
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)
            }
            .with_context(|| format!("create {}", tmp.display()))?;
            let (mut bytes, mut applied, mut max_restore) = (0u64, 0, 0);
            let received: Result<(), Failure> = async {
                use std::io::Write as _;
                while let Some(chunk) = stream.message().await? {
                    if chunk.applied_index != 0 {
                        applied = chunk.applied_index;
                    }
                    if chunk.max_restore_bytes != 0 {
                        max_restore = chunk.max_restore_bytes;
                    }
                    file.write_all(&chunk.data).with_context(|| format!("write {}", tmp.display()))?;
                    bytes += chunk.data.len() as u64;
                }
                file.sync_all().with_context(|| format!("fsync {}", tmp.display()))?;
                std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
                // The rename itself is durable once the directory is synced.
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
                std::fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("fsync {}", parent.display()))?;
                Ok(())
            }
            .await;
            if let Err(e) = received {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            // Still written: a later build may restore it, and it is the only copy.
            let restorable = max_restore == 0 || bytes <= max_restore;
            if !restorable {
                eprintln!(
                    "routerctl: WARNING: this backup is {bytes} bytes, more than the {max_restore} bytes restore accepts \
                     (one Raft entry); it cannot be restored by this build"
                );
            }
            done(
                out,
                json!({"file": path, "bytes": bytes, "applied_index": applied, "restorable": restorable}),
                &format!("backup of log index {applied} written to {} ({bytes} bytes)", path.display()),
            );
        }
        Cmd::Restore { input } => {
            // Sent as it is read, 1 MiB at a time. A read error ends the
            // stream and is reported instead of what the node says about
            // the cut-off backup.
            let file = std::fs::File::open(&input).with_context(|| format!("read {}", input.display()))?;
            let read_error = std::sync::Arc::new(std::sync::Mutex::new(None::<std::io::Error>));
            let seen = read_error.clone();
            let chunks = futures::stream::unfold(Some(file), move |file| {
                let seen = seen.clone();
                async move {
                    use std::io::Read as _;
                    let mut file = file?;
                    let mut data = vec![0u8; 1 << 20];
                    let n = match file.read(&mut data) {
                        Ok(0) => return None,
                        Ok(n) => n,
                        Err(e) => {
                            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return None;
                        }
                    };
                    data.truncate(n);
                    Some((BackupChunk { data: data.into(), ..Default::default() }, Some(file)))
                }
            });
            let answer = admin.client(&leader().await?)?.restore(chunks).await;
            if let Some(e) = read_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(anyhow::Error::new(e).context(format!("read {}", input.display())).into());
            }
            let r = answer?.into_inner();
            done(
                out,
                json!({"users": r.users, "mailbox_entries": r.mailbox_entries}),
                &format!("restored {} users and {} mailbox entries", r.users, r.mailbox_entries),
            );
        }
        Cmd::Peer(PeerCmd::Add { cluster_id, endpoints, ca, providers, max_queued }) => {
            let ca_pem = std::fs::read_to_string(&ca).with_context(|| format!("read {}", ca.display()))?;
            let req = RegisterPeerRequest {
                cluster_id: cluster_id.clone(),
                endpoints,
                ca_pem,
                provider_ids: providers,
                max_queued_entries: max_queued,
            };
            admin.client(&leader().await?)?.register_peer(req).await?;
            done(out, json!({"peer": cluster_id, "registered": true}), &format!("peer {cluster_id} registered"));
        }
        Cmd::Peer(ref cmd @ (PeerCmd::Suspend { ref cluster_id } | PeerCmd::Resume { ref cluster_id })) => {
            let suspended = matches!(cmd, PeerCmd::Suspend { .. });
            let req = SetPeerStatusRequest { cluster_id: cluster_id.clone(), suspended };
            admin.client(&leader().await?)?.set_peer_status(req).await?;
            let status = if suspended { "suspended" } else { "active" };
            done(out, json!({"peer": cluster_id, "status": status}), &format!("peer {cluster_id} is {status}"));
        }
        Cmd::Peer(PeerCmd::Remove { cluster_id }) => {
            admin.client(&leader().await?)?.remove_peer(RemovePeerRequest { cluster_id: cluster_id.clone() }).await?;
            done(out, json!({"peer": cluster_id, "removed": true}), &format!("peer {cluster_id} removed"));
        }
        Cmd::Peer(PeerCmd::List) => {
            // The leader relays, so its view of each link is the one that matters.
            let r = admin.client(&leader().await?)?.list_peers(ListPeersRequest {}).await?.into_inner();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"cluster_id": r.cluster_id, "peers": r.peers.iter().map(|p| json!({
                        "peer": p.cluster_id, "status": p.status, "endpoints": p.endpoints, "providers": p.provider_ids,
                        "queue_depth": p.queue_depth, "oldest_queued_age_ms": p.oldest_queued_age_ms, "link": p.link,
                        "failures": p.failures, "last_error": p.last_error, "registered_at_ms": p.registered_at_ms,
                        "max_queued_entries": p.max_queued_entries,
                    })).collect::<Vec<_>>()})
                ),
                Output::Table => {
                    let me = if r.cluster_id.is_empty() { "(no [federation] section)" } else { r.cluster_id.as_str() };
                    println!("this cluster: {me}");
                    println!(
                        "{:<16} {:<10} {:<11} {:>8} {:>13} {:>8}  {:<24} LAST_ERROR",
                        "PEER", "STATUS", "LINK", "QUEUED", "OLDEST_AGE_MS", "FAILURES", "PROVIDERS"
                    );
                    for p in r.peers {
                        println!(
                            "{:<16} {:<10} {:<11} {:>8} {:>13} {:>8}  {:<24} {}",
                            p.cluster_id,
                            p.status,
                            p.link,
                            p.queue_depth,
                            p.oldest_queued_age_ms,
                            p.failures,
                            p.provider_ids.join(","),
                            p.last_error
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

async fn voter_ids(c: &mut AdminClient<Channel>) -> Result<Vec<u64>, Failure> {
    let s = c.status(StatusRequest {}).await?.into_inner();
    Ok(s.voters.iter().map(|v| v.node_id).collect())
}

/// `<path>.tmp`, beside `path` (so the rename stays on one filesystem).
fn tmp_path_for(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn done(out: Output, value: Value, text: &str) {
    match out {
        Output::Json => println!("{value}"),
        Output::Table => println!("{text}"),
    }
}

fn print_status(out: Output, rows: &[(String, Option<StatusResponse>)]) {
    if out == Output::Json {
        let nodes: Vec<Value> = rows
            .iter()
            .map(|(e, s)| match s {
                None => json!({"endpoint": e, "reachable": false}),
                Some(s) => json!({
                    "endpoint": e, "reachable": true, "node_id": s.node_id, "role": s.role, "term": s.current_term,
                    "leader_id": s.leader_id, "health": s.health, "last_log_index": s.last_log_index,
                    "commit_index": s.committed_index, "applied_index": s.last_applied_index,
                    "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                    "voters": s.voters.iter().map(|v| v.node_id).collect::<Vec<_>>(),
                    "learners": s.learners.iter().map(|v| v.node_id).collect::<Vec<_>>(),
                    "replication_lag": s.replication_lag,
                    "build_version": s.build_version, "format_version": s.format_version,
                    "cluster_version": s.cluster_version, "supported_cluster_version": s.supported_cluster_version,
                }),
            })
            .collect();
        println!("{}", json!({"nodes": nodes}));
        return;
    }
    let health = |s: &StatusResponse| if s.health.is_empty() { "?".to_string() } else { s.health.clone() };
    // Wide enough for the longest reason ("applying: N entries behind", ...).
    let hw = rows.iter().filter_map(|(_, s)| s.as_ref()).map(|s| health(s).len()).max().unwrap_or(0).max(6);
    // RULES: the cluster version the replica applies / the highest this build can.
    let rules = |s: &StatusResponse| match s.supported_cluster_version {
        0 => "-".to_string(),
        supported => format!("{}/{supported}", s.cluster_version),
    };
    println!(
        "{:<22} {:>4} {:<10} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:<16} {:<5} {:<hw$}  MEMBERS",
        "ENDPOINT",
        "NODE",
        "ROLE",
        "TERM",
        "LEADER",
        "LAST_LOG",
        "COMMIT",
        "APPLIED",
        "SNAPSHOT",
        "VERSION",
        "RULES",
        "HEALTH"
    );
    for (e, s) in rows {
        match s {
            None => println!("{e:<22} {:>4} {:<10}", "-", "unreachable"),
            Some(s) => {
                let voters: Vec<String> = s.voters.iter().map(|v| v.node_id.to_string()).collect();
                let learners: Vec<String> = s.learners.iter().map(|v| v.node_id.to_string()).collect();
                println!(
                    "{e:<22} {:>4} {:<10} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:<16} {:<5} {:<hw$}  voters [{}] learners [{}]",
                    s.node_id,
                    s.role,
                    s.current_term,
                    s.leader_id,
                    s.last_log_index,
                    s.committed_index,
                    s.last_applied_index,
                    s.snapshot_index,
                    if s.build_version.is_empty() { "(older)" } else { s.build_version.as_str() },
                    rules(s),
                    health(s),
                    voters.join(","),
                    learners.join(",")
                );
            }
        }
    }
    if let Some(leader) = rows.iter().filter_map(|(_, s)| s.as_ref()).find(|s| s.role == "leader")
        && !leader.replication_lag.is_empty()
    {
        let mut lag: Vec<_> = leader.replication_lag.iter().collect();
        lag.sort();
        let lag: Vec<String> = lag.iter().map(|(id, l)| format!("node {id}: {l}")).collect();
        println!("replication lag (entries behind the leader): {}", lag.join(", "));
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time in milliseconds.
fn date(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{m:02}-{d:02}", yoe + era * 400 + i64::from(m <= 2))
}
