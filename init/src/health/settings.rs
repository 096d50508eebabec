//! The supervisor's settings: the machine config's `[health]`, `[alerts]`,
//! `[boot]` and `[services]` sections, with the same fields and defaults.
//!
//! `Settings::from(&MachineConfig)` takes them from the config in effect;
//! [`Settings::default`] equals what the default config gives.

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

impl From<&debvisor_api::machine::MachineConfig> for Settings {
    fn from(cfg: &debvisor_api::machine::MachineConfig) -> Self {
        let h = &cfg.health;
        Self {
            health: HealthSettings {
                interval_seconds: h.interval_seconds,
                timeout_seconds: h.timeout_seconds,
                history: h.history,
                disk_warn_percent: h.disk_warn_percent,
                disk_fail_percent: h.disk_fail_percent,
                memory_min_available_mib: h.memory_min_available_mib,
                load_per_cpu_warn: h.load_per_cpu_warn,
                cert_renew_days: h.cert_renew_days,
                dns_names: h.dns_names.clone(),
                failures_before_restart: h.failures_before_restart,
                restart_limit: h.restart_limit,
                restart_window_seconds: h.restart_window_seconds,
            },
            webhooks: cfg
                .alerts
                .webhooks
                .iter()
                .map(|w| Webhook {
                    url: w.url.clone(),
                    retries: w.retries,
                    timeout_seconds: w.timeout_seconds,
                })
                .collect(),
            gate_deadline_seconds: cfg.boot.gate_deadline_seconds,
            supervise: cfg.services.supervise.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use debvisor_api::machine::MachineConfig;

    use super::*;

    #[test]
    fn defaults_match_the_machine_config() {
        assert_eq!(Settings::from(&MachineConfig::default()), Settings::default());
    }

    #[test]
    fn from_a_machine_config() {
        let cfg: MachineConfig = toml::from_str(
            "version = 1\n[services]\nsupervise = [\"cron.service\"]\n[health]\ninterval_seconds = 2\n\
             failures_before_restart = 2\n[alerts]\n[[alerts.webhooks]]\nurl = \"http://10.0.2.2:8080/alert\"\n\
             retries = 2\n[boot]\ngate_deadline_seconds = 120\n",
        )
        .unwrap();
        let s = Settings::from(&cfg);
        assert_eq!(s.health.interval_seconds, 2);
        assert_eq!(s.health.failures_before_restart, 2);
        assert_eq!(s.health.restart_limit, 3);
        assert_eq!(s.supervise, ["cron.service"]);
        assert_eq!(s.gate_deadline_seconds, 120);
        assert_eq!(
            s.webhooks,
            [Webhook {
                url: "http://10.0.2.2:8080/alert".into(),
                retries: 2,
                timeout_seconds: 5
            }]
        );
    }
}
