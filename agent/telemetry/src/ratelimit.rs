//! Per-client token-bucket rate limiting of gRPC calls.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{Request, Response};
use serde::Deserialize;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::{ClientIdentity, TelemetryError, grpc};

/// Buckets idle for longer than this (and full again) are forgotten.
const IDLE_EVICTION: Duration = Duration::from_secs(10 * 60);

/// How often, at most, the bucket map is swept for idle buckets.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The key of requests without a [`ClientIdentity`].
const ANONYMOUS: &str = "anonymous";

/// A client's allowance: `burst` calls at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Calls per second a client may sustain.
    pub per_second: f64,
    /// Calls a client may make at once after being idle.
    pub burst: u32,
}

impl RateLimit {
    /// Checks that the limit lets requests through at all.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if self.per_second.is_finite() && self.per_second > 0.0 && self.burst > 0 {
            Ok(())
        } else {
            Err(TelemetryError::InvalidRateLimit {
                per_second: self.per_second,
                burst: self.burst,
            })
        }
    }
}

/// Computes the bucket key of a request from its head.
pub type KeyFn = Arc<dyn Fn(&Parts) -> String + Send + Sync>;

/// Tells the time for refilling and sweeping buckets; [`Instant::now`]
/// unless a layer is built [`with_clock`](RateLimitLayer::with_clock).
pub type ClockFn = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A layer that gives each client its own token bucket and answers
/// `RESOURCE_EXHAUSTED`, with a `google.rpc.RetryInfo` detail, to calls made
/// with an empty bucket, without passing them on.
///
/// Calls to `grpc.health.v1.Health` are never limited. Clones of one layer
/// share their buckets: give the Unix and TCP servers clones of the same
/// layer for one allowance per client across both.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limit", &self.limiter.limit)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A layer keyed on the request's [`ClientIdentity`] extension
    /// (`"anonymous"` when there is none).
    pub fn new(limit: RateLimit) -> Result<Self, TelemetryError> {
        Self::with_key(limit, Arc::new(identity_key))
    }

    /// A layer keyed by `key`.
    pub fn with_key(limit: RateLimit, key: KeyFn) -> Result<Self, TelemetryError> {
        Self::build(limit, key, Arc::new(Instant::now))
    }

    /// A layer keyed like [`new`](Self::new)'s that reads the time from
    /// `clock` instead of [`Instant::now`] (for tests that control time).
    pub fn with_clock(limit: RateLimit, clock: ClockFn) -> Result<Self, TelemetryError> {
        Self::build(limit, Arc::new(identity_key), clock)
    }

    fn build(limit: RateLimit, key: KeyFn, clock: ClockFn) -> Result<Self, TelemetryError> {
        limit.validate()?;
        let last_sweep = clock();
        Ok(Self {
            limiter: Arc::new(Limiter {
                limit,
                key,
                clock,
                buckets: Mutex::new(Buckets {
                    map: HashMap::new(),
                    last_sweep,
                }),
            }),
        })
    }
}

