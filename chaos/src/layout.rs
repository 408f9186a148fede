//! Certificates and node configs for a cluster in containers.
//!
//! `routerd init-dev` (the local binary, run on the host) writes a dev CA,
//! node, provider and operator certificates and `routerd-<id>.toml` files
//! that describe a cluster on 127.0.0.1. Each file is rewritten here for a
//! container on a private Docker network:
//!
//! ```text
//! data_dir                /var/lib/routerd (a named volume per node)
//! [listen]                0.0.0.0:7411 / 0.0.0.0:7412 / 0.0.0.0:7413
//! [tls]                   /etc/routerd/certs/{ca.pem,node-N.pem,node-N.key} (mounted read-only)
//!   peer_server_name      "localhost": the dev certificates cover only localhost and 127.0.0.1;
//!                         peers dial <prefix>-router-N:7412 and verify against this name
//! [cluster]               bootstrap = true, seeds = every container's <name>:7412,
//!                         no initial_members (node 1 initializes, the others join)
//! ```
//!
//! The advertised addresses (`<name>:7411` / `<name>:7412`) are given to each
//! container through `ROUTERD_ADVERTISE_PROVIDER` / `ROUTERD_ADVERTISE_PEER`.
//! Host-side clients reach the nodes through ports published on 127.0.0.1,
//! which the certificates cover.

use anyhow::{Context, Result, bail};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Ports inside every container.
pub const PROVIDER_PORT: u16 = 7411;
pub const PEER_PORT: u16 = 7412;
pub const ADMIN_PORT: u16 = 7413;

/// Where a container finds its config and certificates.
pub const CONFIG_IN_CONTAINER: &str = "/etc/routerd/routerd.toml";
pub const CERTS_IN_CONTAINER: &str = "/etc/routerd/certs";
pub const DATA_IN_CONTAINER: &str = "/var/lib/routerd";

/// Sections `init-dev` may write that are copied over unchanged.
const CARRIED_SECTIONS: [&str; 3] = ["raft", "limits", "batching"];
/// Sections this module rewrites.
const REWRITTEN_SECTIONS: [&str; 4] = ["listen", "advertise", "tls", "cluster"];

#[derive(Clone, Debug)]
pub struct NodeLayout {
    pub id: u64,
    /// Container name, also its DNS name on the test network.
    pub container: String,
    /// Named volume holding the node's data directory.
    pub volume: String,
    /// Host ports on 127.0.0.1.
    pub provider_port: u16,
    pub peer_port: u16,
    /// Files on the host, mounted read-only.
    pub config: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl NodeLayout {
    pub fn provider_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.provider_port)
    }

    pub fn peer_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
    pub network: String,
    pub ca: PathBuf,
    pub nodes: Vec<NodeLayout>,
    /// `certs/` as `init-dev` wrote it: provider and operator keys stay here, on the host.
    pub host_certs: PathBuf,
}

impl Layout {
    pub fn node(&self, id: u64) -> &NodeLayout {
        self.nodes.iter().find(|n| n.id == id).expect("node id from this layout")
    }

    /// (certificate, key) of a client identity `init-dev` wrote: `provider-alpha`, `operator-admin`.
    pub fn client_identity(&self, name: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let cert = self.host_certs.join(format!("{name}.pem"));
        let key = self.host_certs.join(format!("{name}.key"));
        Ok((
            std::fs::read(&cert).with_context(|| format!("read {}", cert.display()))?,
            std::fs::read(&key).with_context(|| format!("read {}", key.display()))?,
        ))
    }

    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.ca).with_context(|| format!("read {}", self.ca.display()))
    }

    /// `docker run` arguments (after `--name`) for node `id`.
    pub fn run_args(&self, id: u64, image: &str, rust_log: &str) -> Vec<String> {
        let n = self.node(id);
        let mount =
            |host: &Path, inside: String| format!("type=bind,source={},target={inside},readonly", host.display());
        let mut args: Vec<String> = vec![
            "--network".into(),
            self.network.clone(),
            "--hostname".into(),
            n.container.clone(),
            // Hardened as in deploy/compose.yaml.
            "--read-only".into(),
            "--tmpfs".into(),
            "/tmp".into(),
            "--cap-drop".into(),
            "ALL".into(),
            "--security-opt".into(),
            "no-new-privileges:true".into(),
            "--env".into(),
            format!("RUST_LOG={rust_log}"),
            "--env".into(),
            format!("ROUTERD_ADVERTISE_PEER={}:{PEER_PORT}", n.container),
            "--env".into(),
            format!("ROUTERD_ADVERTISE_PROVIDER={}:{PROVIDER_PORT}", n.container),
            "--publish".into(),
            format!("127.0.0.1:{}:{PROVIDER_PORT}", n.provider_port),
            "--publish".into(),
            format!("127.0.0.1:{}:{PEER_PORT}", n.peer_port),
            "--mount".into(),
            format!("type=volume,source={},target={DATA_IN_CONTAINER}", n.volume),
            "--mount".into(),
            mount(&n.config, CONFIG_IN_CONTAINER.into()),
            "--mount".into(),
            mount(&self.ca, format!("{CERTS_IN_CONTAINER}/ca.pem")),
            "--mount".into(),
            mount(&n.cert, format!("{CERTS_IN_CONTAINER}/node-{id}.pem")),
            "--mount".into(),
            mount(&n.key, format!("{CERTS_IN_CONTAINER}/node-{id}.key")),
        ];
        args.extend([
            image.to_string(),
            "--config".into(),
            CONFIG_IN_CONTAINER.into(),
            "--grace-seconds".into(),
            "5".into(),
        ]);
        args
    }
}

