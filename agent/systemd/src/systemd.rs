//! [`SystemdUnits`]: the [`Units`] facility over systemd's D-Bus API
//! (`org.freedesktop.systemd1`), spoken with zbus.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::time::Duration;

use debvisor_api::validate::{UnitName, UnitType};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use zbus::names::InterfaceName;
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedObjectPath, OwnedVariant};

use crate::bus_path::{UNIT_PATH_PREFIX, unit_name_from_path};
use crate::units::NOT_LOADED;
use crate::{JobResult, UnitChange, UnitDetail, UnitFileChange, UnitFilter, UnitInfo, Units, UnitsError};

/// How long [`SystemdUnits`] waits for a job by default: systemd's own
/// default start timeout is 90 s.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(90);

const UNIT_IFACE: InterfaceName<'static> = InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Unit");
const SERVICE_IFACE: InterfaceName<'static> =
    InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Service");

/// A row of `ListUnitsByPatterns`: name, description, load, active and sub
/// state, followed unit, object path, job id, job type, job path.
type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// A change of `EnableUnitFiles`/`DisableUnitFiles`: type, file, destination.
type Change = (String, String, String);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn list_units_by_patterns(&self, states: &[&str], patterns: &[&str]) -> zbus::Result<Vec<ListedUnit>>;
    fn list_unit_files_by_patterns(&self, states: &[&str], patterns: &[&str]) -> zbus::Result<Vec<(String, String)>>;
    fn enable_unit_files(&self, files: &[&str], runtime: bool, force: bool) -> zbus::Result<(bool, Vec<Change>)>;
    fn disable_unit_files(&self, files: &[&str], runtime: bool) -> zbus::Result<Vec<Change>>;
    fn reload(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

/// The jobs [`SystemdUnits`] queues and waits for.
#[derive(Debug, Clone, Copy)]
enum Job {
    Start,
    Stop,
    Restart,
}

impl Job {
    /// The Manager method that queues the job.
    fn call(self) -> &'static str {
        match self {
            Job::Start => "StartUnit",
            Job::Stop => "StopUnit",
            Job::Restart => "RestartUnit",
        }
    }
}

/// The host's systemd, on the system bus.
///
/// [`connect`](Self::connect) subscribes to systemd's signals and spawns one
/// task that turns the `PropertiesChanged` signals of unit objects into
/// [`UnitChange`]s for [`Units::subscribe`]; dropping the value stops it.
pub struct SystemdUnits {
    conn: Connection,
    manager: ManagerProxy<'static>,
    changes: broadcast::Sender<UnitChange>,
    watcher: tokio::task::AbortHandle,
    job_timeout: Duration,
}

impl SystemdUnits {
    /// Connects to the system bus, starts following unit state changes and
    /// subscribes to systemd's signals.
    pub async fn connect() -> Result<Self, UnitsError> {
        let conn = Connection::system()
            .await
            .map_err(|source| UnitsError::Connect { source })?;
        Self::connect_to(conn).await
    }

    /// Speaks to the manager on `conn` instead of the system bus: a user
    /// manager on its user bus, in tests. Must be called within a Tokio
    /// runtime.
    pub async fn connect_to(conn: Connection) -> Result<Self, UnitsError> {
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(|source| UnitsError::Connect { source })?;
        let (changes, _) = broadcast::channel(256);
        // Add the match before Subscribe so that no change is missed.
        let stream = unit_change_stream(&conn)
            .await
            .map_err(UnitsError::bus("AddMatch PropertiesChanged", "units"))?;
        let watcher = tokio::spawn(forward_changes(stream, changes.clone())).abort_handle();
        manager
            .subscribe()
            .await
            .map_err(UnitsError::bus("Subscribe", "the manager"))?;
        Ok(Self {
            conn,
            manager,
            changes,
            watcher,
            job_timeout: DEFAULT_JOB_TIMEOUT,
        })
    }

    /// Waits at most `timeout` for a job instead of [`DEFAULT_JOB_TIMEOUT`].
    pub fn with_job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// Queues `job` for `name` and waits for its `JobRemoved` signal.
    async fn run_job(&self, job: Job, name: &UnitName) -> Result<JobResult, UnitsError> {
        let call = job.call();
        let unit = name.as_str();
        // Listen before queueing so that the signal cannot be missed.
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(UnitsError::bus("AddMatch JobRemoved", unit))?;
        let queued = match job {
            Job::Start => self.manager.start_unit(unit, "replace").await,
            Job::Stop => self.manager.stop_unit(unit, "replace").await,
            Job::Restart => self.manager.restart_unit(unit, "replace").await,
        };
        let job = queued.map_err(UnitsError::bus(call, unit))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let args = signal.args().map_err(UnitsError::bus("JobRemoved", unit))?;
                if *args.job() == job {
                    return Ok(JobResult {
                        job: *args.id(),
                        result: args.result().clone(),
                    });
                }
            }
            Err(UnitsError::Disconnected { unit: unit.to_string() })
        };
        tokio::time::timeout(self.job_timeout, wait).await.unwrap_or_else(|_| {
            Err(UnitsError::JobTimeout {
                unit: unit.to_string(),
                secs: self.job_timeout.as_secs(),
            })
        })
    }

    /// All properties of `iface` of the unit object at `path`.
    async fn properties(
        &self,
        path: &OwnedObjectPath,
        iface: InterfaceName<'static>,
        unit: &str,
    ) -> Result<HashMap<String, OwnedVariant>, UnitsError> {
        let proxy = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .path(path.as_ref())
            .build()
            .await
            .map_err(UnitsError::bus("Properties proxy", unit))?;
        proxy.get_all(iface).await.map_err(UnitsError::bus("GetAll", unit))
    }

    /// Queues `target` irreversibly, without waiting.
    async fn shutdown(&self, target: &str) -> Result<(), UnitsError> {
        self.manager
            .start_unit(target, "replace-irreversibly")
            .await
            .map(drop)
            .map_err(UnitsError::bus("StartUnit", target))
    }
}

