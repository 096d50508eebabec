//! `/metrics` over HTTP/1.1.

use debvisor_telemetry::{Metrics, OPENMETRICS_CONTENT_TYPE, serve_metrics};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Sends one raw request and returns the whole response.
async fn exchange(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn metrics_are_served_and_other_requests_refused() {
    let metrics = Metrics::new();
    let health_checks = Counter::<u64>::default();
    metrics
        .registry()
        .register("debvisor_health_checks", "Health checks run", health_checks.clone());
    health_checks.inc_by(3);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_metrics(listener, metrics.clone(), async {
        stopped.await.ok();
    }));

    let response = exchange(addr, "GET", "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let content_type = format!("content-type: {OPENMETRICS_CONTENT_TYPE}\r\n");
    assert!(response.contains(&content_type), "{response}");
    assert!(response.contains("# TYPE debvisor_grpc_message_bytes counter"));
    assert!(response.contains("debvisor_health_checks_total 3\n"));
    assert!(response.ends_with("# EOF\n"));

    let response = exchange(addr, "GET", "/metrics?x=1").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let response = exchange(addr, "GET", "/").await;
    assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"), "{response}");
    let response = exchange(addr, "POST", "/metrics").await;
    assert!(
        response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{response}"
    );
    assert!(response.contains("allow: GET\r\n"), "{response}");

    // An idle keep-alive connection does not hold up shutdown.
    let _idle = TcpStream::connect(addr).await.unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
