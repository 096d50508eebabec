//! Supervision: the supervised units are kept started from systemd's
//! signals (`Units::subscribe`), never by polling. A supervised unit that
//! becomes `inactive` or `failed` is started again as soon as the signal
//! arrives (a `failed` one is reset first, clearing its start limit),
//! unless the system is shutting down.
//!
//! A unit an operator stopped on purpose (through the API or `systemctl
//! stop`) is started again too: the supervised units are required for the
//! node to be managed at all, so the way to stop one for good is to remove
//! it from `[services] supervise` (the built-ins cannot be).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use debvisor_api::validate::UnitName;
use debvisor_systemd::{Units, UnitsError};
use tokio::sync::broadcast::error::RecvError;

use crate::health::metrics::HealthMetrics;
use crate::health::service::{AGENT_UNIT, WEBUI_UNIT};
use crate::manager::SystemManager;

/// libvirt's daemon, supervised when installed.
pub const LIBVIRTD_UNIT: &str = "libvirtd.service";

/// The supervised set: the agent, the console, libvirtd when `units` knows
/// it, and `extra` (deduplicated, in that order).
pub async fn supervised_set(units: &dyn Units, extra: &[String]) -> Vec<String> {
    let mut set = vec![AGENT_UNIT.to_string(), WEBUI_UNIT.to_string()];
    if let Ok(name) = UnitName::try_from(LIBVIRTD_UNIT) {
        match units.get(&name).await {
            Ok(d) if d.load_state != "not-found" => set.push(LIBVIRTD_UNIT.to_string()),
            Ok(_) | Err(UnitsError::NotFound { .. }) => {}
            Err(e) => tracing::warn!("Cannot tell whether libvirtd is installed: {e}"),
        }
    }
    for u in extra {
        if !set.contains(u) {
            set.push(u.clone());
        }
    }
    set
}

/// Whether a unit in `active_state` must be started again. `activating`
/// covers systemd's own auto-restart, which is let run.
pub fn needs_start(active_state: &str) -> bool {
    matches!(active_state, "inactive" | "failed")
}

/// Keeps the units of `set` started.
#[derive(Clone)]
pub struct Supervisor {
    units: Arc<dyn Units>,
    manager: Arc<dyn SystemManager>,
    set: Arc<Vec<String>>,
    metrics: Option<HealthMetrics>,
    starting: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Supervises `set` through `units` and `manager`, counting starts in
    /// `metrics` (`debvisor_supervisor_restarts_total`).
    pub fn new(
        units: Arc<dyn Units>,
        manager: Arc<dyn SystemManager>,
        set: Vec<String>,
        metrics: Option<HealthMetrics>,
    ) -> Self {
        Self {
            units,
            manager,
            set: Arc::new(set),
            metrics,
            starting: Arc::default(),
        }
    }

    /// The supervised units.
    pub fn units(&self) -> &[String] {
        &self.set
    }

    /// Starts `unit` (resetting it first when `failed`) unless a start is
    /// already under way; waits for the job.
    pub async fn start(&self, unit: &str, failed: bool) {
        let Ok(name) = UnitName::try_from(unit) else {
            tracing::error!("Supervised unit {unit:?} is not a valid unit name; fix [services] supervise");
            return;
        };
        if !self.lock().insert(unit.to_string()) {
            return;
        }
        if failed && let Err(e) = self.manager.reset_failed(unit).await {
            tracing::debug!("{e}");
        }
        match self.units.start(&name).await {
            Ok(job) if job.is_done() => {}
            Ok(job) => tracing::error!(
                "Starting {unit} ended with job result {}; see `journalctl -u {unit}`",
                job.result
            ),
            Err(e) => tracing::error!("Cannot start {unit}: {e}"),
        }
        self.lock().remove(unit);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.starting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the unit again from a signal saying it is `active_state`.
    async fn on_change(&self, unit: &str, active_state: &str) {
        if !self.set.iter().any(|u| u == unit) || !needs_start(active_state) {
            return;
        }
        if self.manager.stopping().await {
            tracing::info!(unit, "system is shutting down; not starting {unit} again");
            return;
        }
        tracing::warn!(unit, state = active_state, "supervised unit stopped; starting it again");
        if let Some(m) = &self.metrics {
            m.restarted(unit);
        }
        let me = self.clone();
        let (unit, failed) = (unit.to_string(), active_state == "failed");
        tokio::spawn(async move { me.start(&unit, failed).await });
    }

    /// Subscribes to unit changes, then starts every supervised unit
    /// (concurrently, without waiting) and keeps them started until the
    /// change stream ends.
    pub async fn run(self) {
        let mut changes = self.units.subscribe();
        for unit in self.set.iter() {
            let me = self.clone();
            let unit = unit.clone();
            tokio::spawn(async move { me.start(&unit, true).await });
        }
        loop {
            match changes.recv().await {
                Ok(change) => self.on_change(&change.name, &change.active_state).await,
                Err(RecvError::Lagged(n)) => {
                    // Missed signals: read the supervised units' states once.
                    tracing::warn!("missed {n} unit changes; re-reading the supervised units");
                    for unit in self.set.iter() {
                        let Ok(name) = UnitName::try_from(unit.as_str()) else {
                            continue;
                        };
                        if let Ok(d) = self.units.get(&name).await {
                            self.on_change(unit, &d.active_state).await;
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use debvisor_systemd::fakes::FakeUnits;

    use super::*;
    use crate::manager::FakeManager;

    async fn state(units: &FakeUnits, unit: &str) -> String {
        units
            .get(&UnitName::try_from(unit).unwrap())
            .await
            .unwrap()
            .active_state
    }

    async fn wait_active(units: &FakeUnits, unit: &str) {
        for _ in 0..500 {
            if state(units, unit).await == "active" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{unit} not started again");
    }

    #[tokio::test]
    async fn a_stopped_unit_is_started_again_but_not_during_shutdown() {
        let units = Arc::new(FakeUnits::new());
        let manager = Arc::new(FakeManager::default());
        let set = supervised_set(units.as_ref(), &["cron.service".into(), "ssh.service".into()]).await;
        assert_eq!(
            set,
            [
                "debvisor-agent.service",
                "debvisor-webui.service",
                "cron.service",
                "ssh.service"
            ]
        );
        let sup = Supervisor::new(units.clone(), manager.clone(), set, None);
        tokio::spawn(sup.run());
        // ssh was inactive: started at supervision start.
        wait_active(&units, "ssh.service").await;
        let agent = UnitName::try_from("debvisor-agent.service").unwrap();
        units.stop(&agent).await.unwrap();
        wait_active(&units, "debvisor-agent.service").await;
        // A unit outside the set is left alone.
        let networkd = UnitName::try_from("systemd-networkd.service").unwrap();
        units.stop(&networkd).await.unwrap();
        // During shutdown nothing is started again.
        manager.set_stopping(true);
        units.stop(&agent).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(state(&units, "debvisor-agent.service").await, "inactive");
        assert_eq!(state(&units, "systemd-networkd.service").await, "inactive");
    }

    #[test]
    fn restarts_only_stopped_units() {
        assert!(needs_start("failed") && needs_start("inactive"));
        assert!(!needs_start("active") && !needs_start("activating") && !needs_start("deactivating"));
    }
}
