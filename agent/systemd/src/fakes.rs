//! In-memory [`Units`] and [`Journal`] that behave like systemd: for unit
//! tests and the agent's simulation mode.
//!
//! [`FakeUnits::new`] starts with the units of a DebVisor node; starting a
//! unit makes it active with a new main PID, stopping it inactive without
//! one, and each change is broadcast to subscribers. Wired to a
//! [`FakeJournal`] with [`FakeUnits::with_journal`], jobs write systemd's
//! "Started …"/"Stopped …" lines into it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use debvisor_api::validate::{UnitName, UnitType};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::broadcast;

use crate::units::NOT_LOADED;
use crate::{
    JobResult, Journal, JournalError, LogEntry, LogQuery, UnitChange, UnitDetail, UnitFileChange, UnitFilter, UnitInfo,
    Units, UnitsError,
};

/// The host name in fake journal entries.
pub const FAKE_HOSTNAME: &str = "debvisor-sim";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A unit held by [`FakeUnits`].
#[derive(Debug, Clone)]
struct FakeUnit {
    detail: UnitDetail,
    /// False for a unit file systemd has not loaded (listed only with
    /// `include_inactive`).
    loaded: bool,
}

struct State {
    units: BTreeMap<String, FakeUnit>,
    next_pid: u32,
    next_job: u32,
    shutdown: Option<&'static str>,
}

/// Units in memory. See the [module](self) documentation.
pub struct FakeUnits {
    state: Mutex<State>,
    changes: broadcast::Sender<UnitChange>,
    journal: Option<Arc<FakeJournal>>,
}

impl Default for FakeUnits {
    fn default() -> Self {
        Self::new()
    }
}

/// `(name, description, active, sub, unit file state, main PID, memory MiB)`
/// of the units a fresh [`FakeUnits`] has.
const NODE_UNITS: &[(&str, &str, &str, &str, &str, u32, u64)] = &[
    (
        "debvisor-agent.service",
        "DebVisor node agent",
        "active",
        "running",
        "enabled",
        612,
        24,
    ),
    (
        "debvisor-webui.service",
        "DebVisor web console",
        "active",
        "running",
        "enabled",
        640,
        18,
    ),
    (
        "systemd-networkd.service",
        "Network Configuration",
        "active",
        "running",
        "enabled",
        401,
        6,
    ),
    (
        "cron.service",
        "Regular background program processing daemon",
        "active",
        "running",
        "enabled",
        590,
        2,
    ),
    (
        "ssh.service",
        "OpenBSD Secure Shell server",
        "inactive",
        "dead",
        "disabled",
        0,
        0,
    ),
    (
        "zfs-import-cache.service",
        "Import ZFS pools by cache file",
        "failed",
        "failed",
        "enabled",
        0,
        0,
    ),
    (
        "apt-daily.service",
        "Daily apt download activities",
        "inactive",
        "dead",
        "masked",
        0,
        0,
    ),
    (
        "fstrim.timer",
        "Discard unused filesystem blocks once a week",
        "active",
        "waiting",
        "enabled",
        0,
        0,
    ),
    (
        "multi-user.target",
        "Multi-User System",
        "active",
        "active",
        "static",
        0,
        0,
    ),
];

/// The sub state of an active unit of `name`'s type.
fn running_sub_state(name: &str) -> &'static str {
    match UnitType::of_name(name) {
        Some(UnitType::Service) => "running",
        Some(UnitType::Timer) => "waiting",
        Some(UnitType::Socket) => "listening",
        Some(UnitType::Mount) => "mounted",
        Some(UnitType::Device) => "plugged",
        _ => "active",
    }
}

