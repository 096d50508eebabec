//! What the supervisor needs of systemd's manager beyond
//! [`debvisor_systemd::Units`]: whether the system is shutting down, and
//! resetting a failed unit (so that a unit that hit its start limit can be
//! started again). Units, jobs and state changes go through
//! [`debvisor_systemd::SystemdUnits`].

use std::sync::atomic::{AtomicBool, Ordering};

use zbus::Connection;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn system_state(&self) -> zbus::Result<String>;
}

/// The manager calls the supervisor makes besides [`debvisor_systemd::Units`].
#[async_trait::async_trait]
pub trait SystemManager: Send + Sync {
    /// True while the system is shutting down (`SystemState` is `stopping`):
    /// units stop on purpose then and must not be started again.
    async fn stopping(&self) -> bool;
    /// Clears a unit's failed state and start-limit counter.
    async fn reset_failed(&self, unit: &str) -> Result<(), String>;
}

/// systemd on the system bus.
#[derive(Clone)]
pub struct DbusManager {
    proxy: ManagerProxy<'static>,
}

impl std::fmt::Debug for DbusManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusManager").finish_non_exhaustive()
    }
}

impl DbusManager {
    /// Connects to the system bus.
    pub async fn connect() -> zbus::Result<Self> {
        let conn = Connection::system().await?;
        Ok(Self {
            proxy: ManagerProxy::new(&conn).await?,
        })
    }
}

#[async_trait::async_trait]
impl SystemManager for DbusManager {
    async fn stopping(&self) -> bool {
        // Uncached (emits_changed_signal = false): read at each call.
        self.proxy.system_state().await.is_ok_and(|s| s == "stopping")
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), String> {
        self.proxy
            .reset_failed_unit(unit)
            .await
            .map_err(|e| format!("ResetFailedUnit {unit}: {e}"))
    }
}

/// A manager for tests: [`FakeManager::set_stopping`] flips the state.
#[derive(Debug, Default)]
pub struct FakeManager {
    stopping: AtomicBool,
}

impl FakeManager {
    /// Makes [`SystemManager::stopping`] answer `stopping`.
    pub fn set_stopping(&self, stopping: bool) {
        self.stopping.store(stopping, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl SystemManager for FakeManager {
    async fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    async fn reset_failed(&self, _unit: &str) -> Result<(), String> {
        Ok(())
    }
}