/// Runs `routerd init-dev` into `dir/init` and writes the container configs
/// into `dir/container`. `ports` holds two free host ports per node.
pub async fn prepare(
    routerd: &Path,
    dir: &Path,
    prefix: &str,
    nodes: u64,
    providers: &[&str],
    ports: &[u16],
) -> Result<Layout> {
    if ports.len() < 2 * nodes as usize {
        bail!("need {} host ports, got {}", 2 * nodes, ports.len());
    }
    let init = dir.join("init");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(routerd)
            .arg("init-dev")
            .arg("--dir")
            .arg(&init)
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--providers")
            .arg(providers.join(","))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("routerd init-dev did not finish within 60 s")?
    .with_context(|| format!("run {} init-dev", routerd.display()))?;
    if !out.status.success() {
        bail!("{} init-dev failed: {}", routerd.display(), String::from_utf8_lossy(&out.stderr).trim());
    }

    let container_dir = dir.join("container");
    std::fs::create_dir_all(&container_dir)?;
    let host_certs = init.join("certs");
    let ca = container_dir.join("ca.pem");
    std::fs::copy(host_certs.join("ca.pem"), &ca).context("copy ca.pem")?;

    let names: Vec<String> = (1..=nodes).map(|i| format!("{prefix}-router-{i}")).collect();
    let seeds: Vec<String> = names.iter().map(|n| format!("{n}:{PEER_PORT}")).collect();
    let mut layout_nodes = Vec::new();
    for id in 1..=nodes {
        let source = init.join(format!("routerd-{id}.toml"));
        let text = std::fs::read_to_string(&source).with_context(|| format!("read {}", source.display()))?;
        let rewritten = rewrite(&text, id, &seeds).with_context(|| format!("rewrite {}", source.display()))?;
        let config = container_dir.join(format!("routerd-{id}.toml"));
        std::fs::write(&config, rewritten)?;
        let cert = container_dir.join(format!("node-{id}.pem"));
        let key = container_dir.join(format!("node-{id}.key"));
        std::fs::copy(host_certs.join(format!("node-{id}.pem")), &cert)?;
        std::fs::copy(host_certs.join(format!("node-{id}.key")), &key)?;
        layout_nodes.push(NodeLayout {
            id,
            container: names[id as usize - 1].clone(),
            volume: format!("{prefix}-router-{id}-data"),
            provider_port: ports[2 * (id as usize - 1)],
            peer_port: ports[2 * (id as usize - 1) + 1],
            config,
            cert,
            key,
        });
    }
    // routerd runs as uid 65532 in the image: the mounted files must be readable
    // by it. A throwaway dev CA only; provider and operator keys stay 0600 in init/.
    for entry in std::fs::read_dir(&container_dir)? {
        std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    for d in [dir, container_dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(Layout { dir: dir.to_path_buf(), network: format!("{prefix}-net"), ca, nodes: layout_nodes, host_certs })
}

/// Rewrites one `init-dev` config for a container (see the module docs).
/// Line-based: `init-dev` writes flat `key = value` lines under `[section]` headers.
pub fn rewrite(text: &str, id: u64, seeds: &[String]) -> Result<String> {
    let mut section = String::new();
    let mut node_id = None;
    let mut providers = None;
    let mut carried = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.trim().to_string();
            if CARRIED_SECTIONS.contains(&section.as_str()) {
                carried.push_str(&format!("\n[{section}]\n"));
            } else if !REWRITTEN_SECTIONS.contains(&section.as_str()) {
                bail!("init-dev wrote a section this rewrite does not know: [{section}]");
            }
            continue;
        }
        if CARRIED_SECTIONS.contains(&section.as_str()) {
            carried.push_str(line);
            carried.push('\n');
            continue;
        }
        let key = t.split('=').next().unwrap_or("").trim();
        match (section.as_str(), key) {
            ("", "node_id") => node_id = t.split('=').nth(1).map(|v| v.trim().to_string()),
            ("", "data_dir") => {}
            ("", other) => bail!("init-dev wrote a top-level key this rewrite does not know: {other}"),
            ("cluster", "initial_providers") => providers = Some(t.to_string()),
            // Everything else in the rewritten sections (listen and advertise addresses,
            // certificate paths, bootstrap, initial_members and their entries) is replaced.
            _ => {}
        }
    }
    if node_id.as_deref() != Some(id.to_string().as_str()) {
        bail!("expected node_id = {id}, found {node_id:?}");
    }
    let providers = providers.context("no [cluster] initial_providers")?;
    let seeds = seeds.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "# Rewritten by docker-cluster-test (router-chaos) from `routerd init-dev` for a container.\n\
         node_id = {id}\n\
         data_dir = \"{DATA_IN_CONTAINER}\"\n\
         \n\
         [listen]\n\
         provider = \"0.0.0.0:{PROVIDER_PORT}\"\n\
         peer = \"0.0.0.0:{PEER_PORT}\"\n\
         admin = \"0.0.0.0:{ADMIN_PORT}\"\n\
         \n\
         [tls]\n\
         ca = \"{CERTS_IN_CONTAINER}/ca.pem\"\n\
         cert = \"{CERTS_IN_CONTAINER}/node-{id}.pem\"\n\
         key = \"{CERTS_IN_CONTAINER}/node-{id}.key\"\n\
         # The dev node certificates cover only localhost and 127.0.0.1: peers are\n\
         # dialed by container name and verified against this name.\n\
         peer_server_name = \"localhost\"\n\
         \n\
         [cluster]\n\
         bootstrap = true\n\
         {providers}\n\
         seeds = [{seeds}]\n\
         {carried}"
    ))
}

