//! The supervisor's settings: the machine config's `[health]`, `[alerts]`,
//! `[boot]` and `[services]` sections, with the same fields and defaults.
//!
//! Until the supervisor reads the machine config, [`Settings::default`] is
//! what it runs with; the integrator builds a [`Settings`] from
//! `debvisor_api::machine::MachineConfig` with a small `From` impl.

use std::time::Duration;

/// `[health]`: check timing, thresholds and remediation limits.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// Seconds between two runs of a check.
    pub interval_seconds: u32,
    /// Seconds after which a run counts as failed.
    pub timeout_seconds: u32,
    /// Results kept per check.
    pub history: u32,
    /// `storage/data` warns from this usage (percent).
    pub disk_warn_percent: u8,
    /// `storage/data` fails from this usage (percent).
    pub disk_fail_percent: u8,
    /// `resources/memory` fails under this much available memory (MiB).
    pub memory_min_available_mib: u64,
    /// `resources/load` warns above this 1-minute load per CPU.
    pub load_per_cpu_warn: f64,
    /// Certificates expiring within this many days are renewed (and warn).
    pub cert_renew_days: u32,
    /// Names the `dns` check resolves; empty: a root NS query to each server.
    pub dns_names: Vec<String>,
    /// Consecutive failures of a service check before its unit is restarted.
    pub failures_before_restart: u32,
    /// Restarts allowed within `restart_window_seconds` before escalating.
    pub restart_limit: u32,
    /// The window of `restart_limit`, and how long a check must pass again
    /// before an escalation is cleared.
    pub restart_window_seconds: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval_seconds: 10,
            timeout_seconds: 5,
            history: 20,
            disk_warn_percent: 85,
            disk_fail_percent: 95,
            memory_min_available_mib: 32,
            load_per_cpu_warn: 4.0,
            cert_renew_days: 30,
            dns_names: Vec::new(),
            failures_before_restart: 3,
            restart_limit: 3,
            restart_window_seconds: 600,
        }
    }
}

impl HealthSettings {
    /// [`Self::interval_seconds`] as a duration (at least 1 s).
    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.interval_seconds.max(1)))
    }

    /// [`Self::timeout_seconds`] as a duration (at least 1 s).
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.timeout_seconds.max(1)))
    }

    /// [`Self::restart_window_seconds`] as a duration.
    pub fn restart_window(&self) -> Duration {
        Duration::from_secs(u64::from(self.restart_window_seconds))
    }
}

/// One `[[alerts.webhooks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Where alerts are POSTed as JSON.
    pub url: String,
    /// Attempts after the first one, with exponential backoff.
    pub retries: u32,
    /// Seconds one attempt may take.
    pub timeout_seconds: u32,
}

impl Webhook {
    /// A webhook with the default retries (5) and timeout (5 s).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            retries: 5,
            timeout_seconds: 5,
        }
    }
}

/// Everything the supervisor takes from the machine config.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `[health]`.
    pub health: HealthSettings,
    /// `[alerts] webhooks`.
    pub webhooks: Vec<Webhook>,
    /// `[boot] gate_deadline_seconds`.
    pub gate_deadline_seconds: u32,
    /// `[services] supervise`: units kept started besides the built-ins.
    pub supervise: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            health: HealthSettings::default(),
            webhooks: Vec::new(),
            gate_deadline_seconds: 300,
            supervise: Vec::new(),
        }
    }
}

impl Settings {
    /// The boot gate's deadline.
    pub fn gate_deadline(&self) -> Duration {
        Duration::from_secs(u64::from(self.gate_deadline_seconds))
    }
}
