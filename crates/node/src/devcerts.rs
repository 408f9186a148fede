//! A development PKI: one CA, a certificate per node, per provider and per
//! operator, written as PEM files. Used by `routerd dev` and by tests; a
//! production deployment brings its own CA (or cert-manager).

use crate::identity::Identity;
use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use router_raft::NodeId;
use std::path::{Path, PathBuf};

/// Paths of one certificate and its key.
#[derive(Clone, Debug)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub struct DevPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl DevPki {
    /// Creates a new CA in `dir` (overwriting any there).
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let key = KeyPair::generate().context("generate CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params.distinguished_name.push(DnType::CommonName, "interop-router dev CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).context("self-sign CA")?;
        let ca = dir.join("ca.pem");
        write_private(&ca, cert.pem().as_bytes())?;
        Ok(DevPki { dir: dir.to_path_buf(), ca, issuer: Issuer::new(params, key) })
    }

    /// Issues a certificate for `identity`, valid as a server for localhost
    /// and 127.0.0.1 (nodes) and as a client (everyone).
    pub fn issue(&self, identity: &Identity, file_stem: &str) -> anyhow::Result<CertPaths> {
        let key = KeyPair::generate().context("generate key")?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).context("cert params")?;
        params.distinguished_name.push(DnType::CommonName, identity.uri());
        params.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));
        params.subject_alt_names.push(SanType::URI(identity.uri().try_into().context("URI SAN")?));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).context("sign certificate")?;
        let paths = CertPaths {
            cert: self.dir.join(format!("{file_stem}.pem")),
            key: self.dir.join(format!("{file_stem}.key")),
        };
        write_private(&paths.cert, cert.pem().as_bytes())?;
        write_private(&paths.key, key.serialize_pem().as_bytes())?;
        Ok(paths)
    }

    pub fn issue_node(&self, id: NodeId) -> anyhow::Result<CertPaths> {
        self.issue(&Identity::Node(id), &format!("node-{id}"))
    }

    pub fn issue_provider(&self, provider: &str) -> anyhow::Result<CertPaths> {
        self.issue(&Identity::Provider(router_core::ProviderId::new(provider)), &format!("provider-{provider}"))
    }

    pub fn issue_operator(&self, name: &str) -> anyhow::Result<CertPaths> {
        self.issue(&Identity::Operator(name.to_string()), &format!("operator-{name}"))
    }
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}
