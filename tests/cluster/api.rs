//! Standard gRPC services on the provider port: health checking and server
//! reflection, so generic tools (grpcurl, grpc_health_probe) work.

use router_testkit::TestCluster;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let tc = TestCluster::start(3).await.unwrap();
    let a = &tc.cluster.provider_certs["alpha"];
    let ch = tc.raw_channel(2, &a.cert, &a.key);

    let mut health = HealthClient::new(ch.clone());
    for service in ["", "interop_router.v1.Messaging", "interop_router.v1.Directory", "interop_router.v1.Prekeys"] {
        let resp = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "service {service:?}");
    }

    let mut reflection = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["interop_router.v1.Directory", "interop_router.v1.Prekeys", "interop_router.v1.Messaging"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    tc.shutdown().await;
}
