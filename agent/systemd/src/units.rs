//! The [`Units`] facility: what the agent asks of the service manager, and
//! the values it gets back.

use debvisor_api::validate::{UnitName, UnitPattern, UnitState, UnitType};
use tokio::sync::broadcast;

use crate::UnitsError;

/// The service manager of the host: list and inspect units, run their jobs,
/// enable them, follow their state, reboot.
///
/// [`SystemdUnits`](crate::SystemdUnits) speaks to systemd over D-Bus;
/// [`FakeUnits`](crate::fakes::FakeUnits) keeps units in memory. The agent
/// holds an `Arc<dyn Units>` and picks one at start-up.
#[async_trait::async_trait]
pub trait Units: Send + Sync {
    /// The units matching `filter`, sorted by name.
    async fn list(&self, filter: &UnitFilter) -> Result<Vec<UnitInfo>, UnitsError>;

    /// One unit's state and figures; [`UnitsError::NotFound`] when systemd
    /// has no unit file for it.
    async fn get(&self, name: &UnitName) -> Result<UnitDetail, UnitsError>;

    /// Starts the unit and waits for its job to finish.
    async fn start(&self, name: &UnitName) -> Result<JobResult, UnitsError>;

    /// Stops the unit and waits for its job to finish.
    async fn stop(&self, name: &UnitName) -> Result<JobResult, UnitsError>;

    /// Restarts the unit (starts it when stopped) and waits for its job.
    async fn restart(&self, name: &UnitName) -> Result<JobResult, UnitsError>;

    /// Enables the unit file and reloads the manager; returns the symlinks
    /// made.
    async fn enable(&self, name: &UnitName) -> Result<Vec<UnitFileChange>, UnitsError>;

    /// Disables the unit file and reloads the manager; returns the symlinks
    /// removed.
    async fn disable(&self, name: &UnitName) -> Result<Vec<UnitFileChange>, UnitsError>;

    /// A receiver of every unit's active and sub state changes from now on.
    /// A slow receiver misses changes and gets `RecvError::Lagged`.
    fn subscribe(&self) -> broadcast::Receiver<UnitChange>;

    /// Reboots the host: queues `reboot.target` irreversibly and returns.
    async fn reboot(&self) -> Result<(), UnitsError>;

    /// Powers the host off: queues `poweroff.target` irreversibly and
    /// returns.
    async fn poweroff(&self) -> Result<(), UnitsError>;
}

/// Which units [`Units::list`] returns. The default lists every loaded unit
/// that is not inactive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFilter {
    /// Globs the name must match, any of them; empty matches every name.
    pub patterns: Vec<UnitPattern>,
    /// Load, active or sub states the unit must be in, any of them; empty
    /// matches every state.
    pub states: Vec<UnitState>,
    /// Unit types to keep; empty keeps every type.
    pub types: Vec<UnitType>,
    /// Also list inactive units, and unit files that are installed but not
    /// loaded (like `systemctl list-units --all` plus `list-unit-files`).
    /// Without it, inactive units are left out unless `states` asks for them.
    pub include_inactive: bool,
}

impl UnitFilter {
    /// Whether a unit in these states passes the filter's state, type and
    /// inactive rules (the patterns are matched separately).
    pub fn admits(&self, name: &str, load_state: &str, active_state: &str, sub_state: &str) -> bool {
        let state_ok = if self.states.is_empty() {
            self.include_inactive || active_state != "inactive"
        } else {
            self.states
                .iter()
                .any(|s| [load_state, active_state, sub_state].contains(&s.as_str()))
        };
        let type_ok = self.types.is_empty() || UnitType::of_name(name).is_some_and(|t| self.types.contains(&t));
        state_ok && type_ok
    }

    /// Whether `name` matches one of the patterns (or there are none).
    pub fn matches_name(&self, name: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(name))
    }
}

/// The load state reported for a unit file that is installed but not loaded
/// (systemd itself has no unit object, hence no load state, for it).
pub const NOT_LOADED: &str = "not-loaded";

