//! systemd through its D-Bus API (org.freedesktop.systemd1), spoken with
//! zbus: start units and wait for their jobs, and follow their state from
//! signals rather than by polling.

use std::collections::HashMap;

use tokio_stream::StreamExt;
use zbus::Connection;
use zbus::OwnedObjectPath;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn system_state(&self) -> zbus::Result<String>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
}

/// A systemd call that failed, naming the unit.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The D-Bus call failed.
    #[error("systemd D-Bus call {call} for {unit} failed")]
    Call {
        /// The method.
        call: &'static str,
        /// The unit.
        unit: String,
        /// Why.
        #[source]
        source: zbus::Error,
    },
    /// The start job finished with a result other than `done`.
    #[error("Starting {unit} ended with job result '{result}'; see `journalctl -u {unit}`")]
    JobFailed {
        /// The unit.
        unit: String,
        /// systemd's job result (failed, timeout, dependency, ...).
        result: String,
    },
}

/// The system manager.
#[derive(Clone)]
pub struct Systemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
}

impl Systemd {
    /// Connects to the system bus and subscribes to systemd's signals.
    pub async fn connect() -> zbus::Result<Self> {
        let conn = Connection::system().await?;
        let manager = ManagerProxy::new(&conn).await?;
        manager.subscribe().await?;
        Ok(Self { conn, manager })
    }

    /// Starts `unit` and waits for its start job to finish (for a
    /// Type=notify service: until it reports READY=1).
    pub async fn start_and_wait(&self, unit: &str) -> Result<(), SystemdError> {
        let call = |call| {
            move |source| SystemdError::Call {
                call,
                unit: unit.to_string(),
                source,
            }
        };
        // Listen before starting so the JobRemoved signal cannot be missed.
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(call("receive JobRemoved"))?;
        let _ = self.manager.reset_failed_unit(unit).await; // only fails when not failed
        let job = self
            .manager
            .start_unit(unit, "replace")
            .await
            .map_err(call("StartUnit"))?;
        while let Some(sig) = removed.next().await {
            let args = sig.args().map_err(call("JobRemoved args"))?;
            if args.job == job {
                return match args.result.as_str() {
                    "done" => Ok(()),
                    other => Err(SystemdError::JobFailed {
                        unit: unit.to_string(),
                        result: other.to_string(),
                    }),
                };
            }
        }
        Err(SystemdError::JobFailed {
            unit: unit.to_string(),
            result: "signal stream ended".to_string(),
        })
    }

    /// True while the system is shutting down or rebooting: a stopping unit
    /// is then expected and must not be started again.
    pub async fn stopping(&self) -> bool {
        self.manager.system_state().await.is_ok_and(|s| s == "stopping")
    }

    /// A proxy for `unit`'s properties, following PropertiesChanged.
    async fn unit(&self, unit: &str) -> Result<UnitProxy<'static>, SystemdError> {
        let call = |call| {
            move |source| SystemdError::Call {
                call,
                unit: unit.to_string(),
                source,
            }
        };
        let path = self.manager.load_unit(unit).await.map_err(call("LoadUnit"))?;
        UnitProxy::builder(&self.conn)
            .path(path)
            .build()
            .await
            .map_err(call("Unit proxy"))
    }
}

/// One observed state change of a supervised unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitChange {
    /// The unit.
    pub unit: String,
    /// Its new ActiveState.
    pub active_state: String,
}

/// Whether a unit in `active_state` must be started again by the supervisor.
/// `activating` covers systemd's own auto-restart, which we let run.
pub fn needs_start(active_state: &str) -> bool {
    matches!(active_state, "inactive" | "failed")
}

/// A merged stream of ActiveState changes of `units`.
pub async fn watch_units(
    systemd: &Systemd,
    units: &[String],
) -> Result<impl tokio_stream::Stream<Item = UnitChange> + Unpin + use<>, SystemdError> {
    let mut streams = tokio_stream::StreamMap::new();
    let mut proxies = HashMap::new();
    for u in units {
        let proxy = systemd.unit(u).await?;
        let changes = proxy.receive_active_state_changed().await;
        streams.insert(u.clone(), changes);
        proxies.insert(u.clone(), proxy);
    }
    Ok(Box::pin(streams.then(move |(unit, change)| {
        // Keep the proxies alive as long as the stream.
        let _keep = proxies.len();
        async move {
            let active_state = change.get().await.unwrap_or_else(|_| "unknown".to_string());
            UnitChange { unit, active_state }
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::needs_start;

    #[test]
    fn restarts_only_stopped_units() {
        assert!(needs_start("failed"));
        assert!(needs_start("inactive"));
        assert!(!needs_start("active"));
        assert!(!needs_start("activating"));
        assert!(!needs_start("deactivating"));
    }
}
