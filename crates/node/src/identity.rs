//! Who is calling: the identity in the caller's mTLS client certificate.
//!
//! Every certificate the cluster trusts is signed by the configured CA and
//! carries exactly one URI SAN naming its holder:
//!
//! | holder   | URI SAN                                          |
//! |----------|--------------------------------------------------|
//! | provider | `spiffe://interop-router/provider/<provider-id>` |
//! | node     | `spiffe://interop-router/node/<node-id>`         |
//! | operator | `spiffe://interop-router/operator/<name>`        |
//! | cluster  | `spiffe://interop-router/cluster/<cluster-id>`   |
//!
//! A cluster certificate identifies a whole cluster to its federation peers;
//! it is signed by that cluster's own CA and accepted only on the federation
//! listener, against the CA the operator registered for that peer.
//!
//! rustls has already verified the chain against the CA before a handler
//! runs; here we only read the name.

use router_core::ProviderId;
use router_raft::NodeId;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub const SPIFFE_PREFIX: &str = "spiffe://interop-router/";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Provider(ProviderId),
    Node(NodeId),
    Operator(String),
    Cluster(router_core::ClusterId),
}

impl Identity {
    pub fn uri(&self) -> String {
        match self {
            Identity::Provider(p) => format!("{SPIFFE_PREFIX}provider/{p}"),
            Identity::Node(n) => format!("{SPIFFE_PREFIX}node/{n}"),
            Identity::Operator(o) => format!("{SPIFFE_PREFIX}operator/{o}"),
            Identity::Cluster(c) => format!("{SPIFFE_PREFIX}cluster/{c}"),
        }
    }

    pub fn parse_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(SPIFFE_PREFIX)?;
        let (kind, name) = rest.split_once('/')?;
        match kind {
            "provider" if check_provider_id(name).is_ok() => Some(Identity::Provider(ProviderId::new(name))),
            "node" => name.parse().ok().filter(|n| *n > 0).map(Identity::Node),
            "operator" if check_provider_id(name).is_ok() => Some(Identity::Operator(name.to_string())),
            "cluster" if check_provider_id(name).is_ok() => Some(Identity::Cluster(router_core::ClusterId::new(name))),
            _ => None,
        }
    }
}

/// Provider ids (and operator names): 1..=64 of `a-z 0-9 - _ .`.
pub fn check_provider_id(s: &str) -> Result<(), String> {
    let ok_len = (1..=64).contains(&s.len());
    let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok_len && ok_chars { Ok(()) } else { Err(format!("{s:?} is not a valid id (1..=64 of a-z 0-9 - _ .)")) }
}

/// Reads the identity from the leaf certificate of the verified chain.
pub fn identity_from_der(der: &[u8]) -> Option<Identity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut found = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Identity::parse_uri(u),
        _ => None,
    });
    let first = found.next()?;
    // Two identities in one certificate would make authorization ambiguous.
    if found.next().is_some() { None } else { Some(first) }
}

pub fn identity_of<T>(req: &Request<T>) -> Result<Identity, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required (mTLS)"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    identity_from_der(leaf.as_ref()).ok_or_else(|| {
        Status::unauthenticated(format!("client certificate carries no single valid URI SAN under {SPIFFE_PREFIX}"))
    })
}

/// The calling provider, or PERMISSION_DENIED for nodes and operators.
pub fn provider_of<T>(req: &Request<T>) -> Result<ProviderId, Status> {
    match identity_of(req)? {
        Identity::Provider(p) => Ok(p),
        other => Err(Status::permission_denied(format!("{} is not a provider identity", other.uri()))),
    }
}

/// Admin calls that read (`Status`) or manage the caller's own membership
/// (joining: `AddLearner`, `ChangeMembership`, `RemoveMember` of itself):
/// operators and nodes. The handler checks that a node acts only on itself.
pub fn require_admin<T>(req: &Request<T>) -> Result<Identity, Status> {
    match identity_of(req)? {
        Identity::Provider(p) => Err(Status::permission_denied(format!("provider {p} may not call the admin API"))),
        Identity::Cluster(c) => Err(Status::permission_denied(format!("cluster {c} may not call the admin API"))),
        other => Ok(other),
    }
}

/// Raft and forwarding calls: nodes only (the handler also checks that the
/// node is a member: `NodeCtx::require_peer_member`).
pub fn require_node<T>(req: &Request<T>) -> Result<NodeId, Status> {
    match identity_of(req)? {
        Identity::Node(n) => Ok(n),
        other => Err(Status::permission_denied(format!("{} may not call the peer API", other.uri()))),
    }
}