impl FakeUnits {
    /// The units of a DebVisor node: the agent, the web console, networkd
    /// and cron running, ssh installed but not loaded (inactive, disabled),
    /// `zfs-import-cache.service` failed, `apt-daily.service` masked,
    /// `fstrim.timer` waiting and `multi-user.target` active.
    pub fn new() -> Self {
        let boot = now_us().saturating_sub(3_600_000_000);
        let units = NODE_UNITS
            .iter()
            .map(|&(name, description, active, sub, file_state, pid, mib)| {
                let service = name.ends_with(".service");
                let masked = file_state == "masked";
                let detail = UnitDetail {
                    name: name.to_string(),
                    description: description.to_string(),
                    load_state: if masked { "masked" } else { "loaded" }.to_string(),
                    active_state: active.to_string(),
                    sub_state: sub.to_string(),
                    unit_file_state: Some(file_state.to_string()),
                    fragment_path: (!masked).then(|| format!("/lib/systemd/system/{name}")),
                    active_enter_timestamp_us: (active == "active").then_some(boot),
                    main_pid: (pid != 0).then_some(pid),
                    n_restarts: service.then_some(0),
                    memory_current_bytes: (service && active == "active").then_some(mib << 20),
                    exec_main_start_timestamp_us: (pid != 0).then_some(boot),
                };
                let loaded = name != "ssh.service";
                (name.to_string(), FakeUnit { detail, loaded })
            })
            .collect();
        Self {
            state: Mutex::new(State {
                units,
                next_pid: 1000,
                next_job: 100,
                shutdown: None,
            }),
            changes: broadcast::channel(256).0,
            journal: None,
        }
    }

    /// Writes systemd's job messages into `journal`.
    pub fn with_journal(mut self, journal: Arc<FakeJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Adds or replaces a loaded unit.
    pub fn insert(&self, detail: UnitDetail) {
        let unit = FakeUnit { detail, loaded: true };
        lock(&self.state).units.insert(unit.detail.name.clone(), unit);
    }

    /// The target that [`Units::reboot`] or [`Units::poweroff`] queued.
    pub fn shutdown_requested(&self) -> Option<&'static str> {
        lock(&self.state).shutdown
    }

    /// The unit `name`, or `NotFound`; `Refused` for a masked unit when
    /// `call` is given.
    fn unit<'s>(state: &'s mut State, name: &str, call: Option<&'static str>) -> Result<&'s mut FakeUnit, UnitsError> {
        let unit = state
            .units
            .get_mut(name)
            .ok_or_else(|| UnitsError::NotFound { unit: name.to_string() })?;
        match call {
            Some(call) if unit.detail.load_state == "masked" => Err(UnitsError::Refused {
                call,
                unit: name.to_string(),
                reason: format!("the unit is masked (Unit {name} is masked.)"),
            }),
            _ => Ok(unit),
        }
    }

    /// Moves `unit` to `active`/`sub` and tells subscribers.
    fn set_state(&self, unit: &mut FakeUnit, active: &str, sub: &str) {
        unit.detail.active_state = active.to_string();
        unit.detail.sub_state = sub.to_string();
        let _ = self.changes.send(UnitChange {
            name: unit.detail.name.clone(),
            active_state: active.to_string(),
            sub_state: sub.to_string(),
        });
    }

    fn log(&self, unit: &FakeUnit, verb: &str) {
        if let Some(journal) = &self.journal {
            let d = &unit.detail;
            let message = format!("{verb} {} - {}.", d.name, d.description);
            journal.log(&d.name, 6, "systemd", Some(1), &message);
        }
    }

    fn do_start(&self, state: &mut State, name: &str) -> Result<(), UnitsError> {
        let pid = state.next_pid;
        let unit = Self::unit(state, name, Some("StartUnit"))?;
        unit.loaded = true;
        if unit.detail.active_state == "active" {
            return Ok(());
        }
        let service = name.ends_with(".service");
        self.set_state(unit, "activating", if service { "start" } else { "dead" });
        let now = now_us();
        unit.detail.active_enter_timestamp_us = Some(now);
        if service {
            unit.detail.main_pid = Some(pid);
            unit.detail.exec_main_start_timestamp_us = Some(now);
            unit.detail.memory_current_bytes = Some(4 << 20);
        }
        self.set_state(unit, "active", running_sub_state(name));
        self.log(unit, "Started");
        if service {
            state.next_pid += 1;
        }
        Ok(())
    }

