//! The boot gate: once every required check passes (PASS or WARN) — the
//! required service checks include their units being active — the boot is
//! declared GOOD; if that has not happened by the deadline it is declared
//! BAD, naming what held it. Either way an alert, a serial console marker
//! (`DEBVISOR: boot-good <slot>` / `DEBVISOR: boot-bad <reason>`) and
//! `NodeHealth.gate`. Then [`act`] tells RAUC: a good boot marks the booted
//! slot good (`Mark("good", "booted")`), so that GRUB keeps booting it; a bad
//! boot marks it bad and reboots the node through systemd, so that GRUB
//! starts the other slot.
//!
//! The deadline counts from boot (kernel uptime), and the decision is kept
//! in [`GATE_STATE`] (on /run, so for this boot only): a debvisor-init that
//! restarts after deciding restores the decision instead of deciding again.
//! What [`act`] has done is kept in [`GATE_ACTIONS`] the same way, so that a
//! restart neither marks twice nor reboots twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use debvisor_api::health::v1::{BootGate, CheckStatus, GateState, NodeHealth, Severity};
use debvisor_rauc::{MarkState, Rauc, SlotRef};
use debvisor_systemd::Units;
use tokio::time::Instant;

use crate::alerts::Alerts;
use crate::console;
use crate::health::engine::{Health, now_unix_ms};

/// Where the decision of this boot is kept.
pub const GATE_STATE: &str = "/run/debvisor/boot-gate.json";
/// Where what [`act`] did in this boot is kept.
pub const GATE_ACTIONS: &str = "/run/debvisor/boot-gate-actions.json";

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
    if let Some(saved) = state.as_deref().and_then(restore_json::<Saved>) {
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
        keep_json(path, &saved);
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

/// What the gate acts on after deciding: RAUC, systemd (for the reboot) and
/// the alerts; RAUC calls are retried `attempts` times, `retry_delay` apart
/// (RAUC may still be starting).
#[derive(Clone)]
pub struct SlotActions {
    /// RAUC.
    pub rauc: Arc<dyn Rauc>,
    /// systemd, for the reboot after a bad boot.
    pub units: Arc<dyn Units>,
    /// Where alerts go.
    pub alerts: Alerts,
    /// How many times a RAUC call is tried.
    pub attempts: u32,
    /// The pause between tries.
    pub retry_delay: Duration,
}

/// What [`act`] did in this boot, as kept in [`GATE_ACTIONS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Acted {
    /// The mark RAUC accepted for the booted slot (`good` or `bad`) and the
    /// slot's name; empty when none yet.
    pub marked: String,
    /// The slot RAUC marked, e.g. `rootfs.0`.
    pub slot: String,
    /// True once the reboot after a bad boot was asked of systemd.
    pub reboot_requested: bool,
}

