//! Who may do what, and every malformed request gets a precise status and
//! changes nothing.

use crate::common::*;
use router_proto::v1::admin_client::AdminClient;
use router_proto::v1::directory_client::DirectoryClient;
use router_proto::v1::messaging_client::MessagingClient;
use router_proto::v1::peer_client::PeerClient;
use router_proto::v1::prekeys_client::PrekeysClient;
use router_proto::v1::*;
use router_sdk::SdkError;
use router_testkit::TestCluster;
use router_testkit::fixtures::DeviceIdentity;
use std::time::Duration;
use tonic::Code;

fn reason_of(status: &tonic::Status) -> (String, String) {
    use prost::Message;
    let d = ErrorDetail::decode(status.details()).unwrap_or_default();
    (d.reason, d.field)
}

fn expect_rejected(r: Result<impl std::fmt::Debug, SdkError>, code: Code, reason: &str) {
    match r {
        Err(SdkError::Rejected { code: c, reason: got, .. }) => {
            assert_eq!((c, got.as_str()), (code, reason));
        }
        other => panic!("expected {code:?} {reason}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_matrix() {
    let tc = TestCluster::start(3).await.unwrap();
    let alpha = tc.client("alpha");
    let beta = tc.client("beta");
    setup_user(&alpha, "handle:alice", &[(1, 10)]).await;
    let mut keys = DeviceIdentity::new(3);

    // Another provider may not touch alpha's user.
    expect_rejected(beta.register_user("handle:alice").await, Code::AlreadyExists, "USER_TAKEN");
    expect_rejected(beta.register_device("handle:alice", 2, 20).await, Code::PermissionDenied, "NOT_OWNER");
    expect_rejected(beta.remove_device("handle:alice", 1).await, Code::PermissionDenied, "NOT_OWNER");
    expect_rejected(beta.deregister_user("handle:alice").await, Code::PermissionDenied, "NOT_OWNER");
    expect_rejected(
        beta.upload_prekeys(keys.upload("handle:alice", 1, 1, 3, false)).await,
        Code::PermissionDenied,
        "NOT_OWNER",
    );
    expect_rejected(beta.prekey_count("handle:alice", 1).await, Code::PermissionDenied, "NOT_OWNER");
    // The owner may.
    alpha.upload_prekeys(keys.upload("handle:alice", 1, 1, 3, false)).await.unwrap();

    // Acks only ever touch the caller's own mailbox.
    setup_user(&beta, "handle:bob", &[(1, 11)]).await;
    let sent = beta.send(message("to-alice", "handle:alice", &[(1, 10)])).await.unwrap();
    let acked = beta.ack(vec![sent.mailbox_seq]).await.unwrap();
    assert_eq!((acked.removed, acked.unknown), (0, 1));
    let mut sub = alpha.subscribe(8);
    assert_eq!(message_id_of(&next_within(&mut sub, Duration::from_secs(10)).await), "to-alice");

    // A provider with a valid certificate that was never onboarded.
    let delta = tc.cluster.pki.issue_provider("delta").unwrap();
    let ch = tc.raw_channel(1, &delta.cert, &delta.key);
    let st = DirectoryClient::new(ch.clone())
        .register_user(RegisterUserRequest { user_id: "handle:d".into() })
        .await
        .unwrap_err();
    assert_eq!((st.code(), reason_of(&st).0.as_str()), (Code::PermissionDenied, "PROVIDER_NOT_ONBOARDED"));
    let st =
        DirectoryClient::new(ch.clone()).resolve(ResolveRequest { user_id: "handle:alice".into() }).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    let st = MessagingClient::new(ch.clone()).receive(ReceiveRequest { window: 0 }).await.unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);

    // An operator certificate is not a provider identity.
    let op = &tc.cluster.operator_cert;
    let ch = tc.raw_channel(1, &op.cert, &op.key);
    let st = PrekeysClient::new(ch)
        .fetch_bundles(FetchBundlesRequest { user_id: "handle:alice".into(), device_id: 0 })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);

    // A provider certificate reaches neither the admin nor the Raft API.
    let a = &tc.cluster.provider_certs["alpha"];
    let peer_port = |cert: &std::path::Path, key: &std::path::Path| {
        let read = |p: &std::path::Path| std::fs::read(p).unwrap();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&tc.cluster.ca)))
            .identity(tonic::transport::Identity::from_pem(read(cert), read(key)))
            .domain_name("localhost");
        tonic::transport::Endpoint::from_shared(format!("https://{}", tc.cluster.node(1).peer_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy()
    };
    let st = AdminClient::new(peer_port(&a.cert, &a.key))
        .add_provider(AddProviderRequest { provider_id: "alpha2".into() })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    let st = PeerClient::new(peer_port(&a.cert, &a.key))
        .vote(RaftPayload { data: vec![1, 2, 3].into(), format_version: 0, incarnation: 0 })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    // An operator may use the admin API.
    let status = tc.admin(1).status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.voters.len(), 3);
    assert!(status.has_leader);
    tc.shutdown().await;
}