fn identity_key(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ClientIdentity>()
        .map_or_else(|| ANONYMOUS.to_owned(), |identity| identity.0.clone())
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

struct Limiter {
    limit: RateLimit,
    key: KeyFn,
    clock: ClockFn,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<String, Bucket>,
    last_sweep: Instant,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Limiter {
    /// Takes a token from `key`'s bucket, or says how long until one is there.
    fn acquire(&self, key: &str) -> Result<(), Duration> {
        self.acquire_at(key, (self.clock)())
    }

    /// [`acquire`](Self::acquire) at `now`.
    fn acquire_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let RateLimit { per_second, burst } = self.limit;
        let capacity = f64::from(burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(buckets.last_sweep) >= SWEEP_INTERVAL {
            // A bucket idle for the time it takes to refill is full, so
            // forgetting it changes nothing for its client.
            let refill = Duration::try_from_secs_f64(capacity / per_second).unwrap_or(Duration::MAX);
            let idle_limit = IDLE_EVICTION.max(refill);
            buckets
                .map
                .retain(|_, bucket| now.duration_since(bucket.updated) < idle_limit);
            buckets.last_sweep = now;
        }
        if !buckets.map.contains_key(key) {
            let bucket = Bucket {
                tokens: capacity,
                updated: now,
            };
            buckets.map.insert(key.to_owned(), bucket);
        }
        let bucket = buckets.map.get_mut(key).expect("inserted above");
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / per_second;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }

    fn rejection(&self, key: &str, retry: Duration) -> Status {
        let retry_ms = retry.as_nanos().div_ceil(1_000_000);
        let message = format!(
            "Rate limit of {} requests/s exceeded for client {key}; retry in {retry_ms} ms",
            self.limit.per_second
        );
        Status::with_error_details(
            Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(retry)),
        )
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("limit", &self.limiter.limit)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RateLimitFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.uri().path().starts_with(grpc::HEALTH_PREFIX) {
            return RateLimitFuture::pass(self.inner.call(request));
        }
        let (parts, body) = request.into_parts();
        let key = (self.limiter.key)(&parts);
        match self.limiter.acquire(&key) {
            Ok(()) => RateLimitFuture::pass(self.inner.call(Request::from_parts(parts, body))),
            Err(retry) => {
                tracing::debug!(client = %key, path = parts.uri.path(), "Rate limited");
                RateLimitFuture {
                    inner: None,
                    rejected: Some(self.limiter.rejection(&key, retry).into_http()),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RateLimitService`].
    pub struct RateLimitFuture<F, ResBody> {
        #[pin]
        inner: Option<F>,
        rejected: Option<Response<ResBody>>,
    }
}

impl<F, ResBody> RateLimitFuture<F, ResBody> {
    fn pass(inner: F) -> Self {
        Self {
            inner: Some(inner),
            rejected: None,
        }
    }
}

impl<F, ResBody, E> Future for RateLimitFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx),
            None => Poll::Ready(Ok(this
                .rejected
                .take()
                .expect("RateLimitFuture polled after completion"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limiter whose clock stands still at the returned instant; the
    /// tests pass their own times to `acquire_at`.
    fn limiter(per_second: f64, burst: u32) -> (Arc<Limiter>, Instant) {
        let t0 = Instant::now();
        let clock: ClockFn = Arc::new(move || t0);
        let layer = RateLimitLayer::with_clock(RateLimit { per_second, burst }, clock).unwrap();
        (layer.limiter, t0)
    }

    #[test]
    fn limits_must_let_requests_through() {
        for (per_second, burst) in [(0.0, 1), (-1.0, 1), (f64::NAN, 1), (f64::INFINITY, 1), (1.0, 0)] {
            let error = RateLimit { per_second, burst }.validate().unwrap_err();
            assert!(matches!(error, TelemetryError::InvalidRateLimit { .. }));
        }
        RateLimit {
            per_second: 0.001,
            burst: 1,
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn limits_parse_strictly() {
        let limit: RateLimit = toml::from_str("per_second = 2.5\nburst = 10").unwrap();
        assert_eq!(
            limit,
            RateLimit {
                per_second: 2.5,
                burst: 10
            }
        );
        assert!(toml::from_str::<RateLimit>("per_second = 1\nburst = 1\nrate = 3").is_err());
    }

    #[test]
    fn retry_delay_is_the_time_to_the_next_token() {
        let (limiter, t0) = limiter(4.0, 2);
        // Through the clock (standing at t0), as the service calls it.
        limiter.acquire("a").unwrap();
        limiter.acquire("a").unwrap();
        let about = |wait: Result<(), Duration>, ms: u64| {
            let wait = wait.unwrap_err();
            assert!(
                wait.abs_diff(Duration::from_millis(ms)) < Duration::from_micros(10),
                "{wait:?}"
            );
        };
        about(limiter.acquire_at("a", t0), 250);
        let t = t0 + Duration::from_millis(100);
        about(limiter.acquire_at("a", t), 150);
        let t = t + Duration::from_millis(151);
        limiter.acquire_at("a", t).unwrap();
        assert!(limiter.acquire_at("a", t).is_err());
    }

    #[test]
    fn idle_buckets_are_swept() {
        let (limiter, t0) = limiter(1.0, 1);
        limiter.acquire_at("old", t0).unwrap();
        limiter.acquire_at("new", t0 + IDLE_EVICTION + SWEEP_INTERVAL).unwrap();
        let buckets = limiter.buckets.lock().unwrap();
        assert!(buckets.map.contains_key("new"));
        assert!(!buckets.map.contains_key("old"));
    }

    #[test]
    fn slow_buckets_are_kept_until_full() {
        // One call per hour: a bucket emptied 11 minutes ago is not full yet.
        let (limiter, t0) = limiter(1.0 / 3600.0, 1);
        limiter.acquire_at("slow", t0).unwrap();
        let t = t0 + Duration::from_secs(11 * 60);
        assert!(limiter.acquire_at("other", t).is_ok());
        assert!(limiter.acquire_at("slow", t).is_err());
    }
}
