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

/// One exported span: ids in hex, its name, and its `node_id` attribute.
#[derive(Clone, Debug)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    node_id: Option<i64>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Exported>>>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let node_id = s.attributes.iter().find(|kv| kv.key == "node_id").and_then(|kv| {
                        match kv.value.as_ref()?.value.as_ref()? {
                            Value::IntValue(v) => Some(*v),
                            // tracing-opentelemetry exports u64 fields as strings.
                            Value::StringValue(v) => v.parse().ok(),
                            _ => None,
                        }
                    });
                    spans.push(Exported {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        node_id,
                    });
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

    let mut spans: Vec<Exported> = Vec::new();
    for _ in 0..50 {
        guard.flush();
        spans = receiver.0.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        if spans.iter().any(|s| s.name == "deliver") && spans.iter().any(|s| s.name == "forward") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let find = |name: &str| {
        spans.iter().find(|s| s.name == name).cloned().unwrap_or_else(|| panic!("no {name} span: {spans:#?}"))
    };
    // The request on the follower, a child of the provider's own span.
    let grpc = find("/interop_router.v1.Messaging/Send");
    assert_eq!(grpc.parent_span_id, "00f067aa0ba902b7", "the server span continues the caller's trace");
    assert_eq!(grpc.node_id, Some(followers[0] as i64), "{grpc:?}");
    let send = find("send");
    assert_eq!(send.parent_span_id, grpc.span_id);
    // The leader's span for the forwarded command (it went in a batch with
    // others, each carrying the trace context of its own request).
    let forward = find("forward");
    assert_eq!(forward.parent_span_id, send.span_id, "the forward continues the send");
    assert_eq!(forward.node_id, Some(leader as i64), "{forward:?}");
    // The delivery on the third node, from the context stored with the envelope.
    let deliver = find("deliver");
    assert_eq!(deliver.parent_span_id, send.span_id, "the delivery continues the send");
    assert_eq!(deliver.node_id, Some(followers[1] as i64), "{deliver:?}");
    // The node span only labels log lines: never exported.
    assert!(receiver.0.lock().unwrap().iter().all(|s| s.name != "node"));
    tc.shutdown().await;
}
