//! The federation listener and the `Federation` service peers call.
//!
//! TLS is terminated here (tokio-rustls), not by tonic: the set of trusted
//! client CAs is the set of registered, active peers, which changes at run
//! time with the replicated state. [`PeerCaVerifier`] accepts a client chain
//! that one of those CAs signed; each call then checks that the chain's
//! cluster identity (URI SAN `spiffe://interop-router/cluster/<id>`) is a
//! registered peer *and* that it is that peer's CA which signed it, so one
//! peer cannot speak for another.

use super::Federation;
use crate::config::MAX_RELAY_BATCH;
use crate::ctx::Ctx;
use crate::grpc::{status, validate};
use crate::identity::{Identity, check_provider_id, identity_from_der};
use router_core::federation::{RelayedItem, RelayedKind, UndeliverableReason, qualified};
use router_core::{ClusterId, Command, Outcome, PeerRecord, PeerStatus, ProviderId, Rejection, State};
use router_proto::v1;
use router_proto::v1::federation_server::{Federation as FederationApi, FederationServer};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// Longest `Refusal.detail` passed on (a peer's text is not trusted to be short).
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Recipients of one relayed group message (the home cluster's group size
/// limit may be larger than ours; this only bounds the work per item).
const MAX_GROUP_RECIPIENTS: usize = 100_000;

/// Trusts client certificates signed by the CA of a registered peer.
#[derive(Debug)]
pub struct PeerCaVerifier {
    state: Arc<RwLock<State>>,
    provider: Arc<CryptoProvider>,
    /// One webpki verifier per registered CA (PEM text), built on first use.
    by_ca: Mutex<HashMap<String, Arc<dyn ClientCertVerifier>>>,
}

impl PeerCaVerifier {
    fn new(state: Arc<RwLock<State>>, provider: Arc<CryptoProvider>) -> Self {
        PeerCaVerifier { state, provider, by_ca: Mutex::new(HashMap::new()) }
    }

    fn for_ca(&self, ca_pem: &str) -> Result<Arc<dyn ClientCertVerifier>, String> {
        if let Some(v) = self.by_ca.lock().expect("verifier lock").get(ca_pem) {
            return Ok(v.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("CA PEM: {e}"))?;
            roots.add(cert).map_err(|e| format!("CA certificate: {e}"))?;
        }
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| format!("CA: {e}"))?;
        let mut by_ca = self.by_ca.lock().expect("verifier lock");
        // Registrations change rarely; drop everything rather than track which CA went away.
        if by_ca.len() > 256 {
            by_ca.clear();
        }
        by_ca.insert(ca_pem.to_string(), v.clone());
        Ok(v)
    }

    /// Checks `chain` (leaf first) against `peer`'s registered CA.
    pub fn verify_for(&self, peer: &PeerRecord, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or("empty certificate chain")?;
        let v = self.for_ca(&peer.ca_pem)?;
        v.verify_client_cert(leaf, intermediates, UnixTime::now()).map(drop).map_err(|e| e.to_string())
    }
}