impl Drop for SystemdUnits {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[async_trait::async_trait]
impl Units for SystemdUnits {
    async fn list(&self, filter: &UnitFilter) -> Result<Vec<UnitInfo>, UnitsError> {
        let patterns: Vec<&str> = filter.patterns.iter().map(|p| p.as_str()).collect();
        // With unit files, every loaded unit is needed to tell loaded files
        // from the others, so states are then filtered here only.
        let states: Vec<&str> = match filter.include_inactive {
            true => Vec::new(),
            false => filter.states.iter().map(|s| s.as_str()).collect(),
        };
        let listed = self
            .manager
            .list_units_by_patterns(&states, &patterns)
            .await
            .map_err(UnitsError::bus("ListUnitsByPatterns", "units"))?;
        let mut units: BTreeMap<String, UnitInfo> = listed
            .into_iter()
            .map(|(name, description, load_state, active_state, sub_state, ..)| {
                let info = UnitInfo {
                    name: name.clone(),
                    description,
                    load_state,
                    active_state,
                    sub_state,
                    unit_file_state: None,
                };
                (name, info)
            })
            .collect();
        if filter.include_inactive {
            let files = self
                .manager
                .list_unit_files_by_patterns(&[], &patterns)
                .await
                .map_err(UnitsError::bus("ListUnitFilesByPatterns", "units"))?;
            merge_unit_files(&mut units, files);
        }
        Ok(units
            .into_values()
            .filter(|u| filter.admits(&u.name, &u.load_state, &u.active_state, &u.sub_state))
            .collect())
    }

    async fn get(&self, name: &UnitName) -> Result<UnitDetail, UnitsError> {
        let unit = name.as_str();
        let path = self
            .manager
            .load_unit(unit)
            .await
            .map_err(UnitsError::bus("LoadUnit", unit))?;
        let props = self.properties(&path, UNIT_IFACE, unit).await?;
        let service = match name.unit_type() {
            UnitType::Service => Some(self.properties(&path, SERVICE_IFACE, unit).await?),
            _ => None,
        };
        detail_from_properties(unit, &props, service.as_ref())
    }

    async fn start(&self, name: &UnitName) -> Result<JobResult, UnitsError> {
        self.run_job(Job::Start, name).await
    }

    async fn stop(&self, name: &UnitName) -> Result<JobResult, UnitsError> {
        self.run_job(Job::Stop, name).await
    }

    async fn restart(&self, name: &UnitName) -> Result<JobResult, UnitsError> {
        self.run_job(Job::Restart, name).await
    }

    async fn enable(&self, name: &UnitName) -> Result<Vec<UnitFileChange>, UnitsError> {
        let unit = name.as_str();
        let (install_info, changes) = self
            .manager
            .enable_unit_files(&[unit], false, false)
            .await
            .map_err(UnitsError::bus("EnableUnitFiles", unit))?;
        if !install_info {
            tracing::warn!(unit, "Unit file has no [Install] section; enabling it changes nothing");
        }
        self.manager.reload().await.map_err(UnitsError::bus("Reload", unit))?;
        Ok(changes.into_iter().map(file_change).collect())
    }

