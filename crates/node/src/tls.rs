//! rustls (ring) configuration for the three kinds of connection: providers
//! to the provider port, nodes and operators to the peer port, and this node
//! dialing its peers. All are mutual TLS against one CA.

use crate::config::RawTls;
use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};

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
    /// verified against the CA; HTTP/2 only. The handshake runs in
    /// `accept::tls_incoming`, bounded in time and number.
    pub fn acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots.add(ca.context("CA certificate PEM")?).context("CA certificate")?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider.clone())
                .build()
                .context("client certificate verifier")?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&self.cert_pem).collect::<Result<_, _>>().context("certificate PEM")?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).context("private key PEM")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .context("certificate and key")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
    }

    /// Client side, for dialing peers with our node certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.peer_server_name.clone())
    }
}
