//! [`Health`]: the node's health state, published as a
//! `debvisor.health.v1.NodeHealth` through a watch channel, and the
//! scheduler that runs each check at its interval with its timeout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use debvisor_api::health::v1::{Alert, BootGate, CheckResult, CheckStatus, GateState, NodeHealth, NodeState};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::clock::{Clock, TokioClock};
use super::metrics::HealthMetrics;
use super::{Check, Outcome, Status};

/// Alerts kept in [`NodeHealth::alerts`].
pub const MAX_ALERTS: usize = 50;

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The machine config's state, set by whoever applies the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigState {
    /// The short sha256 of the config in effect, empty on safe defaults.
    pub digest: String,
    /// The error of the refused config, empty when it applied.
    pub error: String,
}

/// One finished run, as remediation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRun {
    /// The check.
    pub check: String,
    /// Its unit, if remediation may restart one.
    pub unit: Option<String>,
    /// Whether the check is required.
    pub required: bool,
    /// The outcome.
    pub status: Status,
    /// Its message.
    pub message: String,
    /// Consecutive failed runs up to and including this one.
    pub consecutive_failures: u32,
    /// Whether the check saw its unit active.
    pub unit_active: bool,
}

struct Inner {
    node: NodeHealth,
    /// Escalated checks and why.
    degraded: BTreeMap<String, String>,
}

