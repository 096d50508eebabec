//! Prometheus metrics of the agent's gRPC servers.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response, Uri};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::grpc::{self, Encoding, Outcome};
use crate::metrics_body::{ByteCounters, MetricsBody, RequestBody};

/// Upper bounds of the request duration buckets, in seconds: 100 µs to 10 s.
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    service: String,
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByteLabels {
    direction: &'static str,
    stage: &'static str,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// At most this many methods have their series kept by path; calls to
/// others are recorded through the families' label lookup.
const MAX_METHODS: usize = 256;

/// The series of one method that answered with something other than
/// UNIMPLEMENTED, kept by request path so that a call is recorded without
/// building its label strings again.
struct MethodSeries {
    service: String,
    method: String,
    duration: Histogram,
    ok: Counter,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

struct Inner {
    registry: Mutex<Registry>,
    durations: HistogramFamily,
    requests: Family<CodeLabels, Counter>,
    methods: RwLock<HashMap<String, Arc<MethodSeries>>>,
    in_flight: Family<TransportLabels, Gauge>,
    connections: Family<TransportLabels, Gauge>,
    connections_accepted: Family<TransportLabels, Counter>,
    received: ByteCounters,
    sent: ByteCounters,
}

/// The gRPC metrics of one agent, and the registry they are exposed from.
///
/// Cheap to clone: clones share the same metrics. Series:
///
/// - `debvisor_grpc_request_duration_seconds` histogram {service, method}
/// - `debvisor_grpc_requests_total` counter {service, method, code}
/// - `debvisor_grpc_requests_in_flight` gauge {transport}
/// - `debvisor_grpc_connections` gauge {transport}: open connections
/// - `debvisor_grpc_connections_accepted_total` counter {transport}
///   (not `debvisor_grpc_connections_total`: OpenMetrics would read that as
///   a second family named `debvisor_grpc_connections`)
/// - `debvisor_grpc_message_bytes_total` counter {direction, stage}
///
/// Calls to methods the server does not implement are labelled
/// `service="unknown", method="unknown"` so that clients cannot grow the
/// label sets without bound.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the metrics and registers them in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let durations = HistogramFamily::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "debvisor_grpc_request_duration",
            "Time from receiving a gRPC request to the end of its response",
            Unit::Seconds,
            durations.clone(),
        );
        let requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            "debvisor_grpc_requests",
            "Finished gRPC calls by status code",
            requests.clone(),
        );
        let in_flight = Family::<TransportLabels, Gauge>::default();
        registry.register(
            "debvisor_grpc_requests_in_flight",
            "gRPC calls in progress",
            in_flight.clone(),
        );
        let connections = Family::<TransportLabels, Gauge>::default();
        registry.register(
            "debvisor_grpc_connections",
            "Open gRPC connections",
            connections.clone(),
        );
        let connections_accepted = Family::<TransportLabels, Counter>::default();
        registry.register(
            "debvisor_grpc_connections_accepted",
            "Accepted gRPC connections",
            connections_accepted.clone(),
        );
        let bytes = Family::<ByteLabels, Counter>::default();
        registry.register_with_unit(
            "debvisor_grpc_message",
            "gRPC message bytes: wire counts the framed body, uncompressed the decompressed payloads",
            Unit::Bytes,
            bytes.clone(),
        );
        let counters = |direction| ByteCounters {
            wire: bytes.get_or_create_owned(&ByteLabels {
                direction,
                stage: "wire",
            }),
            uncompressed: bytes.get_or_create_owned(&ByteLabels {
                direction,
                stage: "uncompressed",
            }),
        };
        let received = counters("received");
        let sent = counters("sent");
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                durations,
                requests,
                methods: RwLock::new(HashMap::new()),
                in_flight,
                connections,
                connections_accepted,
                received,
                sent,
            }),
        }
    }

    /// A tower layer recording the calls of a server listening on
    /// `transport` (`"unix"` or `"tcp"`), for
    /// `tonic::transport::Server::builder().layer(metrics.layer("tcp"))`.
    pub fn layer(&self, transport: &'static str) -> MetricsLayer {
        MetricsLayer {
            metrics: self.clone(),
            in_flight: self.inner.in_flight.get_or_create_owned(&TransportLabels { transport }),
        }
    }

    /// The registry, locked, for other parts of the agent to register their
    /// own metrics in (they are then served with these).
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// All registered metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry()).expect("writing to a String cannot fail");
        out
    }

    /// The open-connections gauge of `transport`, after counting one more
    /// accepted connection.
    pub(crate) fn connection_accepted(&self, transport: &'static str) -> Gauge {
        let labels = TransportLabels { transport };
        self.inner.connections_accepted.get_or_create(&labels).inc();
        self.inner.connections.get_or_create_owned(&labels)
    }

    /// Records a finished call to `path` (`/package.Service/Method`).
    fn record_path(&self, path: &str, code: i32, seconds: f64) {
        if code == grpc::UNIMPLEMENTED {
            return self.record(grpc::UNKNOWN, grpc::UNKNOWN, code, seconds);
        }
        let Some(series) = self.series(path) else {
            let (service, method) = grpc::split_path(path).unwrap_or((grpc::UNKNOWN, grpc::UNKNOWN));
            return self.record(service, method, code, seconds);
        };
        series.duration.observe(seconds);
        if code == grpc::OK {
            series.ok.inc();
        } else {
            self.count(&series.service, &series.method, code);
        }
    }

    /// The series of `path`, created the first time; `None` for a path that
    /// is not `/package.Service/Method` or once [`MAX_METHODS`] are kept.
    fn series(&self, path: &str) -> Option<Arc<MethodSeries>> {
        let methods = &self.inner.methods;
        if let Some(s) = methods.read().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Some(s.clone());
        }
        let (service, method) = grpc::split_path(path)?;
        let mut methods = methods.write().unwrap_or_else(|p| p.into_inner());
        if methods.len() >= MAX_METHODS {
            return None;
        }
        let series = methods.entry(path.to_owned()).or_insert_with(|| {
            Arc::new(MethodSeries {
                service: service.to_owned(),
                method: method.to_owned(),
                duration: self.inner.durations.get_or_create_owned(&MethodLabels {
                    service: service.to_owned(),
                    method: method.to_owned(),
                }),
                ok: self.inner.requests.get_or_create_owned(&CodeLabels {
                    service: service.to_owned(),
                    method: method.to_owned(),
                    code: grpc::code_name(grpc::OK),
                }),
            })
        });
        Some(series.clone())
    }

    fn record(&self, service: &str, method: &str, code: i32, seconds: f64) {
        self.inner
            .durations
            .get_or_create(&MethodLabels {
                service: service.to_owned(),
                method: method.to_owned(),
            })
            .observe(seconds);
        self.count(service, method, code);
    }

    fn count(&self, service: &str, method: &str, code: i32) {
        self.inner
            .requests
            .get_or_create(&CodeLabels {
                service: service.to_owned(),
                method: method.to_owned(),
                code: grpc::code_name(code),
            })
            .inc();
    }
}

