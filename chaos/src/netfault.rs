//! Network faults between real `routerd` processes on one host: partitions,
//! one-way partitions and slow links, made with iptables and tc inside a
//! network namespace the run created (`deploy/chaos.sh --profile network`
//! wraps the runner in `ip netns exec`), so no rule outlives the run or
//! touches the host's network.
//!
//! Every node runs with its own group id ([`node_gid`]), so a packet's sender
//! is known by the iptables `owner` match; its receiver by the destination
//! port (each node's peer port). Cutting A -> B drops every packet A's process
//! sends to B's peer port: A's requests to B (appends, votes, forwards) never
//! arrive, while B's connections to A still work. Both directions make a
//! partition. The chaos runner itself (gid 0) is never cut: it observes.
//!
//! A slow link is an HTB class on loopback with a low rate, fed by a u32
//! filter on the destination port.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// The group id node `id` runs under.
pub fn node_gid(id: u64) -> u32 {
    47_000 + id as u32
}

/// Refuses to touch the network unless this process runs in the named
/// network namespace `deploy/chaos.sh` made for it (`IRCHAOS_NETNS`), as
/// `ip netns identify` confirms.
pub fn require_private_netns() -> Result<()> {
    let refuse = || {
        anyhow::anyhow!(
            "network faults need a private network namespace (iptables and tc rules on the host's loopback \
             would hit everything else): run them through `bash deploy/chaos.sh --profile network`"
        )
    };
    let wanted = std::env::var("IRCHAOS_NETNS").map_err(|_| refuse())?;
    let out = Command::new("ip")
        .args(["netns", "identify", &std::process::id().to_string()])
        .output()
        .context("run ip netns identify")?;
    if String::from_utf8_lossy(&out.stdout).trim() != wanted {
        return Err(refuse());
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Drops every packet node `from` sends to `to_port` (one direction of a link).
pub fn cut(from: u64, to_port: u16) -> Result<()> {
    let gid = node_gid(from).to_string();
    let port = to_port.to_string();
    run("iptables", &["-A", "OUTPUT", "-p", "tcp", "-m", "owner", "--gid-owner", &gid, "--dport", &port, "-j", "DROP"])
}

/// Slows every packet sent to `to_port` to `rate` (tc syntax, e.g. "256kbit").
pub fn slow(to_ports: &[u16], rate: &str) -> Result<()> {
    run("tc", &["qdisc", "replace", "dev", "lo", "root", "handle", "1:", "htb", "default", "1"])?;
    run("tc", &["class", "replace", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit"])?;
    run("tc", &["class", "replace", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", rate])?;
    for port in to_ports {
        let port = port.to_string();
        run(
            "tc",
            &[
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip",
                "dport", &port, "0xffff", "flowid", "1:10",
            ],
        )?;
    }
    Ok(())
}

/// Removes every cut and slow link.
pub fn heal() -> Result<()> {
    run("iptables", &["-F", "OUTPUT"])?;
    // No qdisc installed is fine.
    let _ = Command::new("tc").args(["qdisc", "del", "dev", "lo", "root"]).output();
    Ok(())
}
