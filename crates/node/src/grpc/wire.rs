//! Core -> wire conversions: what the replicated state holds, as the
//! provider API shows it. Incoming requests are validated and converted in
//! `validate.rs`, where the configured limits are known. They live here, not
//! in `router-proto`, so that the wire crate (and with it the SDK every
//! provider builds) does not depend on the state machine.
//!
//! Ciphertexts may live in the node's payload files ([`core::Blob`]): the
//! conversions that carry them read them back and fail with the I/O error
//! when a payload cannot be read. Call them outside the state lock.

use router_core as core;
use router_proto::v1;

pub fn content_type(c: core::ContentType) -> v1::ContentType {
    match c {
        core::ContentType::Message => v1::ContentType::Message,
        core::ContentType::Receipt => v1::ContentType::Receipt,
        core::ContentType::Typing => v1::ContentType::Typing,
        core::ContentType::CallSignaling => v1::ContentType::CallSignaling,
    }
}

pub fn signed_ec_prekey(k: &core::SignedPrekey) -> v1::SignedEcPrekey {
    v1::SignedEcPrekey { key_id: k.key_id, public_key: k.public_key.clone(), signature: k.signature.clone() }
}

pub fn signed_kyber_prekey(k: &core::SignedPrekey) -> v1::SignedKyberPrekey {
    v1::SignedKyberPrekey { key_id: k.key_id, public_key: k.public_key.clone(), signature: k.signature.clone() }
}

pub fn bundle(b: &core::Bundle) -> v1::PrekeyBundle {
    v1::PrekeyBundle {
        device_id: b.device,
        registration_id: b.registration_id,
        identity_key: b.identity_key.clone(),
        signed_prekey: Some(signed_ec_prekey(&b.signed_prekey)),
        one_time_prekey: b
            .one_time
            .as_ref()
            .map(|k| v1::EcOneTimePrekey { key_id: k.key_id, public_key: k.public_key.clone() }),
        kyber_prekey: b.kyber.as_ref().map(signed_kyber_prekey),
        kyber_is_last_resort: b.kyber_is_last_resort,
        one_time_exhausted: b.one_time_exhausted(),
    }
}

pub fn device_ciphertext(p: core::DevicePart) -> std::io::Result<v1::DeviceCiphertext> {
    Ok(v1::DeviceCiphertext {
        device_id: p.device,
        registration_id: p.registration_id,
        message_type: p.message_type,
        ciphertext: p.ciphertext.bytes()?,
    })
}

pub fn envelope(env: core::SendEnvelope) -> std::io::Result<v1::Envelope> {
    Ok(v1::Envelope {
        sender_provider_id: env.sender.0,
        sender_user_id: env.sender_user.map(|u| u.0).unwrap_or_default(),
        message_id: env.message_id.0,
        recipient_user_id: env.recipient.0,
        content_type: content_type(env.content_type) as i32,
        parts: env.parts.into_iter().map(device_ciphertext).collect::<std::io::Result<_>>()?,
        sender_device_id: env.sender_device.unwrap_or(0),
    })
}

pub fn group_message(g: core::GroupDelivery) -> std::io::Result<v1::GroupMessage> {
    Ok(v1::GroupMessage {
        group_id: g.group.0,
        group_seq: g.group_seq,
        epoch: g.epoch,
        sender_provider_id: g.sender.0,
        sender_user_id: g.sender_user.0,
        sender_device_id: g.sender_device,
        message_id: g.message_id.0,
        content_type: content_type(g.content_type) as i32,
        recipient_user_ids: g.recipients.into_iter().map(|u| u.0).collect(),
        ciphertext: g.ciphertext.bytes()?,
        per_device: g
            .per_device
            .into_iter()
            .map(|(u, p)| Ok(v1::GroupDevicePart { user_id: u.0, part: Some(device_ciphertext(p)?) }))
            .collect::<std::io::Result<_>>()?,
    })
}

/// Takes the entry by value: its strings move into the wire form.
pub fn mailbox_entry(e: core::MailboxEntry) -> std::io::Result<v1::MailboxEntry> {
    let kind = match e.item {
        core::MailboxItem::Envelope(env) => v1::mailbox_entry::Kind::Envelope(envelope(env)?),
        core::MailboxItem::Group(g) => v1::mailbox_entry::Kind::Group(group_message(g)?),
        core::MailboxItem::PrekeyLowStock { user, device, one_time_remaining, kyber_one_time_remaining } => {
            v1::mailbox_entry::Kind::LowStock(v1::PrekeyLowStock {
                user_id: user.0,
                device_id: device,
                one_time_prekeys_remaining: one_time_remaining,
                kyber_one_time_prekeys_remaining: kyber_one_time_remaining,
            })
        }
        core::MailboxItem::Expired { message_id, recipient, recipient_provider }
        | core::MailboxItem::Undeliverable {
            message_id,
            recipient,
            reason: core::UndeliverableReason::Expired { recipient_provider },
            ..
        } => v1::mailbox_entry::Kind::Expired(v1::ExpiryReport {
            message_id: message_id.0,
            recipient_user_id: recipient.0,
            recipient_provider_id: recipient_provider.0,
        }),
        core::MailboxItem::Undeliverable {
            message_id,
            recipient,
            reason: core::UndeliverableReason::Refused { reason, detail },
            ..
        } => v1::mailbox_entry::Kind::Undeliverable(v1::UndeliverableReport {
            message_id: message_id.0,
            recipient_user_id: recipient.0,
            reason,
            detail,
        }),
        // Lives only in a peer's outbound queue, which no provider reads;
        // shown as the envelope it carries.
        core::MailboxItem::Outbound { envelope, .. } => v1::mailbox_entry::Kind::Envelope(self::envelope(envelope)?),
    };
    Ok(v1::MailboxEntry {
        seq: e.seq,
        accepted_at_ms: e.accepted_at_ms,
        expires_at_ms: e.expires_at_ms,
        kind: Some(kind),
        ephemeral: false,
    })
}