impl ClientCertVerifier for PeerCaVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let cas: Vec<String> = {
            let state = self.state.read().expect("state lock poisoned");
            // Suspended peers too: their calls are refused with a precise
            // status (PEER_SUSPENDED) rather than a failed handshake.
            state.peers().map(|p| p.ca_pem.clone()).collect()
        };
        for ca in cas {
            let Ok(v) = self.for_ca(&ca) else { continue };
            if v.verify_client_cert(end_entity, intermediates, now).is_ok() {
                return Ok(ClientCertVerified::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Serves the `Federation` service on `listener` until shutdown.
pub fn spawn(
    ctx: &Ctx,
    fed: Arc<Federation>,
    listener: TcpListener,
    connections: crate::config::ConnectionsConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    use anyhow::Context;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PeerCaVerifier::new(ctx.state.clone(), provider.clone()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&fed.cert_pem)
        .collect::<Result<_, _>>()
        .context("federation certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(&fed.key_pem).context("federation key PEM")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(certs, key)
        .context("federation certificate and key")?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let service = FederationService { ctx: ctx.clone(), fed, verifier };
    let server = crate::accept::bounded_server(connections.max_concurrent_streams)
        .trace_fn(crate::telemetry::server_span(ctx.node_id))
        .layer(crate::metrics::GrpcMetricsLayer(ctx.metrics.clone()))
        .add_service(
            FederationServer::new(service)
                .max_decoding_message_size(super::RELAY_MESSAGE_BYTES)
                .max_encoding_message_size(super::RELAY_MESSAGE_BYTES),
        );
    let incoming = crate::accept::tls_incoming(
        listener,
        acceptor,
        connections.limits.clone(),
        "federation",
        ctx.metrics.clone(),
        shutdown.clone(),
    );
    Ok(crate::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!("failed to serve federation API: {e:#}");
        }
    }))
}

pub struct FederationService {
    ctx: Ctx,
    fed: Arc<Federation>,
    verifier: Arc<PeerCaVerifier>,
}

/// Bytes of relayed items stored by one `AcceptRelayed` command.
const ACCEPT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

impl FederationService {
    /// Stores `chunk` (one command) and appends one result per item it
    /// answered. False when the state machine stopped at a transient refusal:
    /// nothing after it may be stored now, or it would overtake.
    async fn accept_chunk(
        &self,
        peer: &PeerRecord,
        chunk: &mut Vec<RelayedItem>,
        chunk_bytes: &mut usize,
        results: &mut Vec<v1::RelayResult>,
    ) -> Result<bool, Status> {
        use v1::relay_result::Result as R;
        if chunk.is_empty() {
            return Ok(true);
        }
        let items = std::mem::take(chunk);
        *chunk_bytes = 0;
        let seqs: Vec<u64> = items.iter().map(|i| i.queue_seq).collect();
        let answered = match self.ctx.write(Command::AcceptRelayed { origin: peer.id.clone(), items }).await? {
            Outcome::Relayed { results } => results,
            other => return Err(status::unexpected(&other)),
        };
        let complete = answered.len() == seqs.len();
        for (queue_seq, outcome) in seqs.into_iter().zip(answered) {
            let result = match outcome {
                Outcome::Sent { seq, .. } => R::StoredSeq(seq),
                Outcome::Done => R::ReportDelivered(true),
                Outcome::Rejected(r) => {
                    let refusal =
                        v1::Refusal { reason: r.reason().into(), detail: status::rejection(&r).message().into() };
                    if r.is_transient() { R::RetryLater(refusal) } else { R::Refused(refusal) }
                }
                other => return Err(status::unexpected(&other)),
            };
            results.push(v1::RelayResult { queue_seq, result: Some(result) });
        }
        Ok(complete)
    }

    /// The calling peer: registered, active, and its certificate signed by
    /// the CA registered for it.
    fn peer_of<T>(&self, req: &Request<T>) -> Result<PeerRecord, Status> {
        self.ctx.require_member()?;
        let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        let cluster = match identity_from_der(leaf.as_ref()) {
            Some(Identity::Cluster(c)) => c,
            Some(other) => return Err(status::permission_denied(format!("{} is not a cluster identity", other.uri()))),
            None => return Err(Status::unauthenticated("client certificate carries no cluster identity")),
        };
        let peer = self.ctx.read(|s| s.peer(&cluster).cloned());
        let peer = match peer {
            None => return Err(status::rejection(&Rejection::UnknownPeer { peer: cluster })),
            Some(p) if p.status == PeerStatus::Suspended => {
                return Err(status::rejection(&Rejection::PeerSuspended { peer: cluster }));
            }
            Some(p) => p,
        };
        self.verifier.verify_for(&peer, &certs).map_err(|e| {
            status::permission_denied(format!(
                "the certificate for cluster {cluster} is not signed by the CA registered for it: {e}"
            ))
        })?;
        // It answered: a relay task backing off towards it may try now.
        self.fed.peer_seen(&peer.id);
        Ok(peer)
    }
}

#[tonic::async_trait]
impl FederationApi for FederationService {
    async fn resolve(
        &self,
        req: Request<v1::FederationResolveRequest>,
    ) -> Result<Response<v1::ResolveResponse>, Status> {
        self.peer_of(&req)?;
        let user = validate::user_id("user_id", &req.get_ref().user_id, &self.ctx.limits)?;
        let found = self
            .ctx
            .read_settled(
                |s| {
                    let rec = s.user(&user)?;
                    // Users of a suspended or revoked provider are not reachable.
                    s.is_onboarded(&rec.provider).then(|| v1::ResolveResponse {
                        user_id: user.0.clone(),
                        provider_id: rec.provider.0.clone(),
                        devices: rec
                            .devices
                            .iter()
                            .map(|(d, r)| v1::Device { device_id: *d, registration_id: r.registration_id })
                            .collect(),
                    })
                },
                Option::is_some,
            )
            .await;
        found.map(Response::new).ok_or_else(|| status::rejection(&Rejection::UserNotFound { user }))
    }

    async fn fetch_bundles(
        &self,
        req: Request<v1::FederationFetchBundlesRequest>,
    ) -> Result<Response<v1::FetchBundlesResponse>, Status> {
        let peer = self.peer_of(&req)?;
        let r = req.get_ref();
        check_provider_id(&r.requester_provider_id)
            .map_err(|e| status::invalid_field("requester_provider_id", "INVALID", e))?;
        let requester = qualified(&ProviderId::new(&r.requester_provider_id), &peer.id);
        let user = validate::user_id("user_id", &r.user_id, &self.ctx.limits)?;
        let device = match r.device_id {
            0 => None,
            d => Some(validate::device_id("device_id", d)?),
        };
        // The same linearizable claim a local provider makes.
        match self.ctx.write(Command::ClaimPrekeys { requester, user: user.clone(), device }).await? {
            Outcome::Bundles { provider, bundles } => Ok(Response::new(v1::FetchBundlesResponse {
                user_id: user.0,
                provider_id: provider.0,
                bundles: bundles.iter().map(crate::grpc::wire::bundle).collect(),
            })),
            other => Err(status::unexpected(&other)),
        }
    }

    async fn send_group(
        &self,
        req: Request<v1::FederationSendGroupRequest>,
    ) -> Result<Response<v1::SendGroupResponse>, Status> {
        let peer = self.peer_of(&req)?;
        let r = req.into_inner();
        let sender = provider_id("sender_provider_id", &r.sender_provider_id)?;
        let send = r.send.ok_or_else(|| status::invalid_field("send", "EMPTY", "the group send is missing"))?;
        let mut send = validate::group_send(sender, send, &self.ctx.limits)?;
        if send.group.0.contains('@') {
            return Err(status::invalid_field("send.group_id", "INVALID", "name the group as its home cluster does"));
        }
        send.traceparent = crate::telemetry::current_traceparent();
        match self.ctx.write(Command::SendGroupFromPeer { origin: peer.id, send }).await? {
            Outcome::GroupSent { group_seq, epoch, accepted_at_ms } => {
                Ok(Response::new(v1::SendGroupResponse { group_seq, epoch, accepted_at_ms }))
            }
            other => Err(status::unexpected(&other)),
        }
    }

    async fn relay(&self, req: Request<v1::RelayRequest>) -> Result<Response<v1::RelayResponse>, Status> {
        let peer = self.peer_of(&req)?;
        let raw = req.into_inner().items;
        if raw.is_empty() {
            return Err(status::invalid_field("items", "EMPTY", "at least one item is required"));
        }
        if raw.len() > MAX_RELAY_BATCH {
            return Err(status::over_limit("items", MAX_RELAY_BATCH as u64, raw.len() as u64));
        }
        // Item by item, in order: a malformed item (or one this cluster's
        // limits refuse) is refused on its own, not the whole call, so it
        // cannot block the peer's queue. Valid runs are stored in chunks of
        // at most ACCEPT_CHUNK_BYTES, each one command: a Raft entry must stay
        // far below the node-to-node message limit.
        use v1::relay_result::Result as R;
        let mut results = Vec::with_capacity(raw.len());
        let mut chunk: Vec<RelayedItem> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut raw = raw.into_iter().enumerate().peekable();
        while let Some((i, item)) = raw.next() {
            let size = prost::Message::encoded_len(&item);
            let queue_seq = item.queue_seq;
            match relayed_item(item, &self.ctx.limits, &peer.id, self.fed.cluster_id()) {
                Ok(valid) => {
                    chunk_bytes += size;
                    chunk.push(valid);
                }
                Err(s) => {
                    // What was valid before it goes first, to keep the order.
                    if !self.accept_chunk(&peer, &mut chunk, &mut chunk_bytes, &mut results).await? {
                        break;
                    }
                    let detail = prefix(&format!("items[{i}]"), s).message().to_string();
                    let refusal = v1::Refusal { reason: "INVALID_ITEM".into(), detail };
                    results.push(v1::RelayResult { queue_seq, result: Some(R::Refused(refusal)) });
                    continue;
                }
            }
            let last = raw.peek().is_none();
            if (chunk_bytes >= ACCEPT_CHUNK_BYTES || last)
                && !self.accept_chunk(&peer, &mut chunk, &mut chunk_bytes, &mut results).await?
            {
                break;
            }
        }
        Ok(Response::new(v1::RelayResponse { results }))
    }
}

/// A group message relayed by its home cluster `origin`, renamed as this
/// cluster names things: the group `g@origin`, a provider of `origin`
/// `p@origin`, one of ours (`p@<own>` there) plain `p`, one of a third
/// cluster kept as qualified.
fn group_delivery(
    g: v1::GroupMessage,
    traceparent: &str,
    limits: &crate::config::EdgeLimits,
    origin: &ClusterId,
    own: &ClusterId,
) -> Result<router_core::GroupDelivery, Status> {
    let group = validate::group_id(&g.group_id)?;
    if group.0.contains('@') {
        return Err(status::invalid_field(
            "group.group_id",
            "INVALID",
            "the home cluster names its groups without '@'",
        ));
    }
    let sender = match g.sender_provider_id.split_once('@') {
        None => qualified(&provider_id("group.sender_provider_id", &g.sender_provider_id)?, origin),
        Some((p, c)) => {
            let p = provider_id("group.sender_provider_id", p)?;
            check_provider_id(c).map_err(|e| status::invalid_field("group.sender_provider_id", "INVALID", e))?;
            if c == own.as_str() { p } else { qualified(&p, &ClusterId::new(c)) }
        }
    };
    let content_type = validate::content_type(g.content_type)?;
    if g.ciphertext.is_empty() {
        return Err(status::invalid_field("group.ciphertext", "EMPTY", "ciphertext is empty"));
    }
    let mut per_device = Vec::with_capacity(g.per_device.len());
    let mut total = g.ciphertext.len();
    for (i, p) in g.per_device.into_iter().enumerate() {
        let user = validate::user_id(&format!("group.per_device[{i}].user_id"), &p.user_id, limits)?;
        let part =
            p.part.ok_or_else(|| status::invalid_field(format!("group.per_device[{i}].part"), "EMPTY", "no part"))?;
        total += part.ciphertext.len();
        let mut parts = validate::parts(vec![part], limits)?;
        per_device.push((user, parts.remove(0)));
    }
    if total > limits.max_envelope_bytes {
        return Err(status::over_limit("group.ciphertext", limits.max_envelope_bytes as u64, total as u64));
    }
    if g.recipient_user_ids.is_empty() || g.recipient_user_ids.len() > MAX_GROUP_RECIPIENTS {
        return Err(status::invalid_field(
            "group.recipient_user_ids",
            "OUT_OF_RANGE",
            format!("1..={MAX_GROUP_RECIPIENTS} recipients"),
        ));
    }
    let recipients = g
        .recipient_user_ids
        .iter()
        .enumerate()
        .map(|(i, u)| validate::user_id(&format!("group.recipient_user_ids[{i}]"), u, limits))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(router_core::GroupDelivery {
        group: router_core::federation::qualified_group(&group, origin),
        group_seq: g.group_seq,
        epoch: g.epoch,
        sender,
        sender_user: validate::user_id("group.sender_user_id", &g.sender_user_id, limits)?,
        sender_device: validate::device_id("group.sender_device_id", g.sender_device_id)?,
        message_id: validate::message_id(&g.message_id, limits)?,
        content_type,
        recipients,
        ciphertext: g.ciphertext.into(),
        per_device,
        traceparent: (!traceparent.is_empty() && traceparent.len() <= 128).then(|| traceparent.to_string()),
    })
}

/// `s` cut to at most `max` bytes (at a character boundary).
pub fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(cut);
    }
    s
}

