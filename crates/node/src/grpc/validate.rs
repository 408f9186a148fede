//! Edge validation: turns wire requests into core values, enforcing the
//! node's configured [`EdgeLimits`]. A request that fails here never reaches
//! the log, so it changes nothing.

use super::status::{invalid_field, over_limit};
use crate::config::EdgeLimits;
use router_core::{
    ContentType, DeviceId, DevicePart, GroupId, GroupSend, MessageId, OneTimePrekey, PrekeyUpload, ProviderId,
    RegistrationId, Role, SendEnvelope, SignedPrekey, UserId,
};
use router_prekeys::{IdentityKey, check_ec_public_key, check_kyber_public_key};
use router_proto::v1;
use std::collections::BTreeSet;
use tonic::Status;

/// Signal's (libsignal's) device id range is 1..=127.
pub const MAX_DEVICE_ID: u32 = 127;
pub const MAX_REGISTRATION_ID: u32 = 16380;

pub fn user_id(field: &str, s: &str, limits: &EdgeLimits) -> Result<UserId, Status> {
    if s.is_empty() {
        return Err(invalid_field(field, "EMPTY", format!("{field} is required")));
    }
    if s.len() > limits.max_user_id_bytes {
        return Err(over_limit(field, limits.max_user_id_bytes as u64, s.len() as u64));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid_field(field, "BAD_CHARACTERS", format!("{field} contains control characters")));
    }
    Ok(UserId::new(s))
}

pub fn message_id(s: &str, limits: &EdgeLimits) -> Result<MessageId, Status> {
    if s.is_empty() {
        return Err(invalid_field("message_id", "EMPTY", "message_id is required"));
    }
    if s.len() > limits.max_message_id_bytes {
        return Err(over_limit("message_id", limits.max_message_id_bytes as u64, s.len() as u64));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid_field("message_id", "BAD_CHARACTERS", "message_id must be printable ASCII without spaces"));
    }
    Ok(MessageId::new(s))
}

pub fn device_id(field: &str, d: u32) -> Result<DeviceId, Status> {
    if d == 0 || d > MAX_DEVICE_ID {
        return Err(invalid_field(field, "OUT_OF_RANGE", format!("{field} must be 1..={MAX_DEVICE_ID}, got {d}")));
    }
    Ok(d)
}

pub fn registration_id(field: &str, r: u32) -> Result<RegistrationId, Status> {
    if r == 0 || r > MAX_REGISTRATION_ID {
        return Err(invalid_field(
            field,
            "OUT_OF_RANGE",
            format!("{field} must be 1..={MAX_REGISTRATION_ID}, got {r}"),
        ));
    }
    Ok(r)
}

pub fn content_type(raw: i32) -> Result<ContentType, Status> {
    match v1::ContentType::try_from(raw) {
        Ok(v1::ContentType::Message) => Ok(ContentType::Message),
        Ok(v1::ContentType::Receipt) => Ok(ContentType::Receipt),
        Ok(v1::ContentType::Typing) => Ok(ContentType::Typing),
        Ok(v1::ContentType::CallSignaling) => Ok(ContentType::CallSignaling),
        Ok(v1::ContentType::Unspecified) | Err(_) => Err(invalid_field(
            "content_type",
            "OUT_OF_RANGE",
            format!("content_type {raw} is not a known content type"),
        )),
    }
}

pub fn ttl_ms(ttl_seconds: u32, limits: &EdgeLimits) -> Result<u64, Status> {
    let secs = if ttl_seconds == 0 { limits.default_ttl_seconds } else { ttl_seconds };
    if secs > limits.max_ttl_seconds {
        return Err(over_limit("ttl_seconds", u64::from(limits.max_ttl_seconds), u64::from(secs)));
    }
    Ok(u64::from(secs) * 1000)
}

