//! Requests per signed-in user: a token bucket per user name, refilled at
//! [`RATE_PER_SEC`] up to [`BURST`]. Static assets and `/healthz` are not
//! counted (see the middleware in [`crate::handlers`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Clock, lock};

/// Requests per second a signed-in user may make, sustained.
pub const RATE_PER_SEC: f64 = 10.0;
/// Requests a user may make at once after a pause.
pub const BURST: f64 = 20.0;
/// At most this many buckets are kept; full ones are dropped first.
const MAX_BUCKETS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE_PER_SEC).min(BURST);
        self.at = now;
    }
}

/// One token bucket per key (a user name).
pub struct RateLimiter {
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Full buckets for everybody, reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is
    /// there.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut map = lock(&self.buckets);
        if map.len() >= MAX_BUCKETS && !map.contains_key(key) {
            map.retain(|_, b| {
                b.refill(now);
                b.tokens < BURST
            });
        }
        let bucket = map.entry(key.to_string()).or_insert(Bucket { tokens: BURST, at: now });
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / RATE_PER_SEC))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::ManualClock;

    #[test]
    fn burst_then_rate_per_user() {
        let clock = Arc::new(ManualClock::new());
        let limiter = RateLimiter::new(clock.clone());
        for i in 0..20 {
            assert!(limiter.check("alice").is_ok(), "request {i} of the burst");
        }
        let wait = limiter.check("alice").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limiter.check("bob").is_ok(), "buckets are per user");
        clock.advance(Duration::from_millis(100));
        assert!(limiter.check("alice").is_ok(), "one token per 100 ms");
        assert!(limiter.check("alice").is_err());
        clock.advance(Duration::from_secs(1));
        let granted = (0..30).filter(|_| limiter.check("alice").is_ok()).count();
        assert_eq!(granted, 10, "ten per second");
        clock.advance(Duration::from_secs(60));
        let granted = (0..30).filter(|_| limiter.check("alice").is_ok()).count();
        assert_eq!(granted, 20, "never more than the burst");
    }
}