/// Carries out `verdict` for the booted slot `bootname` (from `rauc.slot=`):
/// marks it good, or marks it bad and reboots. Skipped (and said so) when the
/// node did not boot from a RAUC slot. With `state`, steps done by an earlier
/// debvisor-init of this boot are not repeated. If RAUC cannot be reached the
/// decision stands: this is logged, shown on the console and alerted, and a
/// bad boot still reboots (GRUB skips a slot tried once and never marked
/// good).
pub async fn act(verdict: &Verdict, bootname: &str, actions: &SlotActions, state: Option<&Path>) -> Acted {
    let mut acted: Acted = state.and_then(restore_json).unwrap_or_default();
    if bootname.is_empty() {
        tracing::info!("not booted from a RAUC slot (no rauc.slot= on the kernel command line): no slot is marked");
        return acted;
    }
    let (mark, word) = match verdict {
        Verdict::Good => (MarkState::Good, "good"),
        Verdict::Bad(_) => (MarkState::Bad, "bad"),
    };
    if acted.marked == word {
        tracing::info!(slot = %acted.slot, "the booted slot was already marked {word} in this boot");
    } else {
        match mark_booted(actions, mark).await {
            Ok((slot, message)) => {
                tracing::info!(%slot, "boot gate: {message}");
                crate::console::marker(&format!("slot-{word}"), &format!("{slot} ({bootname})"));
                acted.marked = word.to_string();
                acted.slot = slot;
            }
            Err(e) => {
                let msg = format!(
                    "could not mark the booted slot {bootname} {word} through RAUC: {e}; the boot gate's decision \
                     stands (mark it by hand: `debvisorctl update mark-{word}` or `rauc status mark-{word} booted`)"
                );
                tracing::error!("{msg}");
                crate::console::marker("rauc-unreachable", &format!("slot {bootname} not marked {word}"));
                actions.alerts.raise(Severity::Warning, "", "rauc-mark-failed", &msg);
            }
        }
        if let Some(path) = state {
            keep_json(path, &acted);
        }
    }
    if matches!(verdict, Verdict::Bad(_)) {
        if acted.reboot_requested {
            tracing::warn!("the reboot after this bad boot was already requested; not asking again");
            return acted;
        }
        acted.reboot_requested = true;
        if let Some(path) = state {
            keep_json(path, &acted);
        }
        tracing::warn!("boot gate: the boot of slot {bootname} is bad; rebooting into the other slot");
        crate::console::marker("rebooting", &format!("boot of slot {bootname} is bad"));
        if let Err(e) = actions.units.reboot().await {
            let msg = format!("the reboot after the bad boot of slot {bootname} failed: {e}");
            tracing::error!("{msg}");
            crate::console::marker("reboot-failed", &e.to_string());
            actions.alerts.raise(Severity::Critical, "", "reboot-failed", &msg);
        }
    }
    acted
}