/// One unit in a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitInfo {
    /// The unit name, such as `cron.service`.
    pub name: String,
    /// Its `Description=`.
    pub description: String,
    /// `loaded`, `not-found`, `masked`, ... or [`NOT_LOADED`] for a unit file
    /// that systemd has not loaded.
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active_state: String,
    /// The type-specific state: `running`, `exited`, `dead`, `waiting`, ...
    pub sub_state: String,
    /// `enabled`, `disabled`, `static`, `masked`, ... when the list looked at
    /// unit files (`include_inactive`) and the unit has one.
    pub unit_file_state: Option<String>,
}

/// One unit's state and figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitDetail {
    /// The unit name (its `Id`).
    pub name: String,
    /// Its `Description=`.
    pub description: String,
    /// `loaded`, `masked`, `bad-setting`, ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active_state: String,
    /// The type-specific state: `running`, `exited`, `dead`, ...
    pub sub_state: String,
    /// `enabled`, `disabled`, `static`, `masked`, ...; `None` when systemd
    /// reports none (a transient or generated unit).
    pub unit_file_state: Option<String>,
    /// The unit file systemd loaded, if any.
    pub fragment_path: Option<String>,
    /// When the unit last entered the active state (µs since the epoch).
    pub active_enter_timestamp_us: Option<u64>,
    /// A service's main process.
    pub main_pid: Option<u32>,
    /// How many times systemd restarted the service automatically.
    pub n_restarts: Option<u32>,
    /// The memory the unit's cgroup uses, in bytes, when accounted.
    pub memory_current_bytes: Option<u64>,
    /// When a service's main process started (µs since the epoch).
    pub exec_main_start_timestamp_us: Option<u64>,
}

/// How a job that [`Units::start`], [`Units::stop`] or [`Units::restart`]
/// queued ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// systemd's job id.
    pub job: u32,
    /// `done`, `failed`, `timeout`, `canceled`, `dependency` or `skipped`.
    pub result: String,
}

impl JobResult {
    /// True when the job did what was asked.
    pub fn is_done(&self) -> bool {
        self.result == "done"
    }
}

/// A symlink that enabling or disabling a unit made or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFileChange {
    /// `symlink` or `unlink`.
    pub kind: String,
    /// The symlink's path.
    pub path: String,
    /// What the symlink points to (empty for `unlink`).
    pub source: String,
}

/// A unit's new state, as systemd announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitChange {
    /// The unit name.
    pub name: String,
    /// Its new `ActiveState`.
    pub active_state: String,
    /// Its new `SubState`.
    pub sub_state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_hides_inactive_units() {
        let f = UnitFilter::default();
        assert!(f.admits("cron.service", "loaded", "active", "running"));
        assert!(f.admits("x.service", "loaded", "failed", "failed"));
        assert!(!f.admits("ssh.service", "loaded", "inactive", "dead"));
        let all = UnitFilter {
            include_inactive: true,
            ..UnitFilter::default()
        };
        assert!(all.admits("ssh.service", "loaded", "inactive", "dead"));
    }

    #[test]
    fn states_match_any_of_load_active_and_sub_state() {
        let f = UnitFilter {
            states: vec!["inactive".try_into().unwrap(), "running".try_into().unwrap()],
            ..UnitFilter::default()
        };
        assert!(f.admits("ssh.service", "loaded", "inactive", "dead"));
        assert!(f.admits("cron.service", "loaded", "active", "running"));
        assert!(!f.admits("fstrim.timer", "loaded", "active", "waiting"));
        let masked = UnitFilter {
            states: vec!["masked".try_into().unwrap()],
            ..UnitFilter::default()
        };
        assert!(masked.admits("apt-daily.service", "masked", "inactive", "dead"));
    }

    #[test]
    fn types_and_patterns() {
        let f = UnitFilter {
            types: vec![UnitType::Timer],
            patterns: vec!["f*".try_into().unwrap(), "apt-*".try_into().unwrap()],
            ..UnitFilter::default()
        };
        assert!(f.admits("fstrim.timer", "loaded", "active", "waiting"));
        assert!(!f.admits("cron.service", "loaded", "active", "running"));
        assert!(f.matches_name("fstrim.timer") && f.matches_name("apt-daily.timer"));
        assert!(!f.matches_name("cron.service"));
        assert!(UnitFilter::default().matches_name("anything.service"));
    }
}
