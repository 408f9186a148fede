//! OpenTelemetry export against a real OTLP/gRPC receiver started by the
//! test: one trace, started by the provider's `traceparent`, shows the send
//! on one node, the forward and commit on the leader, and the delivery on a
//! third node. Its own binary: the tracing subscriber is process-global.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use router_node::telemetry::{self, TelemetryConfig};
use router_proto::v1::messaging_client::MessagingClient;
use router_proto::v1::{ContentType, DeviceCiphertext, SendRequest};
use router_testkit::TestCluster;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// (trace id hex, span name) of every exported span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, String)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let id: String = s.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    spans.push((id, s.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_shows_send_commit_and_delivery_across_nodes() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    let cfg = TelemetryConfig { otlp_endpoint: Some(format!("http://{addr}")), ..Default::default() };
    let guard = telemetry::init(&cfg, "info,openraft=error").unwrap();

    let tc = TestCluster::start(3).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let followers: Vec<u64> = tc.all_nodes().into_iter().filter(|n| *n != leader).collect();
    let beta = tc.client_on("beta", &[followers[1]]);
    beta.register_user("handle:lou").await.unwrap();
    beta.register_device("handle:lou", 1, 6).await.unwrap();

    // The provider sends to a follower with its own trace context.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let a = &tc.cluster.provider_certs["alpha"];
    let mut client = MessagingClient::new(tc.raw_channel(followers[0], &a.cert, &a.key));
    let mut req = tonic::Request::new(SendRequest {
        message_id: "traced-1".into(),
        recipient_user_id: "handle:lou".into(),
        content_type: ContentType::Message as i32,
        ttl_seconds: 0,
        parts: vec![DeviceCiphertext {
            device_id: 1,
            registration_id: 6,
            message_type: 2,
            ciphertext: b"z".to_vec().into(),
        }],
        sender_user_id: String::new(),
        sender_device_id: 0,
    });
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    client.send(req).await.unwrap();
    // Delivered on the other follower.
    let mut sub = beta.subscribe(8);
    tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap();

    let mut names = Vec::new();
    for _ in 0..50 {
        guard.flush();
        names = receiver.0.lock().unwrap().iter().filter(|(t, _)| t == trace_id).map(|(_, n)| n.clone()).collect();
        if names.iter().any(|n| n == "deliver") && names.iter().any(|n| n == "forward") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(names.iter().any(|n| n == "/interop_router.v1.Messaging/Send"), "send span missing: {names:?}");
    // The leader's span for the forwarded command (it went in a batch with
    // others, each carrying the trace context of its own request).
    assert!(names.iter().any(|n| n == "forward"), "forward span missing: {names:?}");
    assert!(names.iter().any(|n| n == "deliver"), "delivery span missing: {names:?}");
    tc.shutdown().await;
}
