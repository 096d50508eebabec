//! The machine config: what a node is told about itself (host name, network,
//! time, admin credentials, role, supervised services, health thresholds,
//! alert webhooks, boot gate), as versioned TOML.
//!
//! Every table refuses unknown keys and [`MachineConfig::from_toml`] checks
//! every value, so a config that parses is one that `debvisor-init` can apply.
//! Errors name the key path and the value, e.g.
//! `network.vlans[0].id = 5000: a VLAN id is 1-4094`.
//!
//! ```toml
//! version = 1
//! [node]
//! hostname = "edge-01"
//! ```

mod network;
mod shape;
mod validate;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use network::{
    BondConfig, BondMode, BridgeConfig, InterfaceConfig, LinkAddressing, NetworkConfig, RouteConfig, VlanConfig,
};
pub use shape::{is_hostname, is_ifname};
pub use validate::MachineConfigError;

/// The only machine config version this build reads.
pub const SUPPORTED_VERSION: i64 = 1;

/// The whole machine config (`machine.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// The format version; must be [`SUPPORTED_VERSION`].
    pub version: i64,
    /// Host name, time zone and NTP servers.
    #[serde(default)]
    pub node: NodeConfig,
    /// systemd-networkd set-up; `None` means DHCP on every wired interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// Admin credential and SSH keys.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Standalone node, cluster controller or worker.
    #[serde(default)]
    pub role: RoleConfig,
    /// How a worker joins its controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// Extra units that debvisor-init keeps started.
    #[serde(default)]
    pub services: ServicesConfig,
    /// Health check intervals, thresholds and remediation limits.
    #[serde(default)]
    pub health: HealthConfig,
    /// Where alerts are sent besides the journal and the audit log.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The A/B boot gate.
    #[serde(default)]
    pub boot: BootConfig,
    /// How the USB installer installs this node (read from the medium by
    /// the installer; the installed node keeps it but does not use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallConfig>,
}

impl Default for MachineConfig {
    /// Safe defaults: DHCP on every wired interface, no NTP override, no
    /// extra services, standalone.
    fn default() -> Self {
        Self {
            version: SUPPORTED_VERSION,
            node: NodeConfig::default(),
            network: None,
            admin: AdminConfig::default(),
            role: RoleConfig::default(),
            cluster: None,
            services: ServicesConfig::default(),
            health: HealthConfig::default(),
            alerts: AlertsConfig::default(),
            boot: BootConfig::default(),
            install: None,
        }
    }
}

impl MachineConfig {
    /// Parses and validates a machine config.
    pub fn from_toml(text: &str) -> Result<Self, MachineConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| MachineConfigError::Syntax(e.to_string()))?;
        match table.get("version") {
            None => return Err(MachineConfigError::MissingVersion),
            Some(toml::Value::Integer(SUPPORTED_VERSION)) => {}
            Some(other) => return Err(MachineConfigError::UnsupportedVersion(other.to_string())),
        }
        let cfg: Self = toml::from_str(text).map_err(|e| MachineConfigError::Syntax(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value and the references between sections (VLAN
    /// parents, bond and bridge members, the worker's cluster settings).
    pub fn validate(&self) -> Result<(), MachineConfigError> {
        validate::config(self)
    }

    /// The canonical TOML form (what [`MachineConfig::digest`] hashes).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a machine config always serialises to TOML")
    }

    /// A short identifier of the config's content: the first 12 hex digits
    /// of the SHA-256 of [`MachineConfig::to_toml`].
    pub fn digest(&self) -> String {
        let sum = Sha256::digest(self.to_toml().as_bytes());
        hex::encode(sum)[..12].to_string()
    }
}

/// `[node]`: identity and time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Static host name: an RFC 1123 label or a fully qualified name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// IANA time zone name such as `Europe/Berlin` or `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// NTP servers or pools (host names or addresses) for systemd-timesyncd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
}

/// `[admin]`: console credential and SSH access.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The console admin password as an argon2id PHC string
    /// (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// OpenSSH public keys for root, one per entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

/// What the node is in a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleKind {
    /// A node on its own.
    #[default]
    Standalone,
    /// The node that registers and provisions the others.
    Controller,
    /// A node that joins a controller.
    Worker,
}

impl RoleKind {
    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Standalone => "standalone",
            RoleKind::Controller => "controller",
            RoleKind::Worker => "worker",
        }
    }
}

/// `[role]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// `standalone` (default), `controller` or `worker`.
    #[serde(default)]
    pub kind: RoleKind,
}

