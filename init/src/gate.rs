//! The boot gate: once every required check passes (PASS or WARN) — the
//! required service checks include their units being active — the boot is
//! declared GOOD; if that has not happened by the deadline it is declared
//! BAD, naming what held it. Either way an alert, a serial console marker
//! (`DEBVISOR: boot-good <slot>` / `DEBVISOR: boot-bad <reason>`) and
//! `NodeHealth.gate`. Nothing here talks to RAUC.
//!
//! The deadline counts from boot (kernel uptime), and the decision is kept
//! in [`GATE_STATE`] (on /run, so for this boot only): a debvisor-init that
//! restarts after deciding restores the decision instead of deciding again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use debvisor_api::health::v1::{BootGate, CheckStatus, GateState, NodeHealth, Severity};
use tokio::time::Instant;

use crate::alerts::Alerts;
use crate::console;
use crate::health::engine::{Health, now_unix_ms};

/// Where the decision of this boot is kept.
pub const GATE_STATE: &str = "/run/debvisor/boot-gate.json";

/// The decision as kept in [`GATE_STATE`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Saved {
    good: bool,
    deadline_unix_ms: i64,
    decided_unix_ms: i64,
    reason: String,
    slot: String,
}

impl Saved {
    fn gate(&self) -> BootGate {
        BootGate {
            state: if self.good { GateState::Good } else { GateState::Bad } as i32,
            deadline_unix_ms: self.deadline_unix_ms,
            decided_unix_ms: self.decided_unix_ms,
            reason: self.reason.clone(),
            slot: self.slot.clone(),
        }
    }
}

/// Time since boot from `/proc/uptime` text.
pub fn uptime(text: &str) -> Option<Duration> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every required check passed before the deadline.
    Good,
    /// The deadline passed first; why.
    Bad(String),
}

/// The booted slot from kernel command line text (`rauc.slot=A`).
pub fn booted_slot(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("rauc.slot="))
        .unwrap_or_default()
        .to_string()
}

/// What holds the gate in `node`: the required checks not passing.
pub fn held_by(node: &NodeHealth) -> Vec<String> {
    node.checks
        .iter()
        .filter(|c| c.required)
        .filter_map(|c| {
            let last = c.last.clone().unwrap_or_default();
            let status = CheckStatus::try_from(last.status).unwrap_or(CheckStatus::Pending);
            match status {
                CheckStatus::Pass | CheckStatus::Warn => None,
                CheckStatus::Fail => Some(format!("{} ({})", c.name, last.message)),
                _ => Some(format!("{} (pending)", c.name)),
            }
        })
        .collect()
}

/// The gate's decision logic.
#[derive(Debug)]
pub struct Gate {
    deadline: Instant,
    deadline_secs: u64,
    decided: bool,
}

impl Gate {
    /// A gate whose deadline is `deadline` from `start`.
    pub fn new(start: Instant, deadline: Duration) -> Self {
        Self {
            deadline: start + deadline,
            deadline_secs: deadline.as_secs(),
            decided: false,
        }
    }

    /// When the gate declares the boot bad.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Decides on `node` at `now`, once.
    pub fn evaluate(&mut self, node: &NodeHealth, now: Instant) -> Option<Verdict> {
        if self.decided {
            return None;
        }
        let held = held_by(node);
        let verdict = if held.is_empty() {
            Verdict::Good
        } else if now >= self.deadline {
            Verdict::Bad(format!(
                "not healthy within {} s; held by {}",
                self.deadline_secs,
                held.join(", ")
            ))
        } else {
            return None;
        };
        self.decided = true;
        Some(verdict)
    }
}

/// Runs the gate over `health` until it decides, `since_boot` after boot;
/// returns the verdict. With `state`, restores a decision kept there (no
/// new alert or marker) or keeps the new one there.
pub async fn run(
    health: Arc<Health>,
    alerts: Alerts,
    deadline: Duration,
    since_boot: Duration,
    slot: String,
    state: Option<PathBuf>,
) -> Verdict {
    if let Some(saved) = state.as_deref().and_then(restore) {
        tracing::info!(
            good = saved.good,
            "boot gate already decided for this boot: {}",
            saved.reason
        );
        health.set_gate(saved.gate());
        return if saved.good {
            Verdict::Good
        } else {
            Verdict::Bad(saved.reason)
        };
    }
    let left = deadline.saturating_sub(since_boot);
    let mut gate = Gate::new(Instant::now(), left);
    gate.deadline_secs = deadline.as_secs();
    let deadline_unix_ms = now_unix_ms() + i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
    health.set_gate(BootGate {
        state: GateState::Pending as i32,
        deadline_unix_ms,
        decided_unix_ms: 0,
        reason: String::new(),
        slot: slot.clone(),
    });
    let mut rx = health.subscribe();
    let verdict = loop {
        let node = rx.borrow_and_update().clone();
        if let Some(v) = gate.evaluate(&node, Instant::now()) {
            break v;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { std::future::pending::<()>().await },
            () = tokio::time::sleep_until(gate.deadline()) => {}
        }
    };
    let state_file = state;
    let (state, reason) = match &verdict {
        Verdict::Good => (
            GateState::Good,
            "all required units active and required checks passing".to_string(),
        ),
        Verdict::Bad(r) => (GateState::Bad, r.clone()),
    };
    let saved = Saved {
        good: state == GateState::Good,
        deadline_unix_ms,
        decided_unix_ms: now_unix_ms(),
        reason: reason.clone(),
        slot: slot.clone(),
    };
    health.set_gate(saved.gate());
    if let Some(path) = &state_file {
        keep(path, &saved);
    }
    let slot_text = if slot.is_empty() {
        "unknown slot".to_string()
    } else {
        format!("slot {slot}")
    };
    match &verdict {
        Verdict::Good => {
            console::marker("boot-good", &slot);
            alerts.raise(
                Severity::Info,
                "",
                "boot-good",
                &format!("boot of {slot_text} is good: {reason}"),
            );
        }
        Verdict::Bad(_) => {
            console::marker("boot-bad", &reason);
            alerts.raise(
                Severity::Critical,
                "",
                "boot-bad",
                &format!("boot of {slot_text} is bad: {reason}"),
            );
        }
    }
    verdict
}

