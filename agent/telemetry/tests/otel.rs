//! Spans of gRPC calls exported to an in-test OTLP/gRPC collector.

mod common;

use std::sync::{Arc, Mutex};

use common::{eventually, tcp_channel};
use debvisor_telemetry::{OtelConfig, TraceLayer, otel_layer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// Records what it is sent.
#[derive(Clone, Default)]
struct Collector {
    exports: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        self.exports.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// The exported spans with the `service.name` of their resource.
    fn spans(&self) -> Vec<(String, Span)> {
        let exports = self.exports.lock().unwrap();
        let mut spans = Vec::new();
        for resource_spans in exports.iter().flat_map(|e| &e.resource_spans) {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|r| string_attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in &resource_spans.scope_spans {
                for span in &scope_spans.spans {
                    spans.push((service_name.clone(), span.clone()));
                }
            }
        }
        spans
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    let kv = attributes.iter().find(|kv| kv.key == key)?;
    let AnyValue { value } = kv.value.as_ref()?;
    value.as_ref()
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        Value::StringValue(value) => Some(value.clone()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn serve<S>(service: S) -> std::net::SocketAddr
where
    S: tonic::server::NamedService
        + tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(TraceLayer::new())
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_exported_as_a_server_span() {
    let collector = Collector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let cfg = OtelConfig {
        endpoint: Some(format!("http://{collector_addr}")),
        service_name: "debvisor-test".into(),
    };
    let (layer, guard) = otel_layer::<tracing_subscriber::Registry>(&cfg)
        .unwrap()
        .expect("an endpoint gives a layer");
    let filter = Targets::new().with_target("debvisor_telemetry", tracing::Level::INFO);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer.with_filter(filter))).unwrap();

    // The agent's server: the health service behind the trace layer
    // (the collector above has no trace layer, so exporting adds no spans).
    let (_reporter, health) = tonic_health::server::health_reporter();
    let addr = serve(health).await;
    let mut client = HealthClient::new(tcp_channel(addr).await);
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    client.check(request).await.unwrap();
    let status = client
        .check(HealthCheckRequest { service: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    eventually("two exported spans", || {
        let guard = guard.clone();
        let collector = collector.clone();
        async move {
            guard.force_flush().await.unwrap();
            collector.spans().len() >= 2
        }
    })
    .await;

    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for (service_name, span) in &spans {
        assert_eq!(service_name, "debvisor-test");
        assert_eq!(span.name, "grpc.health.v1.Health/Check");
        assert_eq!(span.kind, SpanKind::Server as i32);
        let attrs = &span.attributes;
        assert_eq!(string_attribute(attrs, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(
            string_attribute(attrs, "rpc.service").as_deref(),
            Some("grpc.health.v1.Health")
        );
        assert_eq!(string_attribute(attrs, "rpc.method").as_deref(), Some("Check"));
    }
    let (_, continued) = spans
        .iter()
        .find(|(_, span)| hex(&span.trace_id) == TRACE_ID)
        .expect("a span in the caller's trace");
    assert_eq!(hex(&continued.parent_span_id), PARENT_ID);
    assert_eq!(
        attribute(&continued.attributes, "rpc.grpc.status_code"),
        Some(&Value::IntValue(0))
    );
    let (_, fresh) = spans
        .iter()
        .find(|(_, span)| hex(&span.trace_id) != TRACE_ID)
        .expect("a span in a new trace");
    assert!(fresh.parent_span_id.is_empty());
    assert_eq!(
        attribute(&fresh.attributes, "rpc.grpc.status_code"),
        Some(&Value::IntValue(5))
    );

    guard.shutdown().await.unwrap();
}
