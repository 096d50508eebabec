//! The agent's own configuration, `/etc/debvisor/agent.toml`: limits, the
//! metrics port, tracing and where the audit log lives. Every key is optional;
//! a missing file means the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use debvisor_telemetry::{OtelConfig, RateLimit};
use serde::Deserialize;

/// Where the agent reads its configuration by default.
pub const DEFAULT_PATH: &str = "/etc/debvisor/agent.toml";

/// The agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Per-client request rate (token bucket keyed by client identity).
    pub rate_limit: RateLimit,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// OpenTelemetry traces; off unless an endpoint is set.
    pub otel: OtelConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// The user the web console runs as: the only local caller whose
    /// requests may name the end user they act for.
    pub console_user: String,
    /// The largest request message accepted, in bytes; larger ones are
    /// refused with OUT_OF_RANGE before they are decoded.
    pub max_message_bytes: usize,
    /// The PXE provisioner's config (`provision.toml`, see
    /// `debvisor-provision`): when set, the agent runs the provisioner on the
    /// networks it names and serves `debvisor.provision.v1`.
    pub provision: Option<PathBuf>,
    /// Virtual machines: where the VM daemon listens.
    pub vm: VmConfig,
}

/// Where the agent's VM calls go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// The VM daemon's socket (`debvisor-vmd`, which talks to libvirt).
    pub socket: PathBuf,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            socket: debvisor_api::paths::VMD_SOCKET.into(),
        }
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the plain-HTTP metrics listener; local by default. Unset
    /// (`listen = ""` is not allowed; leave the table out) keeps the default.
    pub listen: Option<SocketAddr>,
}

/// The audit log's store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// SQLite database on the data partition.
    pub path: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            rate_limit: RateLimit {
                per_second: 200.0,
                burst: 400,
            },
            metrics: MetricsConfig::default(),
            otel: OtelConfig {
                endpoint: None,
                service_name: "debvisor-agent".into(),
            },
            audit: AuditConfig::default(),
            console_user: "debvisor-console".into(),
            max_message_bytes: 1 << 20,
            provision: None,
            vm: VmConfig::default(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(debvisor_api::paths::DATA_MOUNT).join("debvisor/audit.db"),
        }
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("Cannot read the agent config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("Invalid agent config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range.
    #[error("Invalid agent config {path}: {key} = {value}: {reason}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
}

impl AgentConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates the TOML `text` read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let bad = |key, value: String, reason| ConfigError::Value {
            path: path.into(),
            key,
            value,
            reason,
        };
        let rl = &cfg.rate_limit;
        if !(rl.per_second.is_finite() && rl.per_second > 0.0) {
            return Err(bad(
                "rate_limit.per_second",
                rl.per_second.to_string(),
                "must be a positive number",
            ));
        }
        if rl.burst == 0 {
            return Err(bad("rate_limit.burst", "0".into(), "must be at least 1"));
        }
        if !(1024..=64 << 20).contains(&cfg.max_message_bytes) {
            return Err(bad(
                "max_message_bytes",
                cfg.max_message_bytes.to_string(),
                "must be between 1024 and 67108864",
            ));
        }
        if cfg.console_user.is_empty() {
            return Err(bad("console_user", String::new(), "must name a user"));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_means_defaults() {
        let c = AgentConfig::load(Path::new("/nonexistent/agent.toml")).unwrap();
        assert_eq!(c.rate_limit.burst, 400);
        assert_eq!(c.metrics.listen.unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(c.vm.socket, Path::new("/run/debvisor/vmd.sock"));
    }

    #[test]
    fn keys_are_read_and_checked() {
        let p = Path::new("agent.toml");
        let c = AgentConfig::parse(
            "[rate_limit]\nper_second = 5.0\nburst = 10\n[otel]\nendpoint = \"http://127.0.0.1:4317\"\nservice_name = \"a\"\n",
            p,
        )
        .unwrap();
        assert_eq!(c.rate_limit.per_second, 5.0);
        assert_eq!(c.otel.endpoint.as_deref(), Some("http://127.0.0.1:4317"));

        let e = AgentConfig::parse("colour = 1\n", p).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let e = AgentConfig::parse("[rate_limit]\nper_second = -1.0\nburst = 1\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rate_limit.per_second = -1"), "{e}");
        let e = AgentConfig::parse("max_message_bytes = 10\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_message_bytes = 10"), "{e}");
    }
}
