//! The crate's error type.

/// What can go wrong while setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A rate limit that can never let a request through, or refills at a
    /// rate that is not a positive finite number.
    #[error("Invalid rate limit: {per_second} requests/s with a burst of {burst} (both must be positive)")]
    InvalidRateLimit {
        /// The configured refill rate.
        per_second: f64,
        /// The configured bucket capacity.
        burst: u32,
    },
    /// The OTLP endpoint is not a plain `http://host:port` URI.
    #[error("Invalid OTLP endpoint {endpoint:?}: {reason}")]
    OtelEndpoint {
        /// The configured endpoint.
        endpoint: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The OTLP exporter needs a Tokio runtime to spawn its batch task on.
    #[error("The OpenTelemetry exporter must be set up inside a Tokio runtime")]
    NoRuntime,
    /// The OTLP exporter could not be built.
    #[error("Cannot build the OTLP span exporter")]
    OtelExporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// Flushing or shutting down the span pipeline failed.
    #[error("Cannot flush the OpenTelemetry span pipeline")]
    OtelFlush(#[source] opentelemetry_sdk::error::OTelSdkError),
}
