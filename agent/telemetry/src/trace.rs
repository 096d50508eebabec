//! One tracing span per gRPC call, continuing the caller's W3C trace.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::grpc::{self, Outcome};

/// A layer that opens an `INFO` span per gRPC call, with the OpenTelemetry
/// RPC attributes `rpc.system`, `rpc.service`, `rpc.method` and
/// `rpc.grpc.status_code` (set when the response ends), as a server span
/// whose parent is the caller's `traceparent` header when it sends one.
///
/// Spans reach an OpenTelemetry collector through [`otel_layer`](crate::otel_layer);
/// without it they are ordinary `tracing` spans.
#[derive(Clone, Debug)]
pub struct TraceLayer {
    enabled: bool,
}

impl Default for TraceLayer {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The layer, opening spans only when `on`: without a collector nobody
    /// reads them, and a span costs microseconds on every call.
    pub fn enabled(on: bool) -> Self {
        Self { enabled: on }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
    enabled: bool,
}

impl<S, B, ResBody> Service<Request<B>> for TraceService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TraceBody<ResBody>>;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !self.enabled {
            return TraceFuture {
                inner: self.inner.call(request),
                span: None,
            };
        }
        let span = call_span(&request);
        let inner = span.in_scope(|| self.inner.call(request));
        TraceFuture {
            inner,
            span: Some(span),
        }
    }
}

fn call_span<B>(request: &Request<B>) -> Span {
    let (service, method) = grpc::split_path(request.uri().path()).unwrap_or((grpc::UNKNOWN, grpc::UNKNOWN));
    let span = tracing::info_span!(
        "grpc",
        otel.name = format!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: nothing to link then.
        let _ = span.set_parent(parent);
    }
    span
}

/// Reads W3C trace context headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// Records how the call ended and closes its span.
fn close(span: &mut Option<Span>, code: i32) {
    let Some(span) = span.take() else { return };
    span.record("rpc.grpc.status_code", i64::from(code));
    // Server-side errors per the OpenTelemetry gRPC conventions.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "ERROR");
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`TraceService`].
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
    }
}

impl<F, ResBody, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TraceBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.as_ref().map(Span::enter);
            ready!(this.inner.poll(cx))
        };
        let mut span = this.span.take();
        Poll::Ready(match result {
            Ok(response) => {
                let outcome = Outcome::headers(response.headers());
                Ok(response.map(|inner| TraceBody { inner, span, outcome }))
            }
            Err(error) => {
                close(&mut span, grpc::UNKNOWN_CODE);
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`TraceService`]: closes the call's span when
    /// the body ends or is dropped.
    pub struct TraceBody<B> {
        #[pin]
        inner: B,
        span: Option<Span>,
        outcome: Outcome,
    }

    impl<B> PinnedDrop for TraceBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let code = this.outcome.dropped();
            close(this.span, code);
        }
    }
}

impl<B> fmt::Debug for TraceBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TraceBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    close(this.span, this.outcome.ended(Some(trailers)));
                }
            }
            Some(Err(_)) => close(this.span, grpc::UNKNOWN_CODE),
            None => close(this.span, this.outcome.ended(None)),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
