//! rustls (ring) configuration for the three kinds of connection: providers
//! to the provider port, nodes and operators to the peer port, and this node
//! dialing its peers. All are mutual TLS against one CA.

use crate::config::RawTls;
use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

/// PEM material loaded once at start.
#[derive(Clone, Debug)]
pub struct TlsMaterials {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub peer_server_name: String,
}

impl TlsMaterials {
    pub fn load(cfg: &RawTls) -> anyhow::Result<Self> {
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        Ok(TlsMaterials {
            ca_pem: read(&cfg.ca)?,
            cert_pem: read(&cfg.cert)?,
            key_pem: read(&cfg.key)?,
            peer_server_name: cfg.peer_server_name.clone(),
        })
    }

    /// Server side: our certificate, and client certificates required and
    /// verified against the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    /// Client side, for dialing peers with our node certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.peer_server_name.clone())
    }
}