/// `[cluster]`: required when `role.kind = "worker"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The controller's agent endpoint, `host:port` (`[v6]:port` for IPv6).
    pub controller: String,
    /// The one-time token the controller issued for this node.
    pub join_token: String,
}

/// `[services]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    /// Units debvisor-init keeps started besides its built-in ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supervise: Vec<String>,
}

/// `[health]`: health check timing, thresholds and remediation limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds between two runs of a check (>= 1).
    #[serde(default = "d::interval_seconds")]
    pub interval_seconds: u32,
    /// Seconds a check may take (>= 1, below the interval).
    #[serde(default = "d::timeout_seconds")]
    pub timeout_seconds: u32,
    /// Results kept per check (1-10000).
    #[serde(default = "d::history")]
    pub history: u32,
    /// Disk use, in percent, from which a check warns.
    #[serde(default = "d::disk_warn_percent")]
    pub disk_warn_percent: u8,
    /// Disk use, in percent, from which a check fails.
    #[serde(default = "d::disk_fail_percent")]
    pub disk_fail_percent: u8,
    /// Available memory, in MiB, below which the memory check fails.
    #[serde(default = "d::memory_min_available_mib")]
    pub memory_min_available_mib: u64,
    /// 1-minute load average per CPU from which the load check warns.
    #[serde(default = "d::load_per_cpu_warn")]
    pub load_per_cpu_warn: f64,
    /// Days before expiry from which a certificate is renewed.
    #[serde(default = "d::cert_renew_days")]
    pub cert_renew_days: u32,
    /// Names the DNS check resolves (none: the check only reads resolv.conf).
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Consecutive failed checks of an active service before it is restarted.
    #[serde(default = "d::failures_before_restart")]
    pub failures_before_restart: u32,
    /// Restarts within the window after which remediation escalates.
    #[serde(default = "d::restart_limit")]
    pub restart_limit: u32,
    /// The window, in seconds, in which restarts are counted.
    #[serde(default = "d::restart_window_seconds")]
    pub restart_window_seconds: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_seconds: d::interval_seconds(),
            timeout_seconds: d::timeout_seconds(),
            history: d::history(),
            disk_warn_percent: d::disk_warn_percent(),
            disk_fail_percent: d::disk_fail_percent(),
            memory_min_available_mib: d::memory_min_available_mib(),
            load_per_cpu_warn: d::load_per_cpu_warn(),
            cert_renew_days: d::cert_renew_days(),
            dns_names: Vec::new(),
            failures_before_restart: d::failures_before_restart(),
            restart_limit: d::restart_limit(),
            restart_window_seconds: d::restart_window_seconds(),
        }
    }
}

/// `[alerts]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Receivers of alerts as JSON POSTs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
}

/// `[[alerts.webhooks]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Attempts after the first one (0-100).
    #[serde(default = "d::webhook_retries")]
    pub retries: u32,
    /// Seconds per attempt (1-300).
    #[serde(default = "d::webhook_timeout_seconds")]
    pub timeout_seconds: u32,
}

/// `[boot]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Seconds after start-up by which the boot must be declared good
    /// (>= 30), otherwise it is declared bad.
    #[serde(default = "d::gate_deadline_seconds")]
    pub gate_deadline_seconds: u32,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            gate_deadline_seconds: d::gate_deadline_seconds(),
        }
    }
}

/// `[install]`: read by the USB installer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallConfig {
    /// The disk to erase and install to: a `/dev/disk/by-id/...` path, or
    /// `empty:GB`, the only disk without partitions or signatures of at
    /// least GB gigabytes (10^9 bytes).
    pub disk: String,
}

/// Default values, as functions for `#[serde(default = ...)]`.
mod d {
    pub fn interval_seconds() -> u32 {
        10
    }
    pub fn timeout_seconds() -> u32 {
        5
    }
    pub fn history() -> u32 {
        20
    }
    pub fn disk_warn_percent() -> u8 {
        85
    }
    pub fn disk_fail_percent() -> u8 {
        95
    }
    pub fn memory_min_available_mib() -> u64 {
        32
    }
    pub fn load_per_cpu_warn() -> f64 {
        4.0
    }
    pub fn cert_renew_days() -> u32 {
        30
    }
    pub fn failures_before_restart() -> u32 {
        3
    }
    pub fn restart_limit() -> u32 {
        3
    }
    pub fn restart_window_seconds() -> u32 {
        600
    }
    pub fn webhook_retries() -> u32 {
        5
    }
    pub fn webhook_timeout_seconds() -> u32 {
        5
    }
    pub fn gate_deadline_seconds() -> u32 {
        300
    }
}