/// `Mark(state, "booted")`, tried `actions.attempts` times.
async fn mark_booted(actions: &SlotActions, state: MarkState) -> Result<(String, String), debvisor_rauc::RaucError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match actions.rauc.mark(state, &SlotRef::booted()).await {
            Ok(out) => return Ok((out.slot, out.message)),
            Err(e) if tries < actions.attempts.max(1) => {
                tracing::warn!("RAUC Mark {state} booted failed (try {tries}): {e}; retrying");
                tokio::time::sleep(actions.retry_delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn restore_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn keep_json<T: serde::Serialize>(path: &Path, value: &T) {
    let text = serde_json::to_string(value).unwrap_or_default();
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, text));
    if let Err(e) = written {
        tracing::warn!("Cannot keep the boot gate's state in {}: {e}", path.display());
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

    #[test]
    fn good_once_required_checks_pass() {
        let t0 = Instant::now();
        let mut gate = Gate::new(t0, Duration::from_secs(300));
        let mut n = node(vec![
            check("service/debvisor-agent", true, CheckStatus::Pending),
            check("storage/data", true, CheckStatus::Warn),
            check("dns", false, CheckStatus::Fail),
        ]);
        assert_eq!(gate.evaluate(&n, t0), None);
        let t = t0 + Duration::from_secs(20);
        n.checks[0] = check("service/debvisor-agent", true, CheckStatus::Pass);
        assert_eq!(gate.evaluate(&n, t), Some(Verdict::Good));
        // Decided once.
        assert_eq!(gate.evaluate(&n, t), None);
    }

    #[test]
    fn bad_at_the_deadline_naming_what_held_it() {
        let t0 = Instant::now();
        let mut gate = Gate::new(t0, Duration::from_secs(300));
        let n = node(vec![
            check("service/debvisor-webui", true, CheckStatus::Fail),
            check("certificate/server", true, CheckStatus::Pending),
            check("storage/data", true, CheckStatus::Pass),
        ]);
        assert_eq!(gate.evaluate(&n, t0 + Duration::from_secs(299)), None);
        assert_eq!(
            gate.evaluate(&n, t0 + Duration::from_secs(300)),
            Some(Verdict::Bad(
                "not healthy within 300 s; held by service/debvisor-webui (m), certificate/server (pending)".into()
            ))
        );
    }

    #[tokio::test]
    async fn driver_decides_once_per_boot() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("boot-gate.json");
        let health = no_checks();
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
        let again = no_checks();
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

    /// A health engine without checks: nothing holds the gate.
    fn no_checks() -> Arc<Health> {
        Arc::new(Health::new(
            &[],
            Duration::from_secs(1),
            Duration::from_secs(1),
            1,
            0,
            None,
        ))
    }

    fn actions(
        rauc: &debvisor_rauc::fakes::FakeRauc,
    ) -> (SlotActions, Arc<Health>, Arc<debvisor_systemd::fakes::FakeUnits>) {
        let health = no_checks();
        let alerts = Alerts::spawn("n".into(), vec![], None, Some(health.clone()), Duration::from_millis(1));
        let units = Arc::new(debvisor_systemd::fakes::FakeUnits::new());
        let a = SlotActions {
            rauc: Arc::new(rauc.clone()),
            units: units.clone(),
            alerts,
            attempts: 2,
            retry_delay: Duration::from_millis(1),
        };
        (a, health, units)
    }

    #[tokio::test]
    async fn a_good_boot_marks_the_booted_slot_good_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("actions.json");
        let rauc = debvisor_rauc::fakes::FakeRauc::new("c");
        rauc.set_booted_status("bad");
        let (a, _, units) = actions(&rauc);
        let acted = act(&Verdict::Good, "A", &a, Some(&file)).await;
        assert_eq!((acted.marked.as_str(), acted.slot.as_str()), ("good", "rootfs.0"));
        assert!(!acted.reboot_requested);
        assert_eq!(rauc.marks(), vec![(MarkState::Good, "rootfs.0".to_string())]);
        assert!(rauc.status().await.unwrap().slots[0].is_good());
        assert_eq!(units.shutdown_requested(), None);
        // A restarted debvisor-init does not mark again.
        let again = act(&Verdict::Good, "A", &a, Some(&file)).await;
        assert_eq!(again, acted);
        assert_eq!(rauc.marks().len(), 1);
    }

    #[tokio::test]
    async fn a_bad_boot_marks_bad_and_reboots_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("actions.json");
        let rauc = debvisor_rauc::fakes::FakeRauc::new("c");
        let (a, _, units) = actions(&rauc);
        let acted = act(&Verdict::Bad("held".into()), "A", &a, Some(&file)).await;
        assert_eq!(acted.marked, "bad");
        assert!(acted.reboot_requested);
        assert_eq!(rauc.marks(), vec![(MarkState::Bad, "rootfs.0".to_string())]);
        assert_eq!(units.shutdown_requested(), Some("reboot.target"));
        let (b, _, units2) = actions(&rauc);
        let again = act(&Verdict::Bad("held".into()), "A", &b, Some(&file)).await;
        assert_eq!(again, acted);
        assert_eq!(rauc.marks().len(), 1);
        assert_eq!(units2.shutdown_requested(), None, "no second reboot");
    }

    #[tokio::test]
    async fn without_rauc_the_decision_stands() {
        let rauc = debvisor_rauc::fakes::FakeRauc::new("c");
        rauc.set_unreachable(true);
        let (a, health, units) = actions(&rauc);
        let acted = act(&Verdict::Good, "A", &a, None).await;
        assert_eq!(acted.marked, "");
        let alerts = health.snapshot().alerts;
        assert_eq!(alerts[0].action, "rauc-mark-failed");
        assert!(
            alerts[0].message.contains("debvisorctl update mark-good"),
            "{}",
            alerts[0].message
        );
        // A bad boot still reboots: GRUB skips the slot it tried once.
        let acted = act(&Verdict::Bad("x".into()), "A", &a, None).await;
        assert!(acted.reboot_requested);
        assert_eq!(units.shutdown_requested(), Some("reboot.target"));
    }

    #[tokio::test]
    async fn nothing_is_marked_outside_a_rauc_slot() {
        let rauc = debvisor_rauc::fakes::FakeRauc::new("c");
        let (a, _, units) = actions(&rauc);
        let acted = act(&Verdict::Bad("x".into()), "", &a, None).await;
        assert_eq!(acted, Acted::default());
        assert!(rauc.marks().is_empty());
        assert_eq!(units.shutdown_requested(), None);
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
