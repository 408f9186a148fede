//! `proto_decode`: arbitrary bytes -> one provider-facing request message
//! (prost) -> the node's edge validation (`router_node::grpc::validate`,
//! `media::parse_url`, `admin::validate_media_hosts`) -> the core command
//! the handler would write -> applied to a populated state with the
//! invariants of [`crate::check`].
//!
//! The first input byte picks the request type (and the authenticated
//! provider); the rest is the encoded message. Must never panic. A message
//! that decodes must re-encode to one that decodes the same; a refusal must
//! be a non-OK status carrying an `ErrorDetail` with a reason (the API
//! contract); an accepted request must satisfy what validation promises
//! (ids in range, sizes within the limits, no duplicate devices or key ids).
//!
//! Field validation and the assembly of sends and group sends are the node's
//! own code (`validate::send_envelope`, `validate::group_send`,
//! `validate::group_id`, `validate::group_members`, which the handlers call
//! too); the one-line assemblies of the other commands follow the handlers in
//! `crates/node/src/grpc/{directory,prekeys,messaging,groups,media}.rs`.

use crate::log_entry::world;
use prost::Message;
use router_core::{Batch, Command, DevicePart, ProviderId, UserId};
use router_node::config::EdgeLimits;
use router_node::grpc::validate::{self, MAX_DEVICE_ID, MAX_REGISTRATION_ID};
use router_node::grpc::{admin, media, status};
use router_proto::v1;
use std::collections::BTreeSet;
use tonic::{Code, Status};

/// Request types, in the order of the first input byte (modulo).
pub const KINDS: [&str; 17] = [
    "RegisterUser",
    "DeregisterUser",
    "RegisterDevice",
    "RemoveDevice",
    "Resolve",
    "UploadPrekeys",
    "FetchBundles",
    "PrekeyCount",
    "Send",
    "Receive",
    "Ack",
    "CreateGroup",
    "UpdateGroup",
    "GetGroup",
    "SendGroup",
    "SetMediaHosts",
    "FetchMedia",
];

/// The authenticated provider, from the second half of the first byte.
const PROVIDERS: [&str; 4] = ["pa", "pb", "pc", "px"];