/// One malformed request, what it must be answered with, and the field named.
struct Case {
    name: &'static str,
    code: Code,
    reason: &'static str,
    field: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_precise_errors_and_change_nothing() {
    let tc = TestCluster::start(3).await.unwrap();
    let alpha = tc.client("alpha");
    let beta = tc.client("beta");
    setup_user(&beta, "handle:bob", &[(1, 100)]).await;
    setup_user(&alpha, "handle:alice", &[(1, 10)]).await;
    beta.register_user("handle:nodevice").await.unwrap();
    let mut keys = DeviceIdentity::new(5);
    alpha.upload_prekeys(keys.upload("handle:alice", 1, 1, 5, true)).await.unwrap();
    tc.wait_until(Duration::from_secs(5), |s| {
        s.user(&router_core::UserId::new("handle:alice"))
            .is_some_and(|u| u.devices.get(&1).is_some_and(|d| d.keys.is_some()))
    })
    .await
    .unwrap();
    let before = tc.cluster.node(1).node.as_ref().unwrap().ctx().read(|s| s.clone());

    let a = &tc.cluster.provider_certs["alpha"];
    let ch = tc.raw_channel(1, &a.cert, &a.key);
    let mut dir = DirectoryClient::new(ch.clone());
    let mut msg = MessagingClient::new(ch.clone()).max_encoding_message_size(8 * 1024 * 1024);
    let mut pk = PrekeysClient::new(ch.clone());
    let good = message("ok-id", "handle:bob", &[(1, 100)]);
    let send = |f: fn(&mut SendRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let good_upload = keys.upload("handle:alice", 1, 1000, 3, true);
    let upload = |f: &dyn Fn(&mut UploadPrekeysRequest)| {
        let mut r = good_upload.clone();
        f(&mut r);
        r
    };

    let mut results: Vec<(Case, tonic::Status)> = Vec::new();
    macro_rules! case {
        ($name:expr, $code:expr, $reason:expr, $field:expr, $call:expr) => {
            let st = $call.await.expect_err($name);
            results.push((Case { name: $name, code: $code, reason: $reason, field: $field }, st));
        };
    }
    use Code::*;
    case!(
        "empty user id",
        InvalidArgument,
        "EMPTY",
        "user_id",
        dir.register_user(RegisterUserRequest { user_id: "".into() })
    );
    case!(
        "user id too long",
        InvalidArgument,
        "TOO_LARGE",
        "user_id",
        dir.register_user(RegisterUserRequest { user_id: "u".repeat(129) })
    );
    case!(
        "control character in user id",
        InvalidArgument,
        "BAD_CHARACTERS",
        "user_id",
        dir.register_user(RegisterUserRequest { user_id: "bad\u{7}id".into() })
    );
    case!(
        "device id 0",
        InvalidArgument,
        "OUT_OF_RANGE",
        "device_id",
        dir.register_device(RegisterDeviceRequest { user_id: "handle:alice".into(), device_id: 0, registration_id: 5 })
    );
    case!(
        "device id too large",
        InvalidArgument,
        "OUT_OF_RANGE",
        "device_id",
        dir.register_device(RegisterDeviceRequest {
            user_id: "handle:alice".into(),
            device_id: 128,
            registration_id: 5
        })
    );
    case!(
        "registration id 0",
        InvalidArgument,
        "OUT_OF_RANGE",
        "registration_id",
        dir.register_device(RegisterDeviceRequest { user_id: "handle:alice".into(), device_id: 2, registration_id: 0 })
    );
    case!(
        "registration id too large",
        InvalidArgument,
        "OUT_OF_RANGE",
        "registration_id",
        dir.register_device(RegisterDeviceRequest {
            user_id: "handle:alice".into(),
            device_id: 2,
            registration_id: 16381
        })
    );
    case!(
        "unknown device removed",
        NotFound,
        "DEVICE_NOT_FOUND",
        "",
        dir.remove_device(RemoveDeviceRequest { user_id: "handle:alice".into(), device_id: 9 })
    );
    case!(
        "resolve unknown user",
        NotFound,
        "USER_NOT_FOUND",
        "",
        dir.resolve(ResolveRequest { user_id: "handle:ghost".into() })
    );
    case!("empty message id", InvalidArgument, "EMPTY", "message_id", msg.send(send(|r| r.message_id.clear())));
    case!(
        "message id with a space",
        InvalidArgument,
        "BAD_CHARACTERS",
        "message_id",
        msg.send(send(|r| r.message_id = "a b".into()))
    );
    case!(
        "message id too long",
        InvalidArgument,
        "TOO_LARGE",
        "message_id",
        msg.send(send(|r| r.message_id = "m".repeat(65)))
    );
    case!("no parts", InvalidArgument, "EMPTY", "parts", msg.send(send(|r| r.parts.clear())));
    case!(
        "duplicate device part",
        InvalidArgument,
        "DUPLICATE",
        "parts[1].device_id",
        msg.send(send(|r| {
            let p = r.parts[0].clone();
            r.parts.push(p)
        }))
    );
    case!(
        "too many parts",
        InvalidArgument,
        "TOO_LARGE",
        "parts",
        msg.send(send(|r| {
            let p = r.parts[0].clone();
            r.parts = (1..=17).map(|d| DeviceCiphertext { device_id: d, ..p.clone() }).collect()
        }))
    );
    case!(
        "envelope too large",
        InvalidArgument,
        "TOO_LARGE",
        "parts[].ciphertext",
        msg.send(send(|r| r.parts[0].ciphertext = vec![7u8; 256 * 1024 + 1].into()))
    );
    case!(
        "empty ciphertext",
        InvalidArgument,
        "EMPTY",
        "parts[0].ciphertext",
        msg.send(send(|r| r.parts[0].ciphertext = Default::default()))
    );
    case!(
        "unspecified content type",
        InvalidArgument,
        "OUT_OF_RANGE",
        "content_type",
        msg.send(send(|r| r.content_type = 0))
    );
    case!(
        "unknown content type",
        InvalidArgument,
        "OUT_OF_RANGE",
        "content_type",
        msg.send(send(|r| r.content_type = 99))
    );
    case!(
        "ttl above maximum",
        InvalidArgument,
        "TOO_LARGE",
        "ttl_seconds",
        msg.send(send(|r| r.ttl_seconds = 31 * 24 * 3600))
    );
    case!(
        "part registration id out of range",
        InvalidArgument,
        "OUT_OF_RANGE",
        "parts[0].registration_id",
        msg.send(send(|r| r.parts[0].registration_id = 20000))
    );
    case!(
        "send to unknown device",
        FailedPrecondition,
        "DEVICE_MISMATCH",
        "",
        msg.send(send(|r| r.parts[0].device_id = 3))
    );
    case!(
        "send to a user without devices",
        NotFound,
        "NO_DEVICES",
        "",
        msg.send(send(|r| r.recipient_user_id = "handle:nodevice".into()))
    );
    case!(
        "sender device without sender user",
        InvalidArgument,
        "UNEXPECTED",
        "sender_device_id",
        msg.send(send(|r| r.sender_device_id = 1))
    );
    case!(
        "sender user without sender device",
        InvalidArgument,
        "OUT_OF_RANGE",
        "sender_device_id",
        msg.send(send(|r| r.sender_user_id = "handle:alice".into()))
    );
    case!(
        "sender user of another provider",
        PermissionDenied,
        "NOT_OWNER",
        "",
        msg.send(send(|r| {
            r.sender_user_id = "handle:bob".into();
            r.sender_device_id = 1
        }))
    );
    case!("empty ack", InvalidArgument, "EMPTY", "seqs", msg.ack(AckRequest { seqs: vec![] }));
    case!(
        "ack batch too large",
        InvalidArgument,
        "TOO_LARGE",
        "seqs",
        msg.ack(AckRequest { seqs: (0..1025).collect() })
    );
    case!(
        "receive window too large",
        InvalidArgument,
        "TOO_LARGE",
        "window",
        msg.receive(ReceiveRequest { window: 1_000_000 })
    );
    case!(
        "identity key too short",
        InvalidArgument,
        "BAD_KEY",
        "identity_key",
        pk.upload_prekeys(upload(&|r| r.identity_key = vec![5u8; 32].into()))
    );
    case!(
        "identity key wrong type",
        InvalidArgument,
        "BAD_KEY",
        "identity_key",
        pk.upload_prekeys(upload(&|r| {
            let mut k = r.identity_key.to_vec();
            k[0] = 0x06;
            r.identity_key = k.into()
        }))
    );
    case!(
        "signed prekey wrong length",
        InvalidArgument,
        "BAD_KEY",
        "signed_prekey.public_key",
        pk.upload_prekeys(upload(&|r| r.signed_prekey.as_mut().unwrap().public_key = vec![5u8; 34].into()))
    );
    case!(
        "signature wrong length",
        InvalidArgument,
        "BAD_KEY",
        "signed_prekey.signature",
        pk.upload_prekeys(upload(&|r| r.signed_prekey.as_mut().unwrap().signature = vec![0u8; 63].into()))
    );
    case!(
        "signature by nobody",
        InvalidArgument,
        "BAD_SIGNATURE",
        "signed_prekey.signature",
        pk.upload_prekeys(upload(&|r| r.signed_prekey.as_mut().unwrap().signature = vec![9u8; 64].into()))
    );
    case!(
        "one-time key wrong type",
        InvalidArgument,
        "BAD_KEY",
        "one_time_prekeys[1].public_key",
        pk.upload_prekeys(upload(&|r| {
            let mut k = r.one_time_prekeys[1].public_key.to_vec();
            k[0] = 0;
            r.one_time_prekeys[1].public_key = k.into()
        }))
    );
    case!(
        "duplicate one-time key id",
        InvalidArgument,
        "DUPLICATE",
        "one_time_prekeys[2].key_id",
        pk.upload_prekeys(upload(&|r| r.one_time_prekeys[2].key_id = r.one_time_prekeys[0].key_id))
    );
    case!(
        "kyber key truncated",
        InvalidArgument,
        "BAD_KEY",
        "kyber_one_time_prekeys[0].public_key",
        pk.upload_prekeys(upload(&|r| {
            let k = r.kyber_one_time_prekeys[0].public_key.slice(0..100);
            r.kyber_one_time_prekeys[0].public_key = k
        }))
    );
    case!(
        "too many one-time keys",
        InvalidArgument,
        "TOO_LARGE",
        "one_time_prekeys",
        pk.upload_prekeys(upload(&|r| {
            let k = r.one_time_prekeys[0].clone();
            r.one_time_prekeys = (0..101).map(|i| EcOneTimePrekey { key_id: 5000 + i, ..k.clone() }).collect()
        }))
    );
    case!(
        "already stocked key id",
        InvalidArgument,
        "DUPLICATE_PREKEY_ID",
        "",
        pk.upload_prekeys(upload(&|r| r.one_time_prekeys[0].key_id = 1))
    );
    case!(
        "keys for a foreign user",
        PermissionDenied,
        "NOT_OWNER",
        "",
        pk.upload_prekeys(upload(&|r| r.user_id = "handle:bob".into()))
    );
    case!(
        "keys for an unknown device",
        NotFound,
        "DEVICE_NOT_FOUND",
        "",
        pk.upload_prekeys(upload(&|r| r.device_id = 7))
    );
    case!(
        "count for an unknown user",
        NotFound,
        "USER_NOT_FOUND",
        "",
        pk.prekey_count(PrekeyCountRequest { user_id: "handle:ghost".into(), device_id: 1 })
    );
    case!(
        "claim from an unknown user",
        NotFound,
        "USER_NOT_FOUND",
        "",
        pk.fetch_bundles(FetchBundlesRequest { user_id: "handle:ghost".into(), device_id: 0 })
    );
    case!(
        "claim for an unknown device",
        NotFound,
        "DEVICE_NOT_FOUND",
        "",
        pk.fetch_bundles(FetchBundlesRequest { user_id: "handle:bob".into(), device_id: 4 })
    );
    case!(
        "claim from a user without keys",
        NotFound,
        "NO_KEYS",
        "",
        pk.fetch_bundles(FetchBundlesRequest { user_id: "handle:bob".into(), device_id: 0 })
    );

    let mut failures = Vec::new();
    for (case, st) in &results {
        let (reason, field) = reason_of(st);
        if (st.code(), reason.as_str(), field.as_str()) != (case.code, case.reason, case.field) {
            failures.push(format!(
                "{}: expected {:?}/{}/{:?}, got {:?}/{}/{:?} ({})",
                case.name,
                case.code,
                case.reason,
                case.field,
                st.code(),
                reason,
                field,
                st.message()
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), results.len(), failures.join("\n"));

    // Nothing changed anywhere (apply-level rejections leave the state as it
    // was; only the leader clock may move with the rejected entries).
    tc.wait_until(Duration::from_secs(5), |s| {
        let mut s = s.clone();
        s.clock_ms = before.clock_ms;
        s == before
    })
    .await
    .expect("state unchanged by rejected requests");
    tc.shutdown().await;
}