    async fn disable(&self, name: &UnitName) -> Result<Vec<UnitFileChange>, UnitsError> {
        let unit = name.as_str();
        let changes = self
            .manager
            .disable_unit_files(&[unit], false)
            .await
            .map_err(UnitsError::bus("DisableUnitFiles", unit))?;
        self.manager.reload().await.map_err(UnitsError::bus("Reload", unit))?;
        Ok(changes.into_iter().map(file_change).collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<UnitChange> {
        self.changes.subscribe()
    }

    async fn reboot(&self) -> Result<(), UnitsError> {
        self.shutdown("reboot.target").await
    }

    async fn poweroff(&self) -> Result<(), UnitsError> {
        self.shutdown("poweroff.target").await
    }
}

fn file_change((kind, path, source): Change) -> UnitFileChange {
    UnitFileChange { kind, path, source }
}

/// Adds the unit files of `ListUnitFilesByPatterns` (path, state) to the
/// loaded `units`: their state to loaded ones, and the others as inactive
/// units with load state [`NOT_LOADED`]. Templates and aliases are skipped:
/// neither is a unit of its own.
fn merge_unit_files(units: &mut BTreeMap<String, UnitInfo>, files: Vec<(String, String)>) {
    for (path, state) in files {
        let name = path.rsplit('/').next().unwrap_or(&path);
        let valid = UnitName::try_from(name).is_ok_and(|n| !n.is_template());
        if !valid || state == "alias" {
            continue;
        }
        units
            .entry(name.to_string())
            .and_modify(|u| u.unit_file_state = Some(state.clone()))
            .or_insert_with(|| UnitInfo {
                name: name.to_string(),
                description: String::new(),
                load_state: NOT_LOADED.to_string(),
                active_state: "inactive".to_string(),
                sub_state: "dead".to_string(),
                unit_file_state: Some(state),
            });
    }
}

fn prop_str(props: &HashMap<String, OwnedVariant>, key: &str) -> String {
    props
        .get(key)
        .and_then(|v| <&str>::try_from(v).ok())
        .unwrap_or_default()
        .to_string()
}

fn prop_u64(props: &HashMap<String, OwnedVariant>, key: &str) -> Option<u64> {
    props.get(key).and_then(|v| u64::try_from(v).ok())
}

fn prop_u32(props: &HashMap<String, OwnedVariant>, key: &str) -> Option<u32> {
    props.get(key).and_then(|v| u32::try_from(v).ok())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Builds a [`UnitDetail`] from the `org.freedesktop.systemd1.Unit` and, for
/// services, `.Service` properties. systemd reports "none" as 0 for
/// timestamps and PIDs and as `u64::MAX` for memory; those become `None`.
fn detail_from_properties(
    unit: &str,
    props: &HashMap<String, OwnedVariant>,
    service: Option<&HashMap<String, OwnedVariant>>,
) -> Result<UnitDetail, UnitsError> {
    let load_state = prop_str(props, "LoadState");
    if load_state == "not-found" {
        return Err(UnitsError::NotFound { unit: unit.to_string() });
    }
    let id = prop_str(props, "Id");
    let svc = |key| service.and_then(|s| prop_u64(s, key));
    Ok(UnitDetail {
        name: if id.is_empty() { unit.to_string() } else { id },
        description: prop_str(props, "Description"),
        load_state,
        active_state: prop_str(props, "ActiveState"),
        sub_state: prop_str(props, "SubState"),
        unit_file_state: non_empty(prop_str(props, "UnitFileState")),
        fragment_path: non_empty(prop_str(props, "FragmentPath")),
        active_enter_timestamp_us: prop_u64(props, "ActiveEnterTimestamp").filter(|t| *t != 0),
        main_pid: service.and_then(|s| prop_u32(s, "MainPID")).filter(|p| *p != 0),
        n_restarts: service.and_then(|s| prop_u32(s, "NRestarts")),
        memory_current_bytes: svc("MemoryCurrent").filter(|m| *m != u64::MAX),
        exec_main_start_timestamp_us: svc("ExecMainStartTimestamp").filter(|t| *t != 0),
    })
}

/// A stream of the `PropertiesChanged` signals of the `Unit` interface of
/// every unit object.
async fn unit_change_stream(conn: &Connection) -> zbus::Result<MessageStream> {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.systemd1")
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path_namespace(UNIT_PATH_PREFIX)
        .arg(0, "org.freedesktop.systemd1.Unit")
        .build()?;
    MessageStream::for_match_rule(rule, conn, NonZeroUsize::new(1024)).await
}

/// Forwards the unit changes of `stream` to `tx`, leaving out signals that
/// repeat a unit's last active and sub state (systemd signals every property
/// change, timestamps included).
async fn forward_changes(mut stream: MessageStream, tx: broadcast::Sender<UnitChange>) {
    let mut last: HashMap<String, (String, String)> = HashMap::new();
    while let Some(msg) = stream.next().await {
        let Some(change) = msg.ok().as_ref().and_then(unit_change) else {
            continue;
        };
        let state = (change.active_state.clone(), change.sub_state.clone());
        if last.get(&change.name) == Some(&state) {
            continue;
        }
        last.insert(change.name.clone(), state);
        let _ = tx.send(change); // no receiver is fine
    }
    tracing::warn!("systemd unit change stream ended");
}

/// The [`UnitChange`] in a `PropertiesChanged` signal of a unit object, if
/// it carries `ActiveState` (`SubState` is empty when it is missing).
fn unit_change(msg: &Message) -> Option<UnitChange> {
    let header = msg.header();
    let name = unit_name_from_path(header.path()?.as_str())?;
    let (iface, changed, _invalidated): (String, HashMap<String, OwnedVariant>, Vec<String>) =
        msg.body().deserialize().ok()?;
    if iface != "org.freedesktop.systemd1.Unit" {
        return None;
    }
    let active_state = <&str>::try_from(changed.get("ActiveState")?).ok()?.to_string();
    Some(UnitChange {
        name,
        active_state,
        sub_state: prop_str(&changed, "SubState"),
    })
}

#[cfg(test)]
#[path = "systemd_tests.rs"]
mod tests;
