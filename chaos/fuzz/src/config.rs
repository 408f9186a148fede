//! `config`: arbitrary bytes -> `routerd.toml` -> the node's real parse
//! (`toml` into `router_node::config::RawConfig`, unknown keys refused) and
//! validation (`Config::validate`), then the per-pod overrides. Must answer
//! `Ok` or an error, never panic. A configuration that validates must hold
//! what validation promises (node id >= 1, election timeouts above twice the
//! heartbeat, windows and TTLs in range, ...).

use router_node::config::{Config, Overrides, RawConfig};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = toml::from_str::<RawConfig>(text) else {
        return;
    };
    let Ok(cfg) = Config::validate(raw) else {
        return;
    };
    check(&cfg);
    // Kubernetes: node id from the pod index.
    let pod = Overrides { pod_index: Some(cfg.node_id % 7), ..Overrides::default() };
    if let Ok(c) = cfg.clone().with_overrides(pod) {
        assert!(c.node_id >= 1);
    }
    let _ = cfg.bootstraps();
}

fn check(cfg: &Config) {
    assert!(cfg.node_id >= 1);
    assert!(cfg.raft.election_timeout_min > cfg.raft.heartbeat * 2);
    assert!(cfg.raft.election_timeout_max > cfg.raft.election_timeout_min);
    let l = &cfg.limits;
    assert!((1..=16 * 1024 * 1024).contains(&l.max_envelope_bytes));
    assert!(l.default_receive_window >= 1 && l.default_receive_window <= l.max_receive_window);
    assert!(l.default_ttl_seconds >= 1 && l.default_ttl_seconds <= l.max_ttl_seconds);
    assert!(l.max_send_batch_bytes >= l.max_envelope_bytes + 64 * 1024 && l.max_send_batch_bytes <= 64 * 1024 * 1024);
    for v in [
        l.max_parts_per_send,
        l.max_prekeys_per_upload,
        l.max_ack_batch,
        l.max_send_batch,
        l.max_user_id_bytes,
        l.max_message_id_bytes,
    ] {
        assert!(v >= 1);
    }
    let r = &cfg.replicated_limits;
    assert!(r.claim_burst >= 1 && r.claim_refill_ms >= 1);
    assert!(cfg.batching.max_commands_per_entry >= 1 && cfg.batching.max_entries_in_flight >= 1);
    assert!(!(cfg.bootstrap && cfg.seeds.is_empty() && !cfg.initial_members.contains_key(&cfg.node_id)));
    assert!(cfg.seeds.is_empty() || cfg.initial_members.is_empty());
    for p in &cfg.initial_providers {
        assert!(router_node::identity::check_provider_id(p).is_ok(), "{p:?}");
    }
    let m = &cfg.media;
    assert!((1..=1 << 40).contains(&m.max_bytes));
    assert!(m.connect_timeout <= m.total_timeout && m.idle_timeout <= m.total_timeout);
}