fn restore(path: &Path) -> Option<Saved> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn keep(path: &Path, saved: &Saved) {
    let text = serde_json::to_string(saved).unwrap_or_default();
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, text));
    if let Err(e) = written {
        tracing::warn!("Cannot keep the boot gate's decision in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use debvisor_api::health::v1::{Check, CheckResult};

    use super::*;

    fn check(name: &str, required: bool, status: CheckStatus) -> Check {
        Check {
            name: name.into(),
            required,
            last: Some(CheckResult {
                status: status as i32,
                message: "m".into(),
                ..CheckResult::default()
            }),
            ..Check::default()
        }
    }

    fn node(checks: Vec<Check>) -> NodeHealth {
        NodeHealth {
            checks,
            ..NodeHealth::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn good_once_required_checks_pass() {
        let mut gate = Gate::new(Instant::now(), Duration::from_secs(300));
        let mut n = node(vec![
            check("service/debvisor-agent", true, CheckStatus::Pending),
            check("storage/data", true, CheckStatus::Warn),
            check("dns", false, CheckStatus::Fail),
        ]);
        assert_eq!(gate.evaluate(&n, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(20)).await;
        n.checks[0] = check("service/debvisor-agent", true, CheckStatus::Pass);
        assert_eq!(gate.evaluate(&n, Instant::now()), Some(Verdict::Good));
        // Decided once.
        assert_eq!(gate.evaluate(&n, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_at_the_deadline_naming_what_held_it() {
        let mut gate = Gate::new(Instant::now(), Duration::from_secs(300));
        let n = node(vec![
            check("service/debvisor-webui", true, CheckStatus::Fail),
            check("certificate/server", true, CheckStatus::Pending),
            check("storage/data", true, CheckStatus::Pass),
        ]);
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(gate.evaluate(&n, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            gate.evaluate(&n, Instant::now()),
            Some(Verdict::Bad(
                "not healthy within 300 s; held by service/debvisor-webui (m), certificate/server (pending)".into()
            ))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn driver_decides_once_per_boot() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("boot-gate.json");
        let health = Arc::new(Health::new(
            &[],
            Duration::from_secs(1),
            Duration::from_secs(1),
            1,
            0,
            None,
        ));
        let alerts = Alerts::spawn("n".into(), vec![], None, Some(health.clone()), Duration::from_millis(1));
        // No checks: nothing holds the gate.
        let deadline = Duration::from_secs(300);
        let v = run(
            health.clone(),
            alerts.clone(),
            deadline,
            Duration::from_secs(7),
            "A".into(),
            Some(file.clone()),
        )
        .await;
        assert_eq!(v, Verdict::Good);
        let gate = health.snapshot().gate.unwrap();
        assert_eq!((gate.state, gate.slot.as_str()), (GateState::Good as i32, "A"));
        assert_eq!(health.snapshot().alerts[0].action, "boot-good");
        // A restarted supervisor restores the decision, without a new alert.
        let again = Arc::new(Health::new(
            &[],
            Duration::from_secs(1),
            Duration::from_secs(1),
            1,
            0,
            None,
        ));
        let alerts = Alerts::spawn("n".into(), vec![], None, Some(again.clone()), Duration::from_millis(1));
        let v = run(
            again.clone(),
            alerts,
            deadline,
            Duration::from_secs(900),
            "A".into(),
            Some(file),
        )
        .await;
        assert_eq!(v, Verdict::Good);
        assert_eq!(again.snapshot().gate.unwrap().state, GateState::Good as i32);
        assert!(again.snapshot().alerts.is_empty());
    }

    #[test]
    fn uptime_text() {
        assert_eq!(uptime("12.50 20.00\n"), Some(Duration::from_millis(12_500)));
        assert_eq!(uptime(""), None);
    }

    #[test]
    fn slot_from_cmdline() {
        assert_eq!(booted_slot("root=/dev/vda2 rauc.slot=B quiet"), "B");
        assert_eq!(booted_slot("quiet"), "");
    }
}
