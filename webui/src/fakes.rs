//! Fakes for tests: a clock that only moves when told to, and a node source
//! that answers with fixed figures or a fixed failure.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use debvisor_api::health::v1::{BootGate, Check, CheckResult, CheckStatus, GateState, NodeHealth, NodeState};
use debvisor_api::node::v1::{Disk, GetStatusResponse, LoadAverage, Memory};

use crate::agent::{AgentError, BoxFuture, NodeSource};
use crate::auth::Clock;

/// A [`Clock`] that starts at the real "now" (monotonic and wall clock)
/// and moves only by [`ManualClock::advance`].
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    base_unix_ms: i64,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at the current instant.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            base_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unix_ms(&self) -> i64 {
        self.base_unix_ms + self.offset.lock().unwrap_or_else(|p| p.into_inner()).as_millis() as i64
    }
}

/// A [`NodeSource`] with a fixed answer; `None` means "agent unreachable".
#[derive(Debug, Clone)]
pub struct FixedNode(pub Option<GetStatusResponse>);

impl FixedNode {
    /// A plausible simulated node called `hostname`.
    pub fn sample(hostname: &str) -> Self {
        const GIB: u64 = 1 << 30;
        FixedNode(Some(GetStatusResponse {
            hostname: hostname.to_string(),
            image_version: "0.1.0".into(),
            image_id: "debvisor-node".into(),
            booted_slot: "A".into(),
            uptime_seconds: 93_784.0,
            load: Some(LoadAverage {
                one: 0.25,
                five: 0.5,
                fifteen: 1.0,
            }),
            memory: Some(Memory {
                total_bytes: 8 * GIB,
                available_bytes: 6 * GIB,
                used_bytes: 2 * GIB,
            }),
            disks: vec![Disk {
                name: "root".into(),
                mount_point: "/".into(),
                total_bytes: 4 * GIB,
                available_bytes: GIB,
                used_bytes: 3 * GIB,
                read_only: true,
            }],
            kernel: "6.1.0-test-amd64".into(),
            agent_version: "0.1.0".into(),
            simulated: true,
            sampled_at_unix_ms: 0,
            cpu: None,
            interfaces: vec![],
        }))
    }
}

/// A healthy node's health: boot declared good, three passing checks and
/// one warning.
pub fn sample_health() -> NodeHealth {
    let check = |name: &str, kind: &str, required: bool, status: CheckStatus, message: &str| Check {
        name: name.into(),
        kind: kind.into(),
        required,
        interval_ms: 10_000,
        timeout_ms: 5_000,
        last: Some(CheckResult {
            status: status as i32,
            message: message.into(),
            started_unix_ms: 0,
            duration_ms: 3,
        }),
        consecutive_failures: 0,
        unit: String::new(),
        history: Vec::new(),
    };
    NodeHealth {
        state: NodeState::Healthy as i32,
        degraded_reason: String::new(),
        gate: Some(BootGate {
            state: GateState::Good as i32,
            deadline_unix_ms: 0,
            decided_unix_ms: 0,
            reason: "all required units active and required checks passing".into(),
            slot: "A".into(),
        }),
        checks: vec![
            check(
                "service/debvisor-agent",
                "service",
                true,
                CheckStatus::Pass,
                "active, gRPC SERVING",
            ),
            check("storage/data", "storage", true, CheckStatus::Pass, "/data is 12% full"),
            check("dns", "dns", false, CheckStatus::Warn, "no resolver answered"),
            check(
                "certificate/server",
                "certificate",
                true,
                CheckStatus::Pass,
                "valid for 3649 days",
            ),
        ],
        alerts: Vec::new(),
        config_error: String::new(),
        config_digest: "0123abcd".into(),
    }
}

impl NodeSource for FixedNode {
    fn status<'a>(&'a self, _user: Option<&'a str>) -> BoxFuture<'a, Result<GetStatusResponse, AgentError>> {
        let answer = self.0.clone().ok_or(AgentError::Timeout);
        Box::pin(async move { answer })
    }

    fn health<'a>(&'a self, _user: Option<&'a str>) -> BoxFuture<'a, Result<NodeHealth, AgentError>> {
        let answer = self.0.as_ref().map(|_| sample_health()).ok_or(AgentError::Timeout);
        Box::pin(async move { answer })
    }
}
