//! The node status, sampled from the host at most once per interval and
//! shared by every caller, and the deltas between two samples.
//!
//! Reading /proc and statvfs for each of thousands of GetStatus calls a second
//! would cost more than the call itself; a sample at most one second old is
//! what every monitoring client expects, and each answer carries its sample
//! time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use debvisor_api::node::v1::{GetStatusResponse, StatusDelta};
use tokio::sync::Mutex;

use crate::host::{HostError, HostFacts};

/// How old a sample may be before the next caller refreshes it.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Samples the host's status on demand, at most once per [`MAX_AGE`].
pub struct StatusCache {
    host: Arc<dyn HostFacts>,
    max_age: Duration,
    // Held across a refresh so that concurrent callers wait for one sample
    // instead of each reading /proc.
    current: Mutex<Option<(Instant, Arc<GetStatusResponse>)>>,
}

impl StatusCache {
    /// A cache over `host` that keeps samples for `max_age`.
    pub fn new(host: Arc<dyn HostFacts>, max_age: Duration) -> Self {
        Self {
            host,
            max_age,
            current: Mutex::new(None),
        }
    }

    /// The latest sample, refreshed first when it is older than the maximum
    /// age.
    pub async fn get(&self) -> Result<Arc<GetStatusResponse>, HostError> {
        let mut cur = self.current.lock().await;
        if let Some((at, s)) = cur.as_ref()
            && at.elapsed() < self.max_age
        {
            return Ok(s.clone());
        }
        let host = self.host.clone();
        let fresh = tokio::task::spawn_blocking(move || host.status())
            .await
            .unwrap_or_else(|e| Err(HostError::Task(e.to_string())))?;
        let fresh = Arc::new(fresh);
        *cur = Some((Instant::now(), fresh.clone()));
        Ok(fresh)
    }
}

/// The delta from `old` to `new`: the changed top-level fields of `new`, and
/// their names. `sampled_at_unix_ms` is always carried (it is the clock of the
/// stream) but never counts as a change on its own.
pub fn delta(old: &GetStatusResponse, new: &GetStatusResponse) -> Option<StatusDelta> {
    let mut d = GetStatusResponse {
        sampled_at_unix_ms: new.sampled_at_unix_ms,
        ..Default::default()
    };
    let mut changed = Vec::new();
    macro_rules! field {
        ($($f:ident),*) => {$(
            if old.$f != new.$f {
                d.$f = new.$f.clone();
                changed.push(stringify!($f).to_string());
            }
        )*};
    }
    field!(
        hostname,
        image_version,
        image_id,
        booted_slot,
        uptime_seconds,
        load,
        memory,
        disks,
        kernel,
        agent_version,
        simulated,
        cpu,
        interfaces
    );
    if changed.is_empty() {
        return None;
    }
    changed.push("sampled_at_unix_ms".into());
    Some(StatusDelta {
        status: Some(d),
        full: false,
        changed,
    })
}

/// The first message of a stream: the whole status.
pub fn full(s: &GetStatusResponse) -> StatusDelta {
    StatusDelta {
        status: Some(s.clone()),
        full: true,
        changed: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeHost;
    use debvisor_api::node::v1::LoadAverage;

    #[tokio::test]
    async fn samples_are_shared_within_the_max_age() {
        let cache = StatusCache::new(Arc::new(FakeHost::new("n1")), Duration::from_secs(3600));
        let a = cache.get().await.unwrap();
        let b = cache.get().await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let cache = StatusCache::new(Arc::new(FakeHost::new("n1")), Duration::ZERO);
        let a = cache.get().await.unwrap();
        let b = cache.get().await.unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn delta_carries_only_changed_fields() {
        let old = GetStatusResponse {
            hostname: "n1".into(),
            uptime_seconds: 10.0,
            load: Some(LoadAverage {
                one: 0.1,
                five: 0.2,
                fifteen: 0.3,
            }),
            sampled_at_unix_ms: 1,
            ..Default::default()
        };
        let mut new = old.clone();
        new.sampled_at_unix_ms = 2;
        assert!(delta(&old, &new).is_none(), "only the clock moved");
        new.uptime_seconds = 11.0;
        let d = delta(&old, &new).unwrap();
        assert!(!d.full);
        assert_eq!(d.changed, ["uptime_seconds", "sampled_at_unix_ms"]);
        let s = d.status.unwrap();
        assert_eq!(s.uptime_seconds, 11.0);
        assert_eq!(s.hostname, "", "unchanged fields stay unset");
        assert!(s.load.is_none());
    }
}
