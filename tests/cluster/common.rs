//! Shared helpers for the cluster tests.

use router_sdk::v1::{ContentType, DeviceCiphertext, MailboxEntry, SendRequest, mailbox_entry};
use router_sdk::{RouterClient, Subscription};
use std::time::Duration;

/// Registers `user` with the given (device id, registration id) pairs.
pub async fn setup_user(client: &RouterClient, user: &str, devices: &[(u32, u32)]) {
    client.register_user(user).await.expect("register user");
    for (d, r) in devices {
        client.register_device(user, *d, *r).await.expect("register device");
    }
}

/// A message addressed to every given device, with recognisable ciphertext.
pub fn message(id: &str, recipient: &str, devices: &[(u32, u32)]) -> SendRequest {
    SendRequest {
        message_id: id.into(),
        recipient_user_id: recipient.into(),
        content_type: ContentType::Message as i32,
        ttl_seconds: 0,
        parts: devices
            .iter()
            .map(|(d, r)| DeviceCiphertext {
                device_id: *d,
                registration_id: *r,
                message_type: 2,
                ciphertext: format!("ciphertext of {id} for device {d}").into_bytes().into(),
            })
            .collect(),
        sender_user_id: String::new(),
        sender_device_id: 0,
    }
}

pub fn message_id_of(e: &MailboxEntry) -> String {
    match &e.kind {
        Some(mailbox_entry::Kind::Envelope(env)) => env.message_id.clone(),
        other => panic!("expected an envelope, got {other:?}"),
    }
}

/// Next entry, or panics after `timeout`.
pub async fn next_within(sub: &mut Subscription, timeout: Duration) -> MailboxEntry {
    tokio::time::timeout(timeout, sub.next()).await.expect("entry within timeout").expect("receive")
}

/// Asserts that nothing arrives within `wait`.
pub async fn assert_quiet(sub: &mut Subscription, wait: Duration) {
    if let Ok(r) = tokio::time::timeout(wait, sub.next()).await {
        panic!("expected no further entry, got {r:?}");
    }
}
