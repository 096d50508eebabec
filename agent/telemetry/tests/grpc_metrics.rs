//! The metrics layer and connection counting around a real tonic server.

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use common::{sample, sample_becomes, tcp_channel, unix_channel};
use debvisor_telemetry::{ClientIdentity, IdentityLayer, Metrics};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::UdsConnectInfo;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::health_reporter;

const OK: &str = r#"debvisor_grpc_requests_total{service="grpc.health.v1.Health",method="Check",code="OK"}"#;
const NOT_FOUND: &str =
    r#"debvisor_grpc_requests_total{service="grpc.health.v1.Health",method="Check",code="NOT_FOUND"}"#;
const DURATIONS: &str =
    r#"debvisor_grpc_request_duration_seconds_count{service="grpc.health.v1.Health",method="Check"}"#;

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

fn bytes(direction: &str, stage: &str) -> String {
    format!(r#"debvisor_grpc_message_bytes_total{{direction="{direction}",stage="{stage}"}}"#)
}

/// Serves the health service over TCP with the metrics layer; returns the
/// address and the sender that stops the server.
async fn tcp_server(metrics: &Metrics) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = health_reporter();
    let health = health
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd);
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = metrics.count_connections("tcp", TcpListenerStream::new(listener));
    let router = Server::builder().layer(metrics.layer("tcp")).add_service(health);
    tokio::spawn(async move {
        // Keep the reporter alive with the server.
        let _reporter = _reporter;
        router
            .serve_with_incoming_shutdown(incoming, async {
                stopped.await.ok();
            })
            .await
            .unwrap();
    });
    (addr, stop)
}

#[tokio::test]
async fn tcp_calls_are_counted_by_code() {
    let metrics = Metrics::new();
    let (addr, _stop) = tcp_server(&metrics).await;
    let mut client = HealthClient::new(tcp_channel(addr).await);

    client.check(check("")).await.unwrap();
    let status = client.check(check("nope")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    sample_becomes(&metrics, OK, 1.0).await;
    sample_becomes(&metrics, NOT_FOUND, 1.0).await;
    sample_becomes(&metrics, DURATIONS, 2.0).await;
    sample_becomes(&metrics, r#"debvisor_grpc_requests_in_flight{transport="tcp"}"#, 0.0).await;
    let text = metrics.encode();
    assert_eq!(
        sample(&text, r#"debvisor_grpc_connections{transport="tcp"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"debvisor_grpc_connections_accepted_total{transport="tcp"}"#),
        Some(1.0)
    );
    assert!(text.contains("# UNIT debvisor_grpc_request_duration_seconds seconds"));
    assert!(text.contains(r#"debvisor_grpc_request_duration_seconds_bucket{le="0.0001","#));
    assert!(text.ends_with("# EOF\n"));

    // Requests: empty message (5-byte prefix) and "nope" (6 bytes + 5).
    sample_becomes(&metrics, &bytes("received", "wire"), 16.0).await;
    sample_becomes(&metrics, &bytes("received", "uncompressed"), 6.0).await;
    // Responses: SERVING (2 bytes + 5); NOT_FOUND is trailers-only.
    sample_becomes(&metrics, &bytes("sent", "wire"), 7.0).await;
    sample_becomes(&metrics, &bytes("sent", "uncompressed"), 2.0).await;

    drop(client);
    sample_becomes(&metrics, r#"debvisor_grpc_connections{transport="tcp"}"#, 0.0).await;
}

#[tokio::test]
async fn streaming_calls_end_with_their_stream() {
    let metrics = Metrics::new();
    let (addr, _stop) = tcp_server(&metrics).await;
    let mut client = HealthClient::new(tcp_channel(addr).await);
    let in_flight = r#"debvisor_grpc_requests_in_flight{transport="tcp"}"#;
    let watches = r#"debvisor_grpc_requests_total{service="grpc.health.v1.Health",method="Watch",code="CANCELLED"}"#;

    let mut stream = client.watch(check("")).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    sample_becomes(&metrics, in_flight, 1.0).await;
    assert_eq!(sample(&metrics.encode(), watches), None);

    drop(stream);
    sample_becomes(&metrics, in_flight, 0.0).await;
    sample_becomes(&metrics, watches, 1.0).await;
}

#[tokio::test]
async fn unimplemented_methods_share_one_label_set() {
    let metrics = Metrics::new();
    let (addr, _stop) = tcp_server(&metrics).await;
    let mut grpc = tonic::client::Grpc::new(tcp_channel(addr).await);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<HealthCheckRequest, tonic_health::pb::HealthCheckResponse, _>(
            tonic::Request::new(check("")),
            http::uri::PathAndQuery::from_static("/random.Service/Method123"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    sample_becomes(
        &metrics,
        r#"debvisor_grpc_requests_total{service="unknown",method="unknown",code="UNIMPLEMENTED"}"#,
        1.0,
    )
    .await;
    assert!(!metrics.encode().contains("random.Service"));
}

#[tokio::test]
async fn compressed_messages_count_smaller_on_the_wire() {
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let metrics = Metrics::new();
        let (addr, _stop) = tcp_server(&metrics).await;
        let mut client = HealthClient::new(tcp_channel(addr).await)
            .send_compressed(encoding)
            .accept_compressed(encoding);

        // A compressible request: field 1, 4000 bytes (1 + 2 + 4000 encoded).
        let status = client.check(check(&"a".repeat(4000))).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        sample_becomes(&metrics, &bytes("received", "uncompressed"), 4003.0).await;
        let wire = sample(&metrics.encode(), &bytes("received", "wire")).unwrap();
        assert!(wire < 200.0, "{encoding:?}: {wire} bytes on the wire");

        // The compressed answer still counts its 2 bytes of payload.
        client.check(check("")).await.unwrap();
        sample_becomes(&metrics, &bytes("sent", "uncompressed"), 2.0).await;
        let wire = sample(&metrics.encode(), &bytes("sent", "wire")).unwrap();
        assert!(wire > 7.0, "{encoding:?}: the answer was not compressed");
    }
}

#[tokio::test]
async fn unix_peers_keep_their_credentials_through_the_counter() {
    let metrics = Metrics::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (_reporter, health) = health_reporter();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let identify = {
        let seen = Arc::clone(&seen);
        move |parts: &http::request::Parts| {
            let info = parts.extensions.get::<UdsConnectInfo>()?;
            let uid = info.peer_cred?.uid();
            seen.lock().unwrap().push(uid);
            Some(ClientIdentity(format!("uid:{uid}")))
        }
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .layer(metrics.layer("unix"))
            .layer(IdentityLayer::new(identify))
            .add_service(health)
            .serve_with_incoming_shutdown(
                metrics.count_connections("unix", UnixListenerStream::new(listener)),
                async {
                    stopped.await.ok();
                },
            ),
    );

    let mut client = HealthClient::new(unix_channel(path.clone()).await);
    client.check(check("")).await.unwrap();
    let my_uid = std::fs::metadata(dir.path()).unwrap().uid();
    assert_eq!(*seen.lock().unwrap(), vec![my_uid]);

    sample_becomes(&metrics, OK, 1.0).await;
    sample_becomes(&metrics, r#"debvisor_grpc_requests_in_flight{transport="unix"}"#, 0.0).await;
    let text = metrics.encode();
    assert_eq!(
        sample(&text, r#"debvisor_grpc_connections{transport="unix"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, r#"debvisor_grpc_connections{transport="tcp"}"#), None);

    drop(client);
    sample_becomes(&metrics, r#"debvisor_grpc_connections{transport="unix"}"#, 0.0).await;
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