/// The [`tower::Layer`] made by [`Metrics::layer`].
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Metrics,
    in_flight: Gauge,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`MetricsLayer`]: records each call's duration,
/// status code and message sizes.
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    layer: MetricsLayer,
}

impl<S, ResBody> Service<Request<Body>> for MetricsService<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Error: Into<tower::BoxError>,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = tower::BoxError;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let metrics = &self.layer.metrics;
        let call = CallRecord::start(metrics.clone(), request.uri().clone(), self.layer.in_flight.clone());
        let encoding = Encoding::from_headers(request.headers());
        let counters = metrics.inner.received.clone();
        let request = request.map(|body| Body::new(RequestBody::new(body, encoding, counters)));
        MetricsFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`MetricsService`].
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        call: Option<CallRecord>,
    }
}

impl<F, ResBody, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<tower::BoxError>,
{
    type Output = Result<Response<MetricsBody<ResBody>>, tower::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take().expect("MetricsFuture polled after completion");
        match result {
            Ok(response) => {
                call.outcome = Outcome::headers(response.headers());
                let encoding = Encoding::from_headers(response.headers());
                let counters = call.metrics.inner.sent.clone();
                Poll::Ready(Ok(response.map(|body| MetricsBody::new(body, encoding, counters, call))))
            }
            Err(error) => {
                let error = error.into();
                let code = error
                    .downcast_ref::<tonic::Status>()
                    .map_or(grpc::UNKNOWN_CODE, |status| status.code() as i32);
                call.finish(code);
                Poll::Ready(Err(error))
            }
        }
    }
}

/// One call in progress: counted in flight until it is finished or dropped.
pub(crate) struct CallRecord {
    metrics: Metrics,
    /// The request URI; its path names the method (cloning it shares the
    /// request's bytes).
    uri: Uri,
    start: Instant,
    in_flight: Gauge,
    outcome: Outcome,
    finished: bool,
}

impl CallRecord {
    fn start(metrics: Metrics, uri: Uri, in_flight: Gauge) -> Self {
        in_flight.inc();
        Self {
            metrics,
            uri,
            start: Instant::now(),
            in_flight,
            outcome: Outcome::default(),
            finished: false,
        }
    }

    /// How the call ends, given the status in its response headers.
    pub(crate) fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Records the call with its final status `code`.
    pub(crate) fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.in_flight.dec();
        let seconds = self.start.elapsed().as_secs_f64();
        self.metrics.record_path(self.uri.path(), code, seconds);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let code = self.outcome.dropped();
        self.finish(code);
    }
}
