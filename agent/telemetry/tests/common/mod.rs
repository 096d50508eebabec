//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The value of one sample of an OpenMetrics exposition, `series` being the
/// metric name with its labels exactly as encoded.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

/// Waits until `check` holds, for at most 5 s (servers finish recording a
/// call just after the client has its answer).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until the metric sample `series` of `metrics` equals `expected`.
pub async fn sample_becomes(metrics: &debvisor_telemetry::Metrics, series: &str, expected: f64) {
    eventually(series, || {
        let value = sample(&metrics.encode(), series);
        async move { value == Some(expected) }
    })
    .await;
    assert_eq!(sample(&metrics.encode(), series), Some(expected), "{series}");
}

/// A channel to a gRPC server on a Unix socket.
pub async fn unix_channel(path: PathBuf) -> Channel {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect to the Unix socket")
}

/// A channel to a gRPC server on TCP.
pub async fn tcp_channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect over TCP")
}