/// `count` distinct free TCP ports on 127.0.0.1 (bound, noted, released).
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("find free ports on 127.0.0.1")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_an_init_dev_config() {
        let text = "node_id = 2\ndata_dir = \"/tmp/x/node-2\"\n\n[listen]\nprovider = \"127.0.0.1:7421\"\n\
                    peer = \"127.0.0.1:7422\"\nadmin = \"127.0.0.1:7423\"\n\n[tls]\nca = \"/tmp/x/certs/ca.pem\"\n\
                    cert = \"/tmp/x/certs/node-2.pem\"\nkey = \"/tmp/x/certs/node-2.key\"\n\n[cluster]\n\
                    bootstrap = false\ninitial_providers = [\"alpha\", \"beta\"]\ninitial_members = [\n\
                    \x20 { id = 1, peer = \"127.0.0.1:7412\", provider = \"127.0.0.1:7411\" },\n]\n\n\
                    [raft]\nheartbeat_ms = 50\n";
        let seeds = vec!["p-router-1:7412".to_string(), "p-router-2:7412".to_string()];
        let out = rewrite(text, 2, &seeds).unwrap();
        assert!(out.contains("node_id = 2\n"));
        assert!(out.contains("seeds = [\"p-router-1:7412\", \"p-router-2:7412\"]"));
        assert!(out.contains("initial_providers = [\"alpha\", \"beta\"]"));
        assert!(out.contains("bootstrap = true"));
        assert!(out.contains("[raft]\nheartbeat_ms = 50"));
        let settings: String = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(!settings.contains("initial_members") && !settings.contains("127.0.0.1"), "{out}");
        assert!(rewrite(text, 3, &seeds).is_err(), "wrong node id");
        assert!(rewrite("node_id = 2\n[metrics]\nx = 1\n", 2, &seeds).is_err(), "unknown section");
    }
}
