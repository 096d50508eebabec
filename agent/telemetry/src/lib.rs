//! The agent's gRPC middleware: Prometheus metrics, per-client rate limiting,
//! OpenTelemetry traces.
//!
//! Every piece is a [`tower::Layer`] that fits
//! [`tonic::transport::Server::builder().layer(..)`](tonic::transport::Server::layer).
//! The first layer added is the outermost one, so the agent stacks them as:
//!
//! ```no_run
//! # async fn run(metrics: debvisor_telemetry::Metrics,
//! #     limit: debvisor_telemetry::RateLimit,
//! #     incoming: tokio_stream::wrappers::UnixListenerStream)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use debvisor_telemetry::{ClientIdentity, IdentityLayer, RateLimitLayer, TraceLayer};
//! use tonic::transport::server::UdsConnectInfo;
//!
//! // Clone one RateLimitLayer into the Unix and the TCP server to share buckets.
//! let rate_limit = RateLimitLayer::new(limit)?;
//! let (_, health) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .layer(TraceLayer::new())
//!     .layer(metrics.layer("unix"))
//!     .layer(IdentityLayer::new(|parts: &http::request::Parts| {
//!         let uid = parts.extensions.get::<UdsConnectInfo>()?.peer_cred?.uid();
//!         Some(ClientIdentity(format!("uid:{uid}")))
//!     }))
//!     .layer(rate_limit.clone())
//!     .add_service(health)
//!     .serve_with_incoming(metrics.count_connections("unix", incoming))
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod conn;
mod error;
mod frames;
mod grpc;
mod http_server;
mod identity;
mod metrics;
mod metrics_body;
mod otel;
mod ratelimit;
mod trace;

pub use conn::Counted;
pub use error::TelemetryError;
pub use http_server::{OPENMETRICS_CONTENT_TYPE, serve_metrics};
pub use identity::{ClientIdentity, IdentityLayer, IdentityService};
pub use metrics::{Metrics, MetricsLayer, MetricsService};
pub use metrics_body::MetricsBody;
pub use otel::{OtelConfig, OtelGuard, otel_layer};
pub use ratelimit::{ClockFn, KeyFn, RateLimit, RateLimitFuture, RateLimitLayer, RateLimitService};
pub use trace::{TraceBody, TraceFuture, TraceLayer, TraceService};
