//! A minimal HTTP/1.1 server for Prometheus scrapes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::Metrics;

/// The content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (out of file descriptors…) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
///
/// Other paths get 404 and other methods on `/metrics` get 405. Open
/// connections are closed when `shutdown` completes. Fails only when the
/// listener itself is unusable; a failed `accept` is logged and retried.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) if error.kind() == io::ErrorKind::InvalidInput => return Err(error),
                    Err(error) => {
                        tracing::warn!(%error, "Cannot accept a metrics connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let metrics = metrics.clone();
                let connection = http.serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |request| {
                        let response = respond(&metrics, &request);
                        async move { Ok::<_, Infallible>(response) }
                    }),
                );
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "Metrics connection failed");
                    }
                });
            }
        }
    }
    connections.shutdown().await;
    Ok(())
}

fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let builder = Response::builder();
    let response = if request.uri().path() != "/metrics" {
        builder
            .status(StatusCode::NOT_FOUND)
            .body(Full::from("Not found; metrics are at /metrics\n"))
    } else if request.method() != Method::GET {
        builder
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET")
            .body(Full::from("Only GET is allowed\n"))
    } else {
        builder
            .header(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)
            .body(Full::from(metrics.encode()))
    };
    response.expect("static status and header values are valid")
}
