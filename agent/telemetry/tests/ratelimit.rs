//! Per-client rate limiting, at the tower level and through a real client.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sample_becomes, tcp_channel};
use debvisor_telemetry::{ClientIdentity, IdentityLayer, Metrics, RateLimit, RateLimitLayer};
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_types::StatusExt;
use tower::util::MapRequestLayer;
use tower::{Layer, Service, ServiceExt};

/// A path outside the exempt health service, rewritten to the health check
/// behind the rate limiter so that tonic-health can answer it.
const LIMITED: &str = "/debvisor.test.Limited/Check";

fn rewrite(mut request: http::Request<Body>) -> http::Request<Body> {
    if request.uri().path() == LIMITED {
        *request.uri_mut() = http::Uri::from_static("/grpc.health.v1.Health/Check");
    }
    request
}

fn client_header(parts: &http::request::Parts) -> Option<ClientIdentity> {
    let name = parts.headers.get("x-client")?.to_str().ok()?;
    Some(ClientIdentity(name.to_owned()))
}

async fn limited_call(channel: Channel, client: &str) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request.metadata_mut().insert("x-client", client.parse().unwrap());
    grpc.unary::<_, HealthCheckResponse, _>(
        request,
        PathAndQuery::from_static(LIMITED),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(drop)
}

#[tokio::test]
async fn a_real_client_decodes_the_rejection() {
    let metrics = Metrics::new();
    let limit = RateLimit {
        per_second: 1.0,
        burst: 2,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = Server::builder()
        .layer(metrics.layer("tcp"))
        .layer(IdentityLayer::new(client_header))
        .layer(RateLimitLayer::new(limit).unwrap())
        .layer(MapRequestLayer::new(rewrite))
        .add_service(health);
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    let channel = tcp_channel(addr).await;

    limited_call(channel.clone(), "alice").await.unwrap();
    limited_call(channel.clone(), "alice").await.unwrap();
    let status = limited_call(channel.clone(), "alice").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .starts_with("Rate limit of 1 requests/s exceeded for client alice; retry in "),
        "{}",
        status.message()
    );
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(delay > Duration::ZERO && delay <= Duration::from_secs(1), "{delay:?}");

    // Another client has its own bucket; health checks are never limited.
    limited_call(channel.clone(), "bob").await.unwrap();
    let mut health = HealthClient::new(channel);
    for _ in 0..5 {
        health.check(HealthCheckRequest::default()).await.unwrap();
    }

    let series = |code: &str| {
        format!(r#"debvisor_grpc_requests_total{{service="debvisor.test.Limited",method="Check",code="{code}"}}"#)
    };
    sample_becomes(&metrics, &series("OK"), 3.0).await;
    sample_becomes(&metrics, &series("RESOURCE_EXHAUSTED"), 1.0).await;
}

/// A clock that stands still until the test moves it on.
#[derive(Clone)]
struct FakeClock(Arc<Mutex<Instant>>);

impl FakeClock {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }

    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}

/// A tower stack: identity from the request's extensions, the rate limiter
/// (on `clock`'s time) and an inner service counting the calls that reach it.
fn limited_service(
    limit: RateLimit,
    clock: &FakeClock,
    calls: Arc<AtomicUsize>,
) -> impl Service<http::Request<()>, Response = http::Response<Body>, Error = std::convert::Infallible> + Clone {
    let inner = tower::service_fn(move |_request: http::Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok(http::Response::new(Body::empty())) }
    });
    let clock = clock.clone();
    RateLimitLayer::with_clock(limit, Arc::new(move || clock.now()))
        .unwrap()
        .layer(inner)
}

fn request(path: &str, client: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::builder().uri(path).body(()).unwrap();
    if let Some(client) = client {
        request.extensions_mut().insert(ClientIdentity(client.to_owned()));
    }
    request
}

/// The gRPC status of a response, `OK` when it has none (a passed call).
fn code(response: &http::Response<Body>) -> Code {
    Status::from_header_map(response.headers()).map_or(Code::Ok, |status| status.code())
}

#[tokio::test]
async fn buckets_hold_a_burst_and_refill_over_time() {
    let calls = Arc::new(AtomicUsize::new(0));
    let limit = RateLimit {
        per_second: 2.0,
        burst: 3,
    };
    let clock = FakeClock::new();
    let mut service = limited_service(limit, &clock, Arc::clone(&calls));
    let mut call = async |path: &str, client: Option<&str>| {
        let response = service.ready().await.unwrap().call(request(path, client)).await;
        code(&response.unwrap())
    };
    let path = "/debvisor.v1.Vms/List";

    for _ in 0..3 {
        assert_eq!(call(path, Some("alice")).await, Code::Ok);
    }
    assert_eq!(call(path, Some("alice")).await, Code::ResourceExhausted);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "a rejected call reached the service");

    // Separate keys, and requests without an identity share "anonymous".
    assert_eq!(call(path, Some("bob")).await, Code::Ok);
    for _ in 0..3 {
        assert_eq!(call(path, None).await, Code::Ok);
    }
    assert_eq!(call(path, None).await, Code::ResourceExhausted);

    // Health checks pass with an empty bucket.
    assert_eq!(call("/grpc.health.v1.Health/Check", Some("alice")).await, Code::Ok);

    // One token comes back every 500 ms.
    clock.advance(Duration::from_millis(499));
    assert_eq!(call(path, Some("alice")).await, Code::ResourceExhausted);
    clock.advance(Duration::from_millis(2));
    assert_eq!(call(path, Some("alice")).await, Code::Ok);
    assert_eq!(call(path, Some("alice")).await, Code::ResourceExhausted);
    clock.advance(Duration::from_secs(10));
    for _ in 0..3 {
        assert_eq!(call(path, Some("alice")).await, Code::Ok);
    }
    assert_eq!(call(path, Some("alice")).await, Code::ResourceExhausted);
}

#[tokio::test]
async fn the_retry_delay_says_when_a_token_is_back() {
    let limit = RateLimit {
        per_second: 4.0,
        burst: 1,
    };
    let clock = FakeClock::new();
    let mut service = limited_service(limit, &clock, Arc::default());
    let path = "/debvisor.v1.Vms/List";
    service.call(request(path, Some("carol"))).await.unwrap();
    clock.advance(Duration::from_millis(100));
    let response = service.call(request(path, Some("carol"))).await.unwrap();
    let status = Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "Rate limit of 4 requests/s exceeded for client carol; retry in 150 ms"
    );
    let delay = status.get_details_retry_info().unwrap().retry_delay.unwrap();
    assert!(
        delay.abs_diff(Duration::from_millis(150)) < Duration::from_millis(1),
        "{delay:?}"
    );
}