pub fn run(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = usize::from(selector) % KINDS.len();
    let provider = ProviderId::new(PROVIDERS[usize::from(selector) / KINDS.len() % PROVIDERS.len()]);
    let limits = EdgeLimits::default();
    let result = match kind {
        0 => decoded::<v1::RegisterUserRequest>(body).map(|r| {
            validate::user_id("user_id", &r.user_id, &limits).map(|user| Some(Command::RegisterUser { provider, user }))
        }),
        1 => decoded::<v1::DeregisterUserRequest>(body).map(|r| {
            validate::user_id("user_id", &r.user_id, &limits)
                .map(|user| Some(Command::DeregisterUser { provider, user }))
        }),
        2 => decoded::<v1::RegisterDeviceRequest>(body).map(|r| {
            (|| {
                let user = validate::user_id("user_id", &r.user_id, &limits)?;
                let device = validate::device_id("device_id", r.device_id)?;
                let registration_id = validate::registration_id("registration_id", r.registration_id)?;
                Ok(Some(Command::RegisterDevice { provider, user, device, registration_id }))
            })()
        }),
        3 => decoded::<v1::RemoveDeviceRequest>(body).map(|r| {
            (|| {
                let user = validate::user_id("user_id", &r.user_id, &limits)?;
                let device = validate::device_id("device_id", r.device_id)?;
                Ok(Some(Command::RemoveDevice { provider, user, device }))
            })()
        }),
        4 => {
            decoded::<v1::ResolveRequest>(body).map(|r| validate::user_id("user_id", &r.user_id, &limits).map(|_| None))
        }
        5 => decoded::<v1::UploadPrekeysRequest>(body).map(|r| {
            (|| {
                let user = validate::user_id("user_id", &r.user_id, &limits)?;
                let device = validate::device_id("device_id", r.device_id)?;
                let upload = validate::upload(r, &limits)?;
                check_upload(&upload, &limits);
                Ok(Some(Command::UploadPrekeys { provider, user, device, upload }))
            })()
        }),
        6 => decoded::<v1::FetchBundlesRequest>(body).map(|r| {
            (|| {
                let user = validate::user_id("user_id", &r.user_id, &limits)?;
                let device = match r.device_id {
                    0 => None,
                    d => Some(validate::device_id("device_id", d)?),
                };
                Ok(Some(Command::ClaimPrekeys { requester: provider, user, device }))
            })()
        }),
        7 => decoded::<v1::PrekeyCountRequest>(body).map(|r| {
            (|| {
                validate::user_id("user_id", &r.user_id, &limits)?;
                validate::device_id("device_id", r.device_id)?;
                Ok(None)
            })()
        }),
        8 => decoded::<v1::SendRequest>(body).map(|r| send(provider, r, &limits)),
        9 => decoded::<v1::ReceiveRequest>(body).map(|r| {
            if r.window > limits.max_receive_window {
                Err(status::over_limit("window", u64::from(limits.max_receive_window), u64::from(r.window)))
            } else {
                Ok(None)
            }
        }),
        10 => decoded::<v1::AckRequest>(body).map(|r| {
            if r.seqs.is_empty() {
                Err(status::invalid_field("seqs", "EMPTY", "at least one sequence number is required"))
            } else if r.seqs.len() > limits.max_ack_batch {
                Err(status::over_limit("seqs", limits.max_ack_batch as u64, r.seqs.len() as u64))
            } else {
                Ok(Some(Command::Ack { provider, seqs: r.seqs }))
            }
        }),
        11 => decoded::<v1::CreateGroupRequest>(body).map(|r| {
            (|| {
                let group = validate::group_id(&r.group_id)?;
                let creator = validate::user_id("creator_user_id", &r.creator_user_id, &limits)?;
                let members = validate::group_members("members", r.members, &limits)?;
                Ok(Some(Command::CreateGroup { provider, creator, group, members }))
            })()
        }),
        12 => decoded::<v1::UpdateGroupRequest>(body).map(|r| {
            (|| {
                let group = validate::group_id(&r.group_id)?;
                let actor = validate::user_id("actor_user_id", &r.actor_user_id, &limits)?;
                let set = validate::group_members("set", r.set, &limits)?;
                let remove = r
                    .remove_user_ids
                    .iter()
                    .enumerate()
                    .map(|(i, u)| validate::user_id(&format!("remove_user_ids[{i}]"), u, &limits))
                    .collect::<Result<Vec<_>, _>>()?;
                if set.is_empty() && remove.is_empty() {
                    return Err(status::invalid_field("set", "EMPTY", "nothing to change"));
                }
                Ok(Some(Command::ChangeGroup { provider, actor, group, set, remove }))
            })()
        }),
        13 => decoded::<v1::GetGroupRequest>(body).map(|r| validate::group_id(&r.group_id).map(|_| None)),
        14 => decoded::<v1::SendGroupRequest>(body).map(|r| send_group(provider, r, &limits)),
        15 => decoded::<v1::SetMediaHostsRequest>(body).map(|r| {
            admin::validate_media_hosts(r.media_hosts).map(|media_hosts| {
                assert!(media_hosts.len() <= 16);
                for h in &media_hosts {
                    assert!(!h.is_empty() && h.len() <= 253 + 6 && !h.bytes().any(|b| b.is_ascii_uppercase()), "{h:?}");
                }
                Some(Command::SetMediaHosts { provider, media_hosts })
            })
        }),
        16 => decoded::<v1::FetchMediaRequest>(body).map(|r| {
            media::parse_url(&r.url).map(|t| {
                check_target(&r.url, &t);
                None
            })
        }),
        _ => unreachable!("kind is taken modulo KINDS.len()"),
    };
    match result {
        None => {}
        Some(Err(st)) => check_refusal(&st),
        Some(Ok(None)) => {}
        Some(Ok(Some(cmd))) => apply(cmd),
    }
}

/// Decodes `body` as `M`; if it decodes, it must re-encode and decode the same.
fn decoded<M: Message + Default + PartialEq>(body: &[u8]) -> Option<M> {
    let m = M::decode(body).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert!(again == m, "prost round trip changed the message");
    Some(m)
}

/// Every refusal at the edge is INVALID_ARGUMENT with an `ErrorDetail` that
/// names a reason (clients never parse message text).
fn check_refusal(st: &Status) {
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    let detail = v1::ErrorDetail::decode(st.details()).expect("status details hold an ErrorDetail");
    assert!(!detail.reason.is_empty(), "ErrorDetail without a reason: {st:?}");
}

fn check_user(u: &UserId, limits: &EdgeLimits) {
    assert!(!u.0.is_empty() && u.0.len() <= limits.max_user_id_bytes && !u.0.chars().any(char::is_control), "{u:?}");
}