/// The node's health. Shared as `Arc<Health>`; every change is published to
/// [`Health::subscribe`]rs as a complete [`NodeHealth`] (with history).
pub struct Health {
    inner: Mutex<Inner>,
    tx: watch::Sender<NodeHealth>,
    runs: broadcast::Sender<CheckRun>,
    history: usize,
    metrics: Option<HealthMetrics>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

impl Health {
    /// The state of `checks`, all pending, with the gate pending until
    /// `gate_deadline_unix_ms`; keeps `history` results per check.
    pub fn new(
        checks: &[Arc<dyn Check>],
        interval: Duration,
        timeout: Duration,
        history: u32,
        gate_deadline_unix_ms: i64,
        metrics: Option<HealthMetrics>,
    ) -> Self {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let node = NodeHealth {
            state: NodeState::Starting as i32,
            gate: Some(BootGate {
                state: GateState::Pending as i32,
                deadline_unix_ms: gate_deadline_unix_ms,
                ..BootGate::default()
            }),
            checks: checks
                .iter()
                .map(|c| {
                    if let Some(m) = &metrics {
                        m.pending(c.name(), c.kind());
                    }
                    debvisor_api::health::v1::Check {
                        name: c.name().to_string(),
                        kind: c.kind().to_string(),
                        required: c.required(),
                        interval_ms: ms(interval),
                        timeout_ms: ms(timeout),
                        last: Some(CheckResult {
                            status: CheckStatus::Pending as i32,
                            ..CheckResult::default()
                        }),
                        consecutive_failures: 0,
                        unit: c.unit().unwrap_or_default().to_string(),
                        history: Vec::new(),
                    }
                })
                .collect(),
            ..NodeHealth::default()
        };
        let mut inner = Inner {
            node,
            degraded: BTreeMap::new(),
        };
        update_state(&mut inner);
        let (tx, _) = watch::channel(inner.node.clone());
        Self {
            inner: Mutex::new(inner),
            tx,
            runs: broadcast::channel(256).0,
            history: usize::try_from(history.max(1)).unwrap_or(1),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change`, recomputes the overall state and publishes.
    fn change(&self, change: impl FnOnce(&mut Inner)) {
        let mut inner = self.lock();
        change(&mut inner);
        update_state(&mut inner);
        if let Some(m) = &self.metrics {
            m.set_degraded(inner.node.state == NodeState::Degraded as i32);
        }
        self.tx.send_replace(inner.node.clone());
    }

    /// Follows every change.
    pub fn subscribe(&self) -> watch::Receiver<NodeHealth> {
        self.tx.subscribe()
    }

    /// Every finished run from now on (remediation listens here).
    pub fn runs(&self) -> broadcast::Receiver<CheckRun> {
        self.runs.subscribe()
    }

    /// The current state.
    pub fn snapshot(&self) -> NodeHealth {
        self.lock().node.clone()
    }

    /// The metrics, when registered.
    pub fn metrics(&self) -> Option<&HealthMetrics> {
        self.metrics.as_ref()
    }

    /// Records a run of `check` that started at `started_unix_ms` and took
    /// `duration`.
    pub fn record(&self, check: &str, outcome: &Outcome, started_unix_ms: i64, duration: Duration) {
        let mut run = None;
        let history = self.history;
        self.change(|inner| {
            let Some(c) = inner.node.checks.iter_mut().find(|c| c.name == check) else {
                return;
            };
            let result = CheckResult {
                status: outcome.status.to_proto() as i32,
                message: outcome.message.clone(),
                started_unix_ms,
                duration_ms: u32::try_from(duration.as_millis()).unwrap_or(u32::MAX),
            };
            c.history.insert(0, result.clone());
            c.history.truncate(history);
            c.last = Some(result);
            c.consecutive_failures = match outcome.status {
                Status::Fail => c.consecutive_failures.saturating_add(1),
                _ => 0,
            };
            if let Some(m) = &self.metrics {
                m.observe(&c.name, &c.kind, outcome.status, duration.as_secs_f64());
            }
            run = Some(CheckRun {
                check: c.name.clone(),
                unit: (!c.unit.is_empty()).then(|| c.unit.clone()),
                required: c.required,
                status: outcome.status,
                message: outcome.message.clone(),
                consecutive_failures: c.consecutive_failures,
                unit_active: outcome.unit_active,
            });
        });
        if let Some(run) = run {
            let _ = self.runs.send(run);
        }
    }

    /// Marks the node degraded because of `check` (remediation gave up), or
    /// clears that with `None`.
    pub fn set_degraded(&self, check: &str, reason: Option<String>) {
        self.change(|inner| match reason {
            Some(r) => {
                inner.degraded.insert(check.to_string(), r);
            }
            None => {
                inner.degraded.remove(check);
            }
        });
    }

    /// Adds an alert (newest first, at most [`MAX_ALERTS`]).
    pub fn push_alert(&self, alert: Alert) {
        self.change(|inner| {
            inner.node.alerts.insert(0, alert);
            inner.node.alerts.truncate(MAX_ALERTS);
        });
    }

    /// Sets the boot gate.
    pub fn set_gate(&self, gate: BootGate) {
        if let Some(m) = &self.metrics {
            m.set_gate(match GateState::try_from(gate.state) {
                Ok(GateState::Good) => 1,
                Ok(GateState::Bad) => 2,
                _ => 0,
            });
        }
        self.change(|inner| inner.node.gate = Some(gate));
    }

    /// Sets the machine config's state.
    pub fn set_config(&self, config: &ConfigState) {
        self.change(|inner| {
            inner.node.config_digest = config.digest.clone();
            inner.node.config_error = config.error.clone();
        });
    }
}

/// The overall state: degraded when remediation gave up on a check or a
/// required check without remediation fails; starting while a required check
/// has not finished its first run; healthy otherwise (a required service
/// check that fails while remediation still restarts its unit counts as
/// healthy until remediation escalates).
fn update_state(inner: &mut Inner) {
    let mut reasons: Vec<String> = inner.degraded.values().cloned().collect();
    let mut pending = false;
    for c in inner.node.checks.iter().filter(|c| c.required) {
        let last = c.last.as_ref().map_or(CheckStatus::Pending as i32, |l| l.status);
        if last == CheckStatus::Pending as i32 {
            pending = true;
        } else if last == CheckStatus::Fail as i32 && c.unit.is_empty() {
            let message = c.last.as_ref().map(|l| l.message.as_str()).unwrap_or_default();
            reasons.push(format!("{} fails: {message}", c.name));
        }
    }
    let (state, reason) = if !reasons.is_empty() {
        (NodeState::Degraded, reasons.join("; "))
    } else if pending {
        (NodeState::Starting, String::new())
    } else {
        (NodeState::Healthy, String::new())
    };
    inner.node.state = state as i32;
    inner.node.degraded_reason = reason;
}

/// Runs `check` once with `timeout`: a run that does not finish in time
/// fails with "did not finish within N s".
pub async fn run_once(check: &dyn Check, timeout: Duration) -> (Outcome, i64, Duration) {
    run_once_on(&TokioClock, check, timeout).await
}

/// [`run_once`] on `clock`'s time.
pub(crate) async fn run_once_on(clock: &impl Clock, check: &dyn Check, timeout: Duration) -> (Outcome, i64, Duration) {
    let started_unix_ms = now_unix_ms();
    let start = clock.now();
    let deadline = start + timeout;
    // The check first, as `tokio::time::timeout_at` does.
    let outcome = tokio::select! {
        biased;
        outcome = check.run(deadline) => outcome,
        () = clock.sleep_until(deadline) => {
            Outcome::fail(format!("did not finish within {} s", timeout.as_secs_f64()))
        }
    };
    (outcome, started_unix_ms, clock.now().saturating_duration_since(start))
}

/// Ticks within this of their time count as on time (as with
/// `tokio::time::Interval`, whose timer has millisecond resolution).
const TICK_SLACK: Duration = Duration::from_millis(5);

/// When a check runs next after a tick due at `due` that came at `now`:
/// one `interval` on, or one `interval` after `now` when the tick came late
/// (`tokio::time::MissedTickBehavior::Delay`).
fn next_tick(due: Instant, now: Instant, interval: Duration) -> Instant {
    if now > due + TICK_SLACK {
        now + interval
    } else {
        due + interval
    }
}

/// Runs each check now and then every `interval`, each in its own task,
/// recording results in `health`. Dropping the set stops them.
pub fn spawn_scheduler(
    health: Arc<Health>,
    checks: Vec<Arc<dyn Check>>,
    interval: Duration,
    timeout: Duration,
) -> JoinSet<()> {
    spawn_scheduler_on(TokioClock, health, checks, interval, timeout)
}

/// [`spawn_scheduler`] on `clock`'s time.
pub(crate) fn spawn_scheduler_on(
    clock: impl Clock,
    health: Arc<Health>,
    checks: Vec<Arc<dyn Check>>,
    interval: Duration,
    timeout: Duration,
) -> JoinSet<()> {
    assert!(!interval.is_zero(), "the check interval must be non-zero");
    let mut set = JoinSet::new();
    for check in checks {
        let (health, clock) = (health.clone(), clock.clone());
        set.spawn(async move {
            let mut due = clock.now();
            loop {
                clock.sleep_until(due).await;
                due = next_tick(due, clock.now(), interval);
                let (outcome, started, took) = run_once_on(&clock, check.as_ref(), timeout).await;
                if outcome.status != Status::Pass {
                    tracing::debug!(check = check.name(), status = ?outcome.status, "{}", outcome.message);
                }
                health.record(check.name(), &outcome, started, took);
            }
        });
    }
    set
}

#[cfg(test)]
mod tests {
    use super::super::clock::fake::FakeClock;
    use super::*;

    struct Fixed {
        name: &'static str,
        required: bool,
        unit: Option<&'static str>,
        outcome: Option<Outcome>,
    }

    #[async_trait::async_trait]
    impl Check for Fixed {
        fn name(&self) -> &str {
            self.name
        }
        fn kind(&self) -> &'static str {
            "resources"
        }
        fn required(&self) -> bool {
            self.required
        }
        fn unit(&self) -> Option<&str> {
            self.unit
        }
        async fn run(&self, _deadline: Instant) -> Outcome {
            match &self.outcome {
                Some(o) => o.clone(),
                None => std::future::pending().await,
            }
        }
    }

    fn fixed(name: &'static str, required: bool, outcome: Option<Outcome>) -> Arc<dyn Check> {
        Arc::new(Fixed {
            name,
            required,
            unit: None,
            outcome,
        })
    }

    #[tokio::test]
    async fn a_hung_check_fails_at_its_timeout() {
        let hung = fixed("hung", true, None);
        let clock = FakeClock::new();
        let run = tokio::spawn({
            let clock = clock.clone();
            async move { run_once_on(&clock, hung.as_ref(), Duration::from_secs(5)).await }
        });
        // The check hangs: all there is left is the timeout. Go straight to
        // it, as a paused clock would.
        clock.idle(1).await;
        clock.set(clock.next_deadline().unwrap());
        let (outcome, _, took) = run.await.unwrap();
        assert_eq!(outcome, Outcome::fail("did not finish within 5 s"));
        assert_eq!(took, Duration::from_secs(5));
    }

    #[tokio::test]
    async fn scheduler_keeps_history_and_counts_failures() {
        let checks = vec![
            fixed("ok", true, Some(Outcome::pass("fine"))),
            fixed("bad", false, Some(Outcome::fail("broken"))),
        ];
        let health = Arc::new(Health::new(
            &checks,
            Duration::from_secs(10),
            Duration::from_secs(5),
            3,
            0,
            None,
        ));
        assert_eq!(health.snapshot().state, NodeState::Starting as i32);
        let mut rx = health.subscribe();
        let clock = FakeClock::new();
        let _set = spawn_scheduler_on(
            clock.clone(),
            health.clone(),
            checks,
            Duration::from_secs(10),
            Duration::from_secs(5),
        );
        // 45 s on the fake clock, each check task waiting for its next tick.
        clock.run_for(Duration::from_secs(45), 2).await;
        rx.changed().await.unwrap();
        let node = health.snapshot();
        // Runs at 0, 10, 20, 30, 40 s.
        let bad = node.checks.iter().find(|c| c.name == "bad").unwrap();
        assert_eq!(bad.consecutive_failures, 5);
        assert_eq!(bad.history.len(), 3);
        assert_eq!(bad.last.as_ref().unwrap().message, "broken");
        // A failing check that is not required does not degrade the node.
        assert_eq!(node.state, NodeState::Healthy as i32);
    }

    #[test]
    fn a_failing_required_check_without_remediation_degrades() {
        let checks = vec![fixed("storage/data", true, None)];
        let health = Health::new(&checks, Duration::from_secs(10), Duration::from_secs(5), 3, 0, None);
        health.record("storage/data", &Outcome::fail("/data is read-only"), 0, Duration::ZERO);
        let node = health.snapshot();
        assert_eq!(node.state, NodeState::Degraded as i32);
        assert_eq!(node.degraded_reason, "storage/data fails: /data is read-only");
        health.record("storage/data", &Outcome::warn("86% full"), 0, Duration::ZERO);
        assert_eq!(health.snapshot().state, NodeState::Healthy as i32);
        health.set_degraded("service/x", Some("service/x escalated".into()));
        let node = health.snapshot();
        assert_eq!(
            (node.state, node.degraded_reason.as_str()),
            (NodeState::Degraded as i32, "service/x escalated")
        );
    }
}