/// Names the item a field error is about.
fn prefix(item: &str, s: Status) -> Status {
    Status::with_details(s.code(), format!("{item}: {}", s.message()), s.details().to_vec().into())
}

fn provider_id(field: &str, s: &str) -> Result<ProviderId, Status> {
    check_provider_id(s).map_err(|e| status::invalid_field(field, "INVALID", e))?;
    Ok(ProviderId::new(s))
}

/// A relayed item as the state machine takes it, checked like a send from a
/// local provider (sizes, ids, device parts).
fn relayed_item(
    item: v1::RelayedItem,
    limits: &crate::config::EdgeLimits,
    origin: &ClusterId,
    own: &ClusterId,
) -> Result<RelayedItem, Status> {
    // The peer's limits may differ from ours: clamp rather than refuse.
    let max_ttl_ms = u64::from(limits.max_ttl_seconds) * 1000;
    let ttl_left_ms = item.ttl_left_ms.clamp(1, max_ttl_ms.max(1));
    let kind = match item.kind {
        Some(v1::relayed_item::Kind::Envelope(e)) => {
            // Checked like a local provider's send (ids, sizes, parts); the
            // TTL is what was left at the sender, clamped above.
            let sender = provider_id("envelope.sender_provider_id", &e.sender_provider_id)?;
            let request = v1::SendRequest {
                message_id: e.message_id,
                recipient_user_id: e.recipient_user_id,
                content_type: e.content_type,
                ttl_seconds: 0,
                parts: e.parts,
                sender_user_id: e.sender_user_id,
                sender_device_id: e.sender_device_id,
            };
            let mut env = validate::send_envelope(sender, request, limits)?;
            if env.content_type.is_ephemeral() {
                return Err(status::invalid_field(
                    "envelope.content_type",
                    "EPHEMERAL_NOT_RELAYED",
                    "ephemeral content is not relayed between clusters",
                ));
            }
            env.ttl_ms = ttl_left_ms;
            env.traceparent =
                (!item.traceparent.is_empty() && item.traceparent.len() <= 128).then(|| item.traceparent.clone());
            RelayedKind::Envelope(env)
        }
        Some(v1::relayed_item::Kind::Report(r)) => {
            let reason = match r.reason {
                Some(v1::relayed_report::Reason::ExpiredRecipientProviderId(p)) => UndeliverableReason::Expired {
                    recipient_provider: provider_id("report.expired_recipient_provider_id", &p)?,
                },
                Some(v1::relayed_report::Reason::Refused(f)) => {
                    let detail = truncated(f.detail, MAX_DETAIL_BYTES);
                    if f.reason.is_empty() || f.reason.len() > 64 {
                        return Err(status::invalid_field("report.refused.reason", "INVALID", "1..=64 bytes"));
                    }
                    UndeliverableReason::Refused { reason: f.reason, detail }
                }
                None => return Err(status::invalid_field("report.reason", "EMPTY", "a report needs a reason")),
            };
            RelayedKind::Undeliverable {
                to: provider_id("report.to_provider_id", &r.to_provider_id)?,
                message_id: validate::message_id(&r.message_id, limits)?,
                recipient: validate::user_id("report.recipient_user_id", &r.recipient_user_id, limits)?,
                reason,
            }
        }
        Some(v1::relayed_item::Kind::Group(g)) => {
            RelayedKind::Group(group_delivery(g, &item.traceparent, limits, origin, own)?)
        }
        None => {
            return Err(status::invalid_field("kind", "EMPTY", "an item is an envelope, a report or a group message"));
        }
    };
    Ok(RelayedItem { queue_seq: item.queue_seq, ttl_left_ms, item: kind })
}