    fn do_stop(&self, state: &mut State, name: &str) -> Result<(), UnitsError> {
        let unit = Self::unit(state, name, None)?;
        if !matches!(unit.detail.active_state.as_str(), "active" | "activating" | "reloading") {
            return Ok(());
        }
        self.set_state(unit, "deactivating", "stop-sigterm");
        unit.detail.main_pid = None;
        unit.detail.memory_current_bytes = None;
        self.set_state(unit, "inactive", "dead");
        self.log(unit, "Stopped");
        Ok(())
    }

    fn job(state: &mut State) -> JobResult {
        state.next_job += 1;
        JobResult {
            job: state.next_job,
            result: "done".to_string(),
        }
    }

    /// The `.wants` symlink that enabling `unit` makes.
    fn wants_link(unit: &FakeUnit) -> String {
        let target = match UnitType::of_name(&unit.detail.name) {
            Some(UnitType::Timer) => "timers.target",
            Some(UnitType::Socket) => "sockets.target",
            _ => "multi-user.target",
        };
        format!("/etc/systemd/system/{target}.wants/{}", unit.detail.name)
    }
}

#[async_trait::async_trait]
impl Units for FakeUnits {
    async fn list(&self, filter: &UnitFilter) -> Result<Vec<UnitInfo>, UnitsError> {
        let state = lock(&self.state);
        Ok(state
            .units
            .values()
            .filter(|u| u.loaded || filter.include_inactive)
            .map(|u| UnitInfo {
                name: u.detail.name.clone(),
                description: if u.loaded {
                    u.detail.description.clone()
                } else {
                    String::new()
                },
                load_state: if u.loaded {
                    u.detail.load_state.clone()
                } else {
                    NOT_LOADED.to_string()
                },
                active_state: u.detail.active_state.clone(),
                sub_state: u.detail.sub_state.clone(),
                unit_file_state: u.detail.unit_file_state.clone().filter(|_| filter.include_inactive),
            })
            .filter(|u| filter.matches_name(&u.name))
            .filter(|u| filter.admits(&u.name, &u.load_state, &u.active_state, &u.sub_state))
            .collect())
    }

    async fn get(&self, name: &UnitName) -> Result<UnitDetail, UnitsError> {
        let mut state = lock(&self.state);
        Ok(Self::unit(&mut state, name.as_str(), None)?.detail.clone())
    }

    async fn start(&self, name: &UnitName) -> Result<JobResult, UnitsError> {
        let mut state = lock(&self.state);
        self.do_start(&mut state, name.as_str())?;
        Ok(Self::job(&mut state))
    }

    async fn stop(&self, name: &UnitName) -> Result<JobResult, UnitsError> {
        let mut state = lock(&self.state);
        self.do_stop(&mut state, name.as_str())?;
        Ok(Self::job(&mut state))
    }

    async fn restart(&self, name: &UnitName) -> Result<JobResult, UnitsError> {
        let mut state = lock(&self.state);
        Self::unit(&mut state, name.as_str(), Some("RestartUnit"))?;
        self.do_stop(&mut state, name.as_str())?;
        self.do_start(&mut state, name.as_str())?;
        Ok(Self::job(&mut state))
    }

    async fn enable(&self, name: &UnitName) -> Result<Vec<UnitFileChange>, UnitsError> {
        let mut state = lock(&self.state);
        let unit = Self::unit(&mut state, name.as_str(), Some("EnableUnitFiles"))?;
        if unit.detail.unit_file_state.as_deref() != Some("disabled") {
            return Ok(Vec::new()); // enabled already, or static: nothing to do
        }
        unit.detail.unit_file_state = Some("enabled".to_string());
        Ok(vec![UnitFileChange {
            kind: "symlink".to_string(),
            path: Self::wants_link(unit),
            source: unit.detail.fragment_path.clone().unwrap_or_default(),
        }])
    }