fn check_parts(parts: &[DevicePart], limits: &EdgeLimits) {
    assert!(!parts.is_empty() && parts.len() <= limits.max_parts_per_send);
    let devices: BTreeSet<u32> = parts.iter().map(|p| p.device).collect();
    assert_eq!(devices.len(), parts.len(), "a device addressed twice");
    for p in parts {
        assert!((1..=MAX_DEVICE_ID).contains(&p.device), "device {}", p.device);
        assert!((1..=MAX_REGISTRATION_ID).contains(&p.registration_id), "registration id {}", p.registration_id);
        assert!(!p.ciphertext.is_empty());
    }
    assert!(parts.iter().map(|p| p.ciphertext.len()).sum::<usize>() <= limits.max_envelope_bytes);
}

fn check_upload(u: &router_core::PrekeyUpload, limits: &EdgeLimits) {
    assert_eq!(u.identity_key.len(), 33);
    assert!(u.one_time.len() <= limits.max_prekeys_per_upload);
    assert!(u.kyber_one_time.len() <= limits.max_prekeys_per_upload);
    let ec: BTreeSet<u32> = u.one_time.iter().map(|k| k.key_id).collect();
    assert_eq!(ec.len(), u.one_time.len(), "duplicate EC key ids accepted");
    let ky: BTreeSet<u32> = u.kyber_one_time.iter().map(|k| k.key_id).collect();
    assert_eq!(ky.len(), u.kyber_one_time.len(), "duplicate Kyber key ids accepted");
    for k in &u.one_time {
        assert!(router_prekeys::check_ec_public_key(&k.public_key).is_ok());
    }
}

fn check_target(url: &str, t: &media::Target) {
    assert!(t.port != 0, "{url:?}");
    assert!(!t.host.is_empty() && !t.host.bytes().any(|b| b.is_ascii_uppercase()), "{url:?} -> {t:?}");
    assert!(t.path_and_query.starts_with('/'), "not an origin-form request target: {url:?} -> {t:?}");
    assert!(!url.contains('#') && !t.host_header.contains('@'), "{url:?} -> {t:?}");
    assert_eq!(t.host_header, t.host_header.to_ascii_lowercase(), "{url:?} -> {t:?}");
    // The port the URL names is the port fetched from.
    if let Some(port) = url_port(url) {
        assert_eq!(port.parse::<u16>().ok(), Some(t.port), "port {port:?} of {url:?} -> {t:?}");
    }
    if let Ok(ip) = t.host.parse::<std::net::IpAddr>() {
        let _ = media::forbidden_address(ip);
    }
}

/// The text after the host in a URL's authority, if there is a `:`.
fn url_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let after_host = authority.rfind(']').map_or(authority, |i| &authority[i + 1..]);
    after_host.rsplit_once(':').map(|(_, port)| port)
}

/// `MessagingService::send` up to the write: the node's own assembly, then
/// what it promises about the envelope.
fn send(sender: ProviderId, r: v1::SendRequest, limits: &EdgeLimits) -> Result<Option<Command>, Status> {
    let env = validate::send_envelope(sender, r, limits)?;
    if !env.content_type.is_ephemeral() {
        assert!(env.ttl_ms >= 1000 && env.ttl_ms <= u64::from(limits.max_ttl_seconds) * 1000);
    }
    assert_eq!(env.sender_user.is_some(), env.sender_device.is_some());
    check_user(&env.recipient, limits);
    check_parts(&env.parts, limits);
    // Ephemeral content never enters the log; the node routes it on its replica.
    if env.content_type.is_ephemeral() {
        let _ = world().0.route(&env);
        return Ok(None);
    }
    Ok(Some(Command::Send(env)))
}

/// `GroupsService::send_group` up to the write.
fn send_group(sender: ProviderId, r: v1::SendGroupRequest, limits: &EdgeLimits) -> Result<Option<Command>, Status> {
    Ok(Some(Command::SendGroup(validate::group_send(sender, r, limits)?)))
}

/// The validated command, written to the populated state: checked like a log entry.
fn apply(cmd: Command) {
    let (before, checker) = world();
    let mut checker = checker.clone();
    let mut state = before.clone();
    let batch = Batch { stamp_ms: before.clock_ms + 1, commands: vec![cmd] };
    let outs = state.apply_batch(&batch);
    checker.batch(before, &batch, &outs, &state);
    checker.finish(&state);
}