pub fn parts(parts: Vec<v1::DeviceCiphertext>, limits: &EdgeLimits) -> Result<Vec<DevicePart>, Status> {
    if parts.is_empty() {
        return Err(invalid_field("parts", "EMPTY", "at least one device ciphertext is required"));
    }
    if parts.len() > limits.max_parts_per_send {
        return Err(over_limit("parts", limits.max_parts_per_send as u64, parts.len() as u64));
    }
    let total: usize = parts.iter().map(|p| p.ciphertext.len()).sum();
    if total > limits.max_envelope_bytes {
        return Err(over_limit("parts[].ciphertext", limits.max_envelope_bytes as u64, total as u64));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(parts.len());
    for (i, p) in parts.into_iter().enumerate() {
        let device = device_id(&format!("parts[{i}].device_id"), p.device_id)?;
        if !seen.insert(device) {
            return Err(invalid_field(
                format!("parts[{i}].device_id"),
                "DUPLICATE",
                format!("device {device} is addressed twice"),
            ));
        }
        let registration_id = registration_id(&format!("parts[{i}].registration_id"), p.registration_id)?;
        if p.ciphertext.is_empty() {
            return Err(invalid_field(format!("parts[{i}].ciphertext"), "EMPTY", "ciphertext is empty"));
        }
        out.push(DevicePart { device, registration_id, message_type: p.message_type, ciphertext: p.ciphertext.into() });
    }
    Ok(out)
}

fn key_error(field: String, e: router_prekeys::KeyError) -> Status {
    let reason = match e {
        router_prekeys::KeyError::BadSignature => "BAD_SIGNATURE",
        _ => "BAD_KEY",
    };
    invalid_field(field.clone(), reason, format!("{field}: {e}"))
}

/// Checks formats, counts and every signature of an upload.
pub fn upload(req: v1::UploadPrekeysRequest, limits: &EdgeLimits) -> Result<PrekeyUpload, Status> {
    let identity = IdentityKey::from_serialized(&req.identity_key).map_err(|e| key_error("identity_key".into(), e))?;
    let signed_prekey = match req.signed_prekey {
        Some(spk) => {
            check_ec_public_key(&spk.public_key).map_err(|e| key_error("signed_prekey.public_key".into(), e))?;
            identity
                .verify(&spk.public_key, &spk.signature)
                .map_err(|e| key_error("signed_prekey.signature".into(), e))?;
            Some(SignedPrekey { key_id: spk.key_id, public_key: spk.public_key, signature: spk.signature })
        }
        None => None,
    };
    for (field, n) in
        [("one_time_prekeys", req.one_time_prekeys.len()), ("kyber_one_time_prekeys", req.kyber_one_time_prekeys.len())]
    {
        if n > limits.max_prekeys_per_upload {
            return Err(over_limit(field, limits.max_prekeys_per_upload as u64, n as u64));
        }
    }
    let mut ids = BTreeSet::new();
    let mut one_time = Vec::with_capacity(req.one_time_prekeys.len());
    for (i, k) in req.one_time_prekeys.into_iter().enumerate() {
        check_ec_public_key(&k.public_key).map_err(|e| key_error(format!("one_time_prekeys[{i}].public_key"), e))?;
        if !ids.insert(k.key_id) {
            return Err(invalid_field(
                format!("one_time_prekeys[{i}].key_id"),
                "DUPLICATE",
                format!("key id {} appears twice", k.key_id),
            ));
        }
        one_time.push(OneTimePrekey { key_id: k.key_id, public_key: k.public_key });
    }
    let kyber = |field: String, k: v1::SignedKyberPrekey| -> Result<SignedPrekey, Status> {
        check_kyber_public_key(&k.public_key).map_err(|e| key_error(format!("{field}.public_key"), e))?;
        identity.verify(&k.public_key, &k.signature).map_err(|e| key_error(format!("{field}.signature"), e))?;
        Ok(SignedPrekey { key_id: k.key_id, public_key: k.public_key, signature: k.signature })
    };
    let mut kyber_ids = BTreeSet::new();
    let mut kyber_one_time = Vec::with_capacity(req.kyber_one_time_prekeys.len());
    for (i, k) in req.kyber_one_time_prekeys.into_iter().enumerate() {
        if !kyber_ids.insert(k.key_id) {
            return Err(invalid_field(
                format!("kyber_one_time_prekeys[{i}].key_id"),
                "DUPLICATE",
                format!("key id {} appears twice", k.key_id),
            ));
        }
        kyber_one_time.push(kyber(format!("kyber_one_time_prekeys[{i}]"), k)?);
    }
    let kyber_last_resort = req.kyber_last_resort.map(|k| kyber("kyber_last_resort".into(), k)).transpose()?;
    Ok(PrekeyUpload { identity_key: req.identity_key, signed_prekey, one_time, kyber_one_time, kyber_last_resort })
}

/// A `Send` request as the envelope the log would hold (no trace context:
/// the handler adds its own). Ephemeral content types get their fixed TTL.
pub fn send_envelope(sender: ProviderId, r: v1::SendRequest, limits: &EdgeLimits) -> Result<SendEnvelope, Status> {
    let message_id = message_id(&r.message_id, limits)?;
    let recipient = user_id("recipient_user_id", &r.recipient_user_id, limits)?;
    let content_type = content_type(r.content_type)?;
    let ttl_ms = if content_type.is_ephemeral() {
        crate::ephemeral::ttl_ms(r.ttl_seconds)
    } else {
        ttl_ms(r.ttl_seconds, limits)?
    };
    let (sender_user, sender_device) = match (r.sender_user_id.as_str(), r.sender_device_id) {
        ("", 0) => (None, None),
        ("", _) => {
            return Err(invalid_field(
                "sender_device_id",
                "UNEXPECTED",
                "sender_device_id is set without sender_user_id",
            ));
        }
        (user, device) => {
            (Some(user_id("sender_user_id", user, limits)?), Some(device_id("sender_device_id", device)?))
        }
    };
    let parts = parts(r.parts, limits)?;
    Ok(SendEnvelope {
        sender,
        sender_user,
        sender_device,
        message_id,
        recipient,
        content_type,
        ttl_ms,
        parts,
        traceparent: None,
    })
}

/// A `SendGroup` request as the group send the log would hold (no trace context).
pub fn group_send(sender: ProviderId, r: v1::SendGroupRequest, limits: &EdgeLimits) -> Result<GroupSend, Status> {
    let group = group_id(&r.group_id)?;
    let message_id = message_id(&r.message_id, limits)?;
    let sender_user = user_id("sender_user_id", &r.sender_user_id, limits)?;
    let sender_device = device_id("sender_device_id", r.sender_device_id)?;
    let content_type = content_type(r.content_type)?;
    let ttl_ms = ttl_ms(r.ttl_seconds, limits)?;
    if r.ciphertext.is_empty() {
        return Err(invalid_field("ciphertext", "EMPTY", "ciphertext is empty"));
    }
    let total = r.ciphertext.len()
        + r.per_device.iter().map(|p| p.part.as_ref().map_or(0, |p| p.ciphertext.len())).sum::<usize>();
    if total > limits.max_envelope_bytes {
        return Err(over_limit("ciphertext", limits.max_envelope_bytes as u64, total as u64));
    }
    let mut per_device = Vec::with_capacity(r.per_device.len());
    for (i, p) in r.per_device.into_iter().enumerate() {
        let user = user_id(&format!("per_device[{i}].user_id"), &p.user_id, limits)?;
        let part = p.part.ok_or_else(|| invalid_field(format!("per_device[{i}].part"), "EMPTY", "part is required"))?;
        let parsed = parts(vec![part], limits)
            .map_err(|_| invalid_field(format!("per_device[{i}].part"), "BAD_PART", "malformed device part"))?;
        per_device.extend(parsed.into_iter().map(|p| (user.clone(), p)));
    }
    Ok(GroupSend {
        sender,
        sender_user,
        sender_device,
        group,
        message_id,
        content_type,
        ttl_ms,
        ciphertext: r.ciphertext.into(),
        per_device,
        traceparent: None,
    })
}

pub fn group_id(s: &str) -> Result<GroupId, Status> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid_field("group_id", "BAD_CHARACTERS", "group_id must be 1..=64 bytes of printable ASCII"));
    }
    Ok(GroupId::new(s))
}

/// Group members with their roles; an unspecified role is a plain member.
pub fn group_members(
    field: &str,
    list: Vec<v1::GroupMember>,
    limits: &EdgeLimits,
) -> Result<Vec<(UserId, Role)>, Status> {
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        let user = user_id(&format!("{field}[{i}].user_id"), &m.user_id, limits)?;
        let role = match v1::GroupRole::try_from(m.role) {
            Ok(v1::GroupRole::Admin) => Role::Admin,
            Ok(v1::GroupRole::Member) | Ok(v1::GroupRole::Unspecified) => Role::Member,
            Err(_) => return Err(invalid_field(format!("{field}[{i}].role"), "OUT_OF_RANGE", "unknown role")),
        };
        out.push((user, role));
    }
    Ok(out)
}