    async fn disable(&self, name: &UnitName) -> Result<Vec<UnitFileChange>, UnitsError> {
        let mut state = lock(&self.state);
        let unit = Self::unit(&mut state, name.as_str(), None)?;
        if unit.detail.unit_file_state.as_deref() != Some("enabled") {
            return Ok(Vec::new());
        }
        unit.detail.unit_file_state = Some("disabled".to_string());
        Ok(vec![UnitFileChange {
            kind: "unlink".to_string(),
            path: Self::wants_link(unit),
            source: String::new(),
        }])
    }

    fn subscribe(&self) -> broadcast::Receiver<UnitChange> {
        self.changes.subscribe()
    }

    async fn reboot(&self) -> Result<(), UnitsError> {
        lock(&self.state).shutdown = Some("reboot.target");
        Ok(())
    }

    async fn poweroff(&self) -> Result<(), UnitsError> {
        lock(&self.state).shutdown = Some("poweroff.target");
        Ok(())
    }
}

/// Journal entries in memory; following streams get new entries as they
/// are appended.
pub struct FakeJournal {
    entries: Mutex<Vec<LogEntry>>,
    appended: broadcast::Sender<LogEntry>,
}

impl Default for FakeJournal {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            appended: broadcast::channel(1024).0,
        }
    }

    /// Appends `entry`, giving it a cursor when it has none.
    pub fn append(&self, mut entry: LogEntry) {
        let mut entries = lock(&self.entries);
        if entry.cursor.is_empty() {
            entry.cursor = format!("s=fake;i={:x}", entries.len() + 1);
        }
        entries.push(entry.clone());
        let _ = self.appended.send(entry); // under the lock: streams see each entry once
    }

    /// Appends a message of `unit` written now.
    pub fn log(&self, unit: &str, priority: u8, identifier: &str, pid: Option<u32>, message: &str) {
        self.append(LogEntry {
            time_unix_us: now_us(),
            unit: unit.to_string(),
            priority,
            identifier: identifier.to_string(),
            pid,
            message: message.to_string(),
            cursor: String::new(),
            hostname: FAKE_HOSTNAME.to_string(),
        });
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Vec<LogEntry> {
        lock(&self.entries).clone()
    }
}

/// Whether `e` passes the unit, priority and time conditions of `q`.
fn query_matches(q: &LogQuery, e: &LogEntry) -> bool {
    q.unit.as_ref().is_none_or(|u| e.unit == u.as_str())
        && q.max_priority.is_none_or(|p| e.priority <= p.value())
        && q.since_unix_us.is_none_or(|t| e.time_unix_us >= t)
}

impl Journal for FakeJournal {
    fn stream(&self, q: LogQuery) -> Result<BoxStream<'static, Result<LogEntry, JournalError>>, JournalError> {
        let (past, rx) = {
            let entries = lock(&self.entries);
            let past: Vec<LogEntry> = entries.iter().filter(|e| query_matches(&q, e)).cloned().collect();
            (past, self.appended.subscribe())
        };
        // journalctl shows the last 10 when following without a limit.
        let keep = match (q.lines, q.follow && q.since_unix_us.is_none()) {
            (Some(n), _) => usize::try_from(n).unwrap_or(usize::MAX),
            (None, true) => 10,
            (None, false) => usize::MAX,
        };
        let skip = past.len().saturating_sub(keep);
        let past = futures_util::stream::iter(past.into_iter().skip(skip).map(Ok));
        if !q.follow {
            return Ok(past.boxed());
        }
        let new = futures_util::stream::unfold(rx, move |mut rx| {
            let q = q.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(e) if query_matches(&q, &e) => return Some((Ok(e), rx)),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(past.chain(new).boxed())
    }
}

#[cfg(test)]
#[path = "fakes_tests.rs"]
mod tests;
