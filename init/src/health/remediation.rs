//! Remediation: a service check that fails `failures_before_restart` runs in
//! a row while its unit is active gets its unit restarted (alert
//! `restarted`, INFO), with a backoff of 1 s, 2 s, 4 s... between restarts;
//! when more than `restart_limit` restarts would fall within
//! `restart_window_seconds`, remediation stops restarting it, marks the node
//! degraded naming the check (alert `escalated`, CRITICAL); once the check
//! has passed for a whole window again the escalation is cleared (alert
//! `recovered`, INFO). A check whose unit is not active is left to the
//! supervisor, which starts it; if it keeps failing for
//! `failures_before_restart * (restart_limit + 1)` runs (the unit does not
//! stay up: a crash loop), it escalates all the same.
//!
//! [`Remediation`] is the decision logic (no I/O, time passed in);
//! [`run`] applies its decisions to the units, the health state and alerts.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use debvisor_api::health::v1::Severity;
use debvisor_api::validate::UnitName;
use debvisor_systemd::Units;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::engine::{CheckRun, Health};
use super::service::unit_state;
use super::{HealthSettings, Status};
use crate::alerts::Alerts;

/// What remediation decided after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Restart this unit.
    Restart(String),
    /// Stop restarting; the node is degraded for this reason.
    Escalate(String),
    /// The escalated check has passed for a whole window: clear it.
    Recovered(String),
}

#[derive(Debug, Default)]
struct CheckState {
    restarts: VecDeque<Instant>,
    fails_since_restart: u32,
    fails_while_active: u32,
    escalated: bool,
    passing_since: Option<Instant>,
    next_allowed: Option<Instant>,
}

/// The decision logic. See the [module](self) documentation.
#[derive(Debug)]
pub struct Remediation {
    failures_before_restart: u32,
    restart_limit: usize,
    window: Duration,
    checks: HashMap<String, CheckState>,
}

/// The pause after the `n`th restart within the window before another:
/// 1 s, 2 s, 4 s... at most 5 minutes.
pub fn backoff(n: usize) -> Duration {
    let exp = u32::try_from(n.saturating_sub(1)).unwrap_or(u32::MAX).min(9);
    Duration::from_secs(1 << exp).min(Duration::from_secs(300))
}

impl Remediation {
    /// With the limits of `settings`.
    pub fn new(settings: &HealthSettings) -> Self {
        Self {
            failures_before_restart: settings.failures_before_restart.max(1),
            restart_limit: usize::try_from(settings.restart_limit).unwrap_or(usize::MAX),
            window: settings.restart_window(),
            checks: HashMap::new(),
        }
    }

    /// Whether `check` is escalated.
    pub fn escalated(&self, check: &str) -> bool {
        self.checks.get(check).is_some_and(|c| c.escalated)
    }

    /// Decides after `run` at `now`; `unit_active` tells whether the check's
    /// unit is active (an inactive unit is the supervisor's to start).
    pub fn decide(&mut self, run: &CheckRun, unit_active: bool, now: Instant) -> Option<Action> {
        let unit = run.unit.as_ref()?;
        let c = self.checks.entry(run.check.clone()).or_default();
        if run.status != Status::Fail {
            c.fails_since_restart = 0;
            c.fails_while_active = 0;
            if !c.escalated {
                return None;
            }
            let since = *c.passing_since.get_or_insert(now);
            if now.duration_since(since) < self.window {
                return None;
            }
            *c = CheckState::default();
            return Some(Action::Recovered(format!(
                "{} passes again for {} s; restarts of {unit} resume when needed",
                run.check,
                self.window.as_secs()
            )));
        }
        c.passing_since = None;
        c.fails_since_restart += 1;
        // Only failures in a row while the unit was active ask for a
        // restart: one seen while it was still activating says nothing
        // about its health.
        c.fails_while_active = if unit_active { c.fails_while_active + 1 } else { 0 };
        if c.escalated || c.fails_since_restart < self.failures_before_restart {
            return None;
        }
        if !unit_active {
            // The supervisor starts an inactive unit; one that keeps not
            // coming up (a crash loop) escalates after as many failed runs
            // as the restarts would have taken.
            let limit = self
                .failures_before_restart
                .saturating_mul(u32::try_from(self.restart_limit + 1).unwrap_or(u32::MAX));
            if c.fails_since_restart < limit {
                return None;
            }
            c.escalated = true;
            return Some(Action::Escalate(format!(
                "{} failed {} times in a row and {unit} does not stay active: {}",
                run.check, c.fails_since_restart, run.message
            )));
        }
        while c
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            c.restarts.pop_front();
        }
        if c.restarts.len() >= self.restart_limit {
            c.escalated = true;
            return Some(Action::Escalate(format!(
                "{} still fails after {} restarts of {unit} within {} s: {}",
                run.check,
                c.restarts.len(),
                self.window.as_secs(),
                run.message
            )));
        }
        if c.fails_while_active < self.failures_before_restart || c.next_allowed.is_some_and(|t| now < t) {
            return None;
        }
        c.restarts.push_back(now);
        c.fails_since_restart = 0;
        c.fails_while_active = 0;
        c.next_allowed = Some(now + backoff(c.restarts.len()));
        Some(Action::Restart(unit.clone()))
    }
}

