//! Operator access to the admin API (peer port, operator certificate), with
//! the leader found through `Status` for calls that must reach it.

use crate::error::{SdkError, rejected};
use router_proto::v1::StatusRequest;
use router_proto::v1::admin_client::AdminClient;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Clone)]
pub struct AdminConnector {
    tls: ClientTlsConfig,
    /// Deadline of one admin call.
    pub timeout: Duration,
    /// Deadline of dialing a node.
    pub connect_timeout: Duration,
}

impl AdminConnector {
    pub fn new(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8], server_name: &str) -> Self {
        AdminConnector {
            tls: ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .identity(Identity::from_pem(cert_pem, key_pem))
                .domain_name(server_name.to_string()),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// [`AdminConnector::new`] from PEM files (CA, operator certificate, its key).
    pub fn from_files(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        server_name: &str,
    ) -> Result<Self, SdkError> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| SdkError::Config(format!("read {}: {e}", p.display())));
        Ok(Self::new(&read(ca)?, &read(cert)?, &read(key)?, server_name))
    }

    /// A client for one node's peer endpoint (`host:port`); dials lazily.
    pub fn client(&self, endpoint: &str) -> Result<AdminClient<Channel>, SdkError> {
        let ch = Endpoint::from_shared(format!("https://{endpoint}"))
            .map_err(|e| SdkError::Config(format!("endpoint {endpoint}: {e}")))?
            .tls_config(self.tls.clone())
            .map_err(|e| SdkError::Config(format!("TLS: {e}")))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .connect_lazy();
        Ok(AdminClient::new(ch).max_decoding_message_size(64 * 1024 * 1024))
    }

    /// Where to reach the current leader, asking `endpoints` in turn: the
    /// given endpoint of the leader when it is among them (the caller's own
    /// address for it; behind NAT or port mapping, as with the compose file,
    /// the address the leader advertises may not resolve where the caller
    /// runs), otherwise the leader's advertised peer endpoint.
    pub async fn leader_endpoint(&self, endpoints: &[String]) -> Result<String, SdkError> {
        let mut last = String::from("no endpoint given");
        let mut advertised = None;
        for e in endpoints {
            let mut c = self.client(e)?;
            match c.status(StatusRequest {}).await {
                Ok(s) => {
                    let s = s.into_inner();
                    if !s.has_leader {
                        last = format!("{e}: no leader");
                        continue;
                    }
                    if s.node_id == s.leader_id {
                        return Ok(e.clone());
                    }
                    if advertised.is_none() {
                        advertised = s
                            .voters
                            .iter()
                            .chain(&s.learners)
                            .find(|v| v.node_id == s.leader_id)
                            .map(|v| v.peer_endpoint.clone());
                    }
                }
                Err(status) if status.code() == tonic::Code::PermissionDenied => return Err(rejected(status)),
                Err(status) => last = format!("{e}: {}", status.message()),
            }
        }
        advertised.ok_or(SdkError::Unavailable { attempts: endpoints.len() as u32, last })
    }
}
