//! Federation, node side: talking to other operators' router clusters.
//!
//! ```text
//!   provider ──Send(to remote user)──> edge ──RelaySend──> log ──> outbound queue "~peer/B"
//!                                                                      │ relay task (leader only, one per peer)
//!   peer B's federation listener <──── Relay(items) over mTLS ────────┘
//!                                ────> per-item answers ──> RelayAcked ──> log
//!   Resolve / FetchBundles of remote users: asked of the peers, answers cached (bounded TTL)
//! ```
//!
//! # What this module owns
//! - [`Federation`]: this cluster's federation identity, the route cache,
//!   one gRPC client per peer (endpoints tried in turn), and each peer's
//!   link state as this node sees it.
//! - [`server`]: the federation listener (TLS with a client verifier that
//!   trusts exactly the CAs of registered, active peers) and the
//!   `Federation` gRPC service other clusters call.
//! - [`relay`]: the per-peer relay tasks with jittered, capped backoff.
//!
//! # What it must not do
//! Decide anything replicated: whether a peer is registered, what is queued
//! and what was delivered are in the Raft state (`router_core::federation`);
//! this module only reads the local replica and proposes commands. A relay
//! repeated after a failover is harmless because the receiving cluster
//! deduplicates by qualified sender and message id.

pub mod edge;
pub mod relay;
mod resolve;
pub mod server;

use crate::config::FederationConfig;
use router_core::{ClusterId, PeerRecord, ProviderId, UserId};
use router_proto::v1::federation_client::FederationClient;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use tonic::{Code, Status};

/// Resolutions remembered at most (oldest dropped first beyond this).
const MAX_CACHED_ROUTES: usize = 100_000;

/// What asking the peers about a user gave: where it lives, `None` when no
/// peer serves it, or why not every peer could be asked.
type Resolution = Result<Option<RemoteRoute>, Status>;

/// Held by the one caller asking the peers about `user`; ends its turn.
pub(crate) struct Asking<'a> {
    fed: &'a Federation,
    user: &'a UserId,
    /// Its own entry: only that one is removed, never a later asker's.
    answer: tokio::sync::watch::Receiver<Option<Resolution>>,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut resolving = self.fed.resolving.lock().expect("resolving lock");
        if resolving.get(self.user).is_some_and(|entry| entry.same_channel(&self.answer)) {
            resolving.remove(self.user);
        }
    }
}

/// A user served by a peer, as the peer resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRoute {
    pub peer: ClusterId,
    /// The owning provider, as the peer names it.
    pub provider: ProviderId,
    /// (device id, registration id), ascending.
    pub devices: Vec<(u32, u32)>,
}

/// A peer link as this node last saw it.
#[derive(Clone, Debug, Default)]
pub struct LinkState {
    /// None until the first attempt.
    pub up: Option<bool>,
    pub failures: u32,
    pub last_error: String,
}

/// One peer's client: a lazily connected channel per endpoint, rebuilt when
/// the peer's registration (endpoints, CA) changes.
struct PeerClient {
    registration: (Vec<String>, String),
    channels: Vec<(String, Channel)>,
    /// Index of the endpoint that answered last: tried first next time.
    preferred: usize,
}

pub struct Federation {
    pub cfg: FederationConfig,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    routes: Mutex<HashMap<UserId, (Instant, RemoteRoute)>>,
    /// Resolutions being asked of the peers right now, by user: a caller
    /// that finds one waits for that answer instead of asking again (a
    /// `SendBatch` or a burst of sends to one user not yet cached).
    resolving: Mutex<HashMap<UserId, tokio::sync::watch::Receiver<Option<Resolution>>>>,
    clients: Mutex<HashMap<ClusterId, PeerClient>>,
    links: Mutex<BTreeMap<ClusterId, LinkState>>,
    /// Per peer: woken when the peer calls us, so a relay task in backoff
    /// tries again at once (the peer is back).
    wakeups: Mutex<HashMap<ClusterId, Arc<Notify>>>,
}