/// Applies remediation to every run `health` records until the runs end.
pub async fn run(health: Arc<Health>, units: Arc<dyn Units>, alerts: Alerts, settings: HealthSettings) {
    let mut runs = health.runs();
    let mut logic = Remediation::new(&settings);
    loop {
        let run = match runs.recv().await {
            Ok(run) => run,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("remediation missed {n} check results");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(unit) = run.unit.clone() else { continue };
        // Active when the check ran and still active now (it may have been
        // stopped or restarted since).
        let active = run.status == Status::Fail
            && run.unit_active
            && unit_state(units.as_ref(), &unit).await.is_ok_and(|s| s == "active");
        match logic.decide(&run, active, Instant::now()) {
            None => {}
            Some(Action::Restart(unit)) => {
                let why = format!(
                    "{} failed {} times in a row while {unit} was active ({})",
                    run.check, settings.failures_before_restart, run.message
                );
                if let Some(m) = health.metrics() {
                    m.restarted(&unit);
                }
                // The alert follows the restart job, so that whoever gets it
                // sees the new process.
                let (units, alerts, check) = (units.clone(), alerts.clone(), run.check.clone());
                tokio::spawn(async move {
                    let Ok(name) = UnitName::try_from(unit.as_str()) else {
                        return;
                    };
                    match units.restart(&name).await {
                        Ok(job) if job.is_done() => {
                            alerts.raise(Severity::Info, &check, "restarted", &format!("{why}: restarted {unit}"));
                        }
                        Ok(job) => alerts.raise(
                            Severity::Warning,
                            &check,
                            "restart-failed",
                            &format!("{why}: restarting {unit} ended with job result {}", job.result),
                        ),
                        Err(e) => alerts.raise(
                            Severity::Warning,
                            &check,
                            "restart-failed",
                            &format!("{why}: cannot restart {unit}: {e}"),
                        ),
                    }
                });
            }
            Some(Action::Escalate(reason)) => {
                health.set_degraded(&run.check, Some(reason.clone()));
                alerts.raise(Severity::Critical, &run.check, "escalated", &reason);
            }
            Some(Action::Recovered(message)) => {
                health.set_degraded(&run.check, None);
                alerts.raise(Severity::Info, &run.check, "recovered", &message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use debvisor_api::health::v1::NodeState;
    use debvisor_systemd::fakes::FakeUnits;

    use super::*;
    use crate::health::{Check, Outcome};

    fn run(status: Status) -> CheckRun {
        CheckRun {
            check: "service/debvisor-webui".into(),
            unit: Some("debvisor-webui.service".into()),
            required: true,
            status,
            message: "/healthz answered 500".into(),
            consecutive_failures: 0,
            unit_active: true,
        }
    }

    fn settings() -> HealthSettings {
        HealthSettings {
            restart_window_seconds: 600,
            ..HealthSettings::default()
        }
    }

    #[test]
    fn restarts_after_three_failures_then_escalates_then_recovers() {
        let mut r = Remediation::new(&settings());
        let fail = run(Status::Fail);
        let step = Duration::from_secs(10);
        let mut now = Instant::now();
        let mut actions = Vec::new();
        for _ in 0..20 {
            now += step;
            if let Some(a) = r.decide(&fail, true, now) {
                actions.push(a);
            }
        }
        let restart = Action::Restart("debvisor-webui.service".into());
        // Restarts on the 3rd, 6th and 9th failure; the 12th escalates; then
        // nothing more.
        assert_eq!(actions.len(), 4, "{actions:?}");
        assert_eq!(&actions[..3], &[restart.clone(), restart.clone(), restart]);
        let Action::Escalate(reason) = &actions[3] else {
            panic!("{actions:?}")
        };
        assert_eq!(
            reason,
            "service/debvisor-webui still fails after 3 restarts of debvisor-webui.service within 600 s: /healthz answered 500"
        );
        assert!(r.escalated("service/debvisor-webui"));
        // Passing clears the escalation only after a whole window.
        let pass = run(Status::Pass);
        assert_eq!(r.decide(&pass, true, now), None);
        now += Duration::from_secs(599);
        assert_eq!(r.decide(&pass, true, now), None);
        now += Duration::from_secs(1);
        assert!(matches!(r.decide(&pass, true, now), Some(Action::Recovered(_))));
        assert!(!r.escalated("service/debvisor-webui"));
    }

    #[test]
    fn backoff_spaces_restarts_and_the_window_forgets() {
        let s = HealthSettings {
            failures_before_restart: 1,
            restart_limit: 3,
            restart_window_seconds: 60,
            ..HealthSettings::default()
        };
        let mut r = Remediation::new(&s);
        let fail = run(Status::Fail);
        let t0 = Instant::now();
        let at = |r: &mut Remediation, secs: u64| r.decide(&fail, true, t0 + Duration::from_secs(secs)).is_some();
        assert!(at(&mut r, 0)); // 1st restart; the next one in 1 s
        assert!(!at(&mut r, 0));
        assert!(at(&mut r, 1)); // 2nd; next in 2 s
        assert!(!at(&mut r, 2));
        assert!(at(&mut r, 3)); // 3rd
        // Restarts older than the window no longer count.
        assert_eq!(
            r.decide(&fail, true, t0 + Duration::from_secs(3 + 61)),
            Some(Action::Restart("debvisor-webui.service".into()))
        );
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn failures_while_activating_do_not_count_towards_a_restart() {
        let mut r = Remediation::new(&settings());
        let fail = run(Status::Fail);
        // Time stands still: every run at the same instant.
        let now = Instant::now();
        // Two runs while the unit is still activating, then two while active:
        // not yet three in a row while active.
        assert_eq!(r.decide(&fail, false, now), None);
        assert_eq!(r.decide(&fail, false, now), None);
        assert_eq!(r.decide(&fail, true, now), None);
        assert_eq!(r.decide(&fail, true, now), None);
        // An activating run in between starts the count again.
        assert_eq!(r.decide(&fail, false, now), None);
        assert_eq!(r.decide(&fail, true, now), None);
        assert_eq!(r.decide(&fail, true, now), None);
        assert_eq!(
            r.decide(&fail, true, now),
            Some(Action::Restart("debvisor-webui.service".into()))
        );
    }

    #[test]
    fn inactive_units_escalate_late_and_checks_without_units_never() {
        let mut r = Remediation::new(&settings());
        let fail = run(Status::Fail);
        // Time stands still: every run at the same instant.
        let now = Instant::now();
        // 3 failures before a restart, 3 restarts: 12 runs before escalating
        // a unit that does not stay active.
        for _ in 0..11 {
            assert_eq!(r.decide(&fail, false, now), None);
        }
        let Some(Action::Escalate(reason)) = r.decide(&fail, false, now) else {
            panic!()
        };
        assert!(
            reason.contains("failed 12 times in a row and debvisor-webui.service does not stay active"),
            "{reason}"
        );
        assert_eq!(r.decide(&fail, false, now), None);
        let no_unit = CheckRun { unit: None, ..fail };
        for _ in 0..10 {
            assert_eq!(r.decide(&no_unit, true, now), None);
        }
    }

    struct Failing;
    #[async_trait::async_trait]
    impl Check for Failing {
        fn name(&self) -> &str {
            "service/cron"
        }
        fn kind(&self) -> &'static str {
            "service"
        }
        fn required(&self) -> bool {
            true
        }
        fn unit(&self) -> Option<&str> {
            Some("cron.service")
        }
        async fn run(&self, _: Instant) -> Outcome {
            Outcome::fail("no answer").with_unit_active()
        }
    }

    #[tokio::test]
    async fn driver_restarts_through_units_and_escalates() {
        let units = Arc::new(FakeUnits::new());
        let checks: Vec<Arc<dyn Check>> = vec![Arc::new(Failing)];
        let health = Arc::new(Health::new(
            &checks,
            Duration::from_secs(1),
            Duration::from_secs(1),
            5,
            0,
            None,
        ));
        let alerts = Alerts::spawn("n".into(), vec![], None, Some(health.clone()), Duration::from_millis(1));
        let s = HealthSettings {
            failures_before_restart: 1,
            restart_limit: 1,
            ..HealthSettings::default()
        };
        let mut changes = debvisor_systemd::Units::subscribe(units.as_ref());
        tokio::spawn(super::run(health.clone(), units.clone(), alerts, s));
        tokio::task::yield_now().await;
        health.record(
            "service/cron",
            &Outcome::fail("no answer").with_unit_active(),
            0,
            Duration::ZERO,
        );
        // The fake restart stops then starts cron.
        let change = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(change.name, "cron.service");
        health.record(
            "service/cron",
            &Outcome::fail("no answer").with_unit_active(),
            0,
            Duration::ZERO,
        );
        let mut rx = health.subscribe();
        let node = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|n| n.state == NodeState::Degraded as i32),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        let actions: Vec<&str> = node.alerts.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(actions, ["escalated", "restarted"]);
        assert!(
            node.degraded_reason
                .starts_with("service/cron still fails after 1 restarts"),
            "{}",
            node.degraded_reason
        );
    }
}
