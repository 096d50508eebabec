//! Exporting tracing spans to an OpenTelemetry collector over OTLP/gRPC.

use std::fmt;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use serde::Deserialize;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::TelemetryError;

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to send traces, from the agent's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelConfig {
    /// The collector's OTLP/gRPC endpoint, such as `http://127.0.0.1:4317`;
    /// no export when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The `service.name` resource attribute of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_service_name() -> String {
    "debvisor-agent".to_owned()
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: default_service_name(),
        }
    }
}

impl OtelConfig {
    /// Checks the endpoint: a plain `http://` URI with a host (the collector
    /// runs on the node or next to it; TLS to it is not supported).
    pub fn validate(&self) -> Result<(), TelemetryError> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(());
        };
        let invalid = |reason| TelemetryError::OtelEndpoint {
            endpoint: endpoint.clone(),
            reason,
        };
        let uri: http::Uri = endpoint.parse().map_err(|_| invalid("not a URI"))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("only http:// endpoints are supported"));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        Ok(())
    }
}

/// Keeps the span pipeline of [`otel_layer`]: flush it before exiting, or
/// spans still in its batch are lost.
#[derive(Clone)]
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl fmt::Debug for OtelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelGuard").finish_non_exhaustive()
    }
}

impl OtelGuard {
    /// Exports the spans ended so far.
    pub async fn force_flush(&self) -> Result<(), TelemetryError> {
        let provider = self.provider.clone();
        blocking(move || provider.force_flush()).await
    }

    /// Exports the remaining spans and stops the pipeline.
    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        let provider = self.provider;
        blocking(move || provider.shutdown()).await
    }
}

/// Runs a call that blocks until the batch task, which runs on the Tokio
/// runtime, answers: off the runtime's threads, so it cannot starve it.
async fn blocking(call: impl FnOnce() -> Result<(), OTelSdkError> + Send + 'static) -> Result<(), TelemetryError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|error| OTelSdkError::InternalFailure(error.to_string()))
        .and_then(|result| result)
        .map_err(TelemetryError::OtelFlush)
}

/// A `tracing` layer exporting spans over OTLP/gRPC (tonic) to
/// `cfg.endpoint` through a batch span processor running on the current
/// Tokio runtime, and the guard that flushes it; `None` when no endpoint is
/// configured.
///
/// Must be called inside a Tokio runtime. Filter out the exporter's own
/// transport (`h2`, `hyper`, `tonic`, `tower` at trace level) so that
/// exporting spans does not make more.
pub fn otel_layer<S>(cfg: &OtelConfig) -> Result<Option<(impl Layer<S> + use<S>, OtelGuard)>, TelemetryError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    cfg.validate()?;
    let Some(endpoint) = &cfg.endpoint else {
        return Ok(None);
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(TelemetryError::OtelExporter)?;
    let processor = BatchSpanProcessor::builder(exporter, Tokio).build();
    let resource = Resource::builder().with_service_name(cfg.service_name.clone()).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok(Some((layer, OtelGuard { provider })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_plain_http() {
        for endpoint in [
            "https://collector:4317",
            "127.0.0.1:4317",
            "not a uri",
            "unix:/run/otel.sock",
        ] {
            let cfg = OtelConfig {
                endpoint: Some(endpoint.into()),
                ..OtelConfig::default()
            };
            assert!(
                matches!(cfg.validate(), Err(TelemetryError::OtelEndpoint { .. })),
                "{endpoint}"
            );
        }
        let cfg = OtelConfig {
            endpoint: Some("http://127.0.0.1:4317".into()),
            ..OtelConfig::default()
        };
        cfg.validate().unwrap();
    }

    #[test]
    fn config_parses_strictly() {
        let cfg: OtelConfig = toml::from_str("endpoint = \"http://[::1]:4317\"").unwrap();
        assert_eq!(cfg.service_name, "debvisor-agent");
        assert!(toml::from_str::<OtelConfig>("endpont = \"x\"").is_err());
        assert_eq!(toml::from_str::<OtelConfig>("").unwrap(), OtelConfig::default());
    }

    #[test]
    fn no_endpoint_no_layer() {
        let layer = otel_layer::<tracing_subscriber::Registry>(&OtelConfig::default()).unwrap();
        assert!(layer.is_none());
    }

    #[test]
    fn an_endpoint_needs_a_runtime() {
        let cfg = OtelConfig {
            endpoint: Some("http://127.0.0.1:4317".into()),
            ..OtelConfig::default()
        };
        let result = otel_layer::<tracing_subscriber::Registry>(&cfg);
        assert!(matches!(result, Err(TelemetryError::NoRuntime)));
    }
}
