//! Certificates for the peers, so NATS and etcd pay for TLS as routerd does:
//! one CA per run, a certificate per member (server and client use, for
//! 127.0.0.1 and localhost: members also dial each other with it) and one
//! client certificate for the benchmark's own connections. The same scheme as
//! `routerd init-dev`: ECDSA P-256 keys, PEM files.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Pki {
    pub ca: PathBuf,
    pub members: Vec<Pair>,
    pub client: Pair,
}

impl Pki {
    /// A fresh CA under `dir` and certificates for `members` members.
    pub fn create(dir: &Path, members: usize) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, "router-bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = params.self_signed(&ca_key).context("self-sign CA")?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem())?;
        let issuer = Issuer::new(params, ca_key);
        let issue = |name: &str| -> anyhow::Result<Pair> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
            p.distinguished_name.push(DnType::CommonName, name);
            p.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            let cert = p.signed_by(&key, &issuer).with_context(|| format!("sign {name}"))?;
            let pair = Pair { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) };
            std::fs::write(&pair.cert, cert.pem())?;
            std::fs::write(&pair.key, key.serialize_pem())?;
            Ok(pair)
        };
        let members = (1..=members).map(|i| issue(&format!("member-{i}"))).collect::<anyhow::Result<Vec<_>>>()?;
        let client = issue("bench-client")?;
        Ok(Pki { ca, members, client })
    }

    /// A rustls client configuration presenting the client certificate and
    /// trusting only this run's CA.
    pub fn rustls_client(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&std::fs::read(&self.ca)?) {
            roots.add(c?)?;
        }
        let chain = CertificateDer::pem_slice_iter(&std::fs::read(&self.client.cert)?)
            .map(|c| c.map(CertificateDer::into_owned))
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&std::fs::read(&self.client.key)?)?.clone_key();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Arc::new(cfg))
    }
}