impl Federation {
    pub fn load(cfg: FederationConfig) -> anyhow::Result<Federation> {
        use anyhow::Context;
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        Ok(Federation {
            cert_pem: read(&cfg.cert)?,
            key_pem: read(&cfg.key)?,
            cfg,
            routes: Mutex::new(HashMap::new()),
            resolving: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            links: Mutex::new(BTreeMap::new()),
            wakeups: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn wakeup(&self, peer: &ClusterId) -> Arc<Notify> {
        self.wakeups.lock().expect("wakeups lock").entry(peer.clone()).or_default().clone()
    }

    /// `peer` just called this node: it is reachable.
    pub(crate) fn peer_seen(&self, peer: &ClusterId) {
        if self.link(peer).up == Some(false) {
            self.wakeup(peer).notify_one();
        }
    }

    pub fn cluster_id(&self) -> &ClusterId {
        &self.cfg.cluster_id
    }

    pub fn link(&self, peer: &ClusterId) -> LinkState {
        self.links.lock().expect("links lock").get(peer).cloned().unwrap_or_default()
    }

    pub(crate) fn record_link(&self, peer: &ClusterId, result: Result<(), String>) {
        let mut links = self.links.lock().expect("links lock");
        let link = links.entry(peer.clone()).or_default();
        match result {
            Ok(()) => {
                link.up = Some(true);
                link.failures = 0;
            }
            Err(e) => {
                link.up = Some(false);
                link.failures = link.failures.saturating_add(1);
                link.last_error = e;
            }
        }
    }

    /// Channels for `peer`'s endpoints, in the order to try them.
    fn channels(&self, peer: &PeerRecord) -> Result<Vec<(usize, String, Channel)>, Status> {
        let mut clients = self.clients.lock().expect("clients lock");
        let registration = (peer.endpoints.clone(), peer.ca_pem.clone());
        let stale = clients.get(&peer.id).is_none_or(|c| c.registration != registration);
        if stale {
            let mut channels = Vec::new();
            for ep in &peer.endpoints {
                channels.push((ep.clone(), self.channel(ep, &peer.ca_pem)?));
            }
            clients.insert(peer.id.clone(), PeerClient { registration, channels, preferred: 0 });
        }
        let c = clients.get(&peer.id).expect("inserted above");
        let n = c.channels.len();
        Ok((0..n)
            .map(|k| {
                let i = (c.preferred + k) % n;
                (i, c.channels[i].0.clone(), c.channels[i].1.clone())
            })
            .collect())
    }

    fn channel(&self, endpoint: &str, ca_pem: &str) -> Result<Channel, Status> {
        let host = endpoint_host(endpoint);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(host);
        Ok(Endpoint::from_shared(format!("https://{endpoint}"))
            .map_err(|e| Status::invalid_argument(format!("peer endpoint {endpoint}: {e}")))?
            .tls_config(tls)
            .map_err(|e| Status::internal(format!("TLS for peer endpoint {endpoint}: {e}")))?
            .connect_timeout(self.cfg.request_timeout)
            .timeout(self.cfg.request_timeout)
            .tcp_nodelay(true)
            .connect_lazy())
    }

    /// Calls `peer`, trying its endpoints in turn (the one that answered
    /// last first) until one answers. Statuses that say the peer reached a
    /// decision (not found, refused, ...) are returned at once; only
    /// transport-level failures move on to the next endpoint.
    pub async fn call<R, F, Fut>(&self, peer: &PeerRecord, f: F) -> Result<R, Status>
    where
        F: Fn(FederationClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let mut last = Status::unavailable(format!("federation peer {} has no endpoints", peer.id));
        for (index, endpoint, channel) in self.channels(peer)? {
            let client = FederationClient::new(channel).max_decoding_message_size(RELAY_MESSAGE_BYTES);
            match f(client).await {
                Ok(resp) => {
                    if let Some(c) = self.clients.lock().expect("clients lock").get_mut(&peer.id) {
                        c.preferred = index;
                    }
                    return Ok(resp.into_inner());
                }
                Err(s) if is_transport(&s) => {
                    last = Status::unavailable(format!("federation peer {} at {endpoint}: {}", peer.id, s.message()));
                }
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }

    fn remember(&self, user: &UserId, route: &RemoteRoute) {
        let mut routes = self.routes.lock().expect("routes lock");
        if routes.len() >= MAX_CACHED_ROUTES {
            let ttl = self.cfg.route_cache_ttl;
            routes.retain(|_, (at, _)| at.elapsed() < ttl);
            if routes.len() >= MAX_CACHED_ROUTES {
                routes.clear();
            }
        }
        routes.insert(user.clone(), (Instant::now(), route.clone()));
    }

    /// Forgets a resolution (its device list turned out stale).
    pub fn forget(&self, user: &UserId) {
        self.routes.lock().expect("routes lock").remove(user);
    }
}

/// Resolves once the node starts shutting down (a future that is `Send`,
/// unlike holding `wait_for`'s guard inside `select!`).
pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Largest federation message either way; the relay task sizes its batches
/// to half of it (at least one item always goes). Stored on the receiving
/// side in commands of at most 4 MiB, well under the Raft message limit.
pub const RELAY_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The host part of `host:port` (brackets of an IPv6 literal removed), the
/// name the peer's certificate must be valid for.
fn endpoint_host(endpoint: &str) -> String {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']').to_string()
}

/// The call did not reach a decision on the peer (connection refused,
/// reset, timed out): another endpoint may do better.
fn is_transport(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled)
}

/// Jittered exponential backoff: 100 ms doubling per failure, capped at
/// `max`, a random point in its upper half (so peers that failed together do
/// not retry together). The first success resets it (`failures` = 0).
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << failures.min(20)).min(max);
    let half = base / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts() {
        assert_eq!(endpoint_host("127.0.0.1:7414"), "127.0.0.1");
        assert_eq!(endpoint_host("router-0.hub.example:7414"), "router-0.hub.example");
        assert_eq!(endpoint_host("[::1]:7414"), "::1");
    }

    #[test]
    fn backoff_grows_jittered_and_is_capped() {
        let max = Duration::from_secs(60);
        for failures in 0..40 {
            let b = backoff(failures, max);
            let base = Duration::from_millis(100).saturating_mul(1u32 << failures.min(20)).min(max);
            assert!(b >= base / 2 && b <= base, "failures {failures}: {b:?} outside [{:?}, {base:?}]", base / 2);
        }
        assert!(backoff(30, max) <= max, "never beyond the cap: no multi-day cliff");
    }
}
