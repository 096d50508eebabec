//! The client configuration of `debvisorctl`, in the manner of `talosconfig`:
//! named contexts, each holding a node's endpoints, the name its server
//! certificate carries, the node CA and a client certificate and key, all
//! inline so that one file is the whole credential.
//!
//! ```toml
//! context = "node1"                  # the current context
//! [contexts.node1]
//! endpoints = ["192.0.2.10:7443"]    # host:port, tried in order
//! server_name = "debvisor-node"      # name checked in the server certificate
//! ca = """-----BEGIN CERTIFICATE-----..."""    # node CA, PEM
//! crt = """-----BEGIN CERTIFICATE-----..."""   # client certificate, PEM
//! key = """-----BEGIN PRIVATE KEY-----..."""   # client key, PEM
//! ```
//!
//! A node writes its admin bundle in this format at first boot
//! (`/var/lib/debvisor/pki/clients/admin.toml`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::paths;

/// Where the node keeps the admin bundle; named in the advice when no
/// config file is found.
pub const ADMIN_BUNDLE: &str = "/var/lib/debvisor/pki/clients/admin.toml";

/// The whole client configuration: the current context and every context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The name of the context used unless another is chosen.
    pub context: String,
    /// The contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// How to reach and authenticate to one node (or, later, one cluster).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// `host:port` addresses of the agent's mTLS endpoint, tried in order.
    pub endpoints: Vec<String>,
    /// The name checked in the server certificate (a DNS SAN of it).
    pub server_name: String,
    /// The node CA certificate(s), PEM: the only roots trusted.
    pub ca: String,
    /// The client certificate (chain), PEM.
    pub crt: String,
    /// The client private key, PEM.
    pub key: String,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("endpoints", &self.endpoints)
            .field("server_name", &self.server_name)
            .field("ca", &format_args!("<{} bytes>", self.ca.len()))
            .field("crt", &format_args!("<{} bytes>", self.crt.len()))
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

/// A config file that cannot be found, read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error(
        "{path} not found: copy the admin bundle from the node (Settings > Client bundle, or {ADMIN_BUNDLE}) to {path} or pass --config"
    )]
    NotFound {
        /// The file looked for.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("Cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("{path} is not a DebVisor client config")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: toml::de::Error,
    },
    /// The file parses but a value is wrong.
    #[error("{path} is not usable")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending value.
        #[source]
        source: ValidationError,
    },
    /// The config cannot be serialised.
    #[error("Cannot serialise the client config for {path}")]
    Serialize {
        /// The file it was meant for.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::ser::Error,
    },
    /// The file (or its directory) cannot be written.
    #[error("Cannot write {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No environment variable says where the config is.
    #[error("Cannot locate the client config: set DEBVISORCONFIG, XDG_CONFIG_HOME or HOME, or pass --config")]
    NoDefaultPath,
}

/// A value in a client config that cannot be used, naming the context and
/// key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The current context is not defined.
    #[error("The current context {context:?} is not defined (contexts: {known})")]
    UnknownContext {
        /// The name given in `context`.
        context: String,
        /// The defined contexts, comma-separated (or "none").
        known: String,
    },
    /// A context has no endpoints.
    #[error("Context {context:?} has no endpoints: add one (host:port) or pass --endpoint")]
    NoEndpoints {
        /// The context.
        context: String,
    },
    /// An endpoint is not `host:port`.
    #[error("Endpoint {endpoint:?} of context {context:?} is not host:port (IPv6 as [addr]:port)")]
    BadEndpoint {
        /// The context.
        context: String,
        /// The offending endpoint.
        endpoint: String,
    },
    /// `server_name` is not a DNS name or IP address.
    #[error("server_name {server_name:?} of context {context:?} is not a DNS name or IP address")]
    BadServerName {
        /// The context.
        context: String,
        /// The offending name.
        server_name: String,
    },
    /// A PEM value holds no certificate or key.
    #[error("{key} of context {context:?} holds no PEM {expected}")]
    BadPem {
        /// The context.
        context: String,
        /// `ca`, `crt` or `key`.
        key: &'static str,
        /// What it should hold.
        expected: &'static str,
    },
}

impl ClientConfig {
    /// A config with one context, current.
    pub fn single(name: impl Into<String>, context: Context) -> Self {
        let name = name.into();
        Self {
            context: name.clone(),
            contexts: BTreeMap::from([(name, context)]),
        }
    }

    /// Reads, parses and checks the config at `path`: the current context
    /// must exist and every value must be well-formed, as in
    /// [`ClientConfig::validate`], except that a context may have no
    /// endpoints yet (a node writes its bundle before it has an address), so
    /// that a `--endpoint` flag can still supply one
    /// ([`Context::with_endpoint_override`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ConfigError::NotFound {
                path: path.to_path_buf(),
            },
            _ => ConfigError::Read {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        config
            .current()
            .map(|_| ())
            .and_then(|_| config.check_contexts(false))
            .map_err(|source| ConfigError::Invalid {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(config)
    }

    /// Checks every context (allowing an empty endpoint list, as
    /// [`ClientConfig::load`] does) and writes the config to `path`
    /// atomically (temporary file, fsync, rename) with mode 0600, creating
    /// the directory (0700) if needed.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        self.check_contexts(false).map_err(|source| ConfigError::Invalid {
            path: path.to_path_buf(),
            source,
        })?;
        let text = toml::to_string(self).map_err(|source| ConfigError::Serialize {
            path: path.to_path_buf(),
            source,
        })?;
        write_atomic(path, text.as_bytes())
    }

    /// Checks that the current context exists and that every context has
    /// endpoints of the form `host:port`, a valid server name and PEM values
    /// that parse.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.current()?;
        self.check_contexts(true)
    }

    fn check_contexts(&self, require_endpoints: bool) -> Result<(), ValidationError> {
        self.contexts
            .iter()
            .try_for_each(|(name, ctx)| ctx.check(name, require_endpoints))
    }

    /// The current context.
    pub fn current(&self) -> Result<&Context, ValidationError> {
        self.contexts
            .get(&self.context)
            .ok_or_else(|| ValidationError::UnknownContext {
                context: self.context.clone(),
                known: if self.contexts.is_empty() {
                    "none".to_string()
                } else {
                    self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }
}

impl Context {
    /// Checks this context, named `name` in error messages: at least one
    /// endpoint, each `host:port`; a valid server name; PEM values that
    /// parse.
    pub fn validate(&self, name: &str) -> Result<(), ValidationError> {
        self.check(name, true)
    }

    fn check(&self, name: &str, require_endpoints: bool) -> Result<(), ValidationError> {
        let context = || name.to_string();
        if require_endpoints && self.endpoints.is_empty() {
            return Err(ValidationError::NoEndpoints { context: context() });
        }
        for endpoint in &self.endpoints {
            if !is_host_port(endpoint) {
                return Err(ValidationError::BadEndpoint {
                    context: context(),
                    endpoint: endpoint.clone(),
                });
            }
        }
        if ServerName::try_from(self.server_name.as_str()).is_err() {
            return Err(ValidationError::BadServerName {
                context: context(),
                server_name: self.server_name.clone(),
            });
        }
        let bad_pem = |key, expected| ValidationError::BadPem {
            context: context(),
            key,
            expected,
        };
        if parse_certs(&self.ca).is_none() {
            return Err(bad_pem("ca", "certificate"));
        }
        if parse_certs(&self.crt).is_none() {
            return Err(bad_pem("crt", "certificate"));
        }
        if PrivateKeyDer::from_pem_slice(self.key.as_bytes()).is_err() {
            return Err(bad_pem("key", "private key"));
        }
        Ok(())
    }

    /// This context with its endpoints replaced by `endpoint` (for a
    /// `--endpoint` flag); a bare host gets the agent's port
    /// ([`paths::AGENT_TLS_PORT`]).
    pub fn with_endpoint_override(mut self, endpoint: &str) -> Result<Self, ValidationError> {
        let endpoint = endpoint.trim();
        let with_port = if is_host_port(endpoint) {
            endpoint.to_string()
        } else {
            // A bare host name, IPv4 address, IPv6 address or [IPv6].
            let host = endpoint.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, paths::AGENT_TLS_PORT).to_string(),
                Err(_) => format!("{host}:{}", paths::AGENT_TLS_PORT),
            }
        };
        if !is_host_port(&with_port) {
            return Err(ValidationError::BadEndpoint {
                context: "--endpoint".to_string(),
                endpoint: endpoint.to_string(),
            });
        }
        self.endpoints = vec![with_port];
        Ok(self)
    }
}

/// The default config path: `$DEBVISORCONFIG`, else
/// `$XDG_CONFIG_HOME/debvisor/config.toml`, else
/// `~/.config/debvisor/config.toml`.
pub fn default_path() -> Result<PathBuf, ConfigError> {
    default_path_from(|name| std::env::var_os(name))
}

fn default_path_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, ConfigError> {
    let set = |name| var(name).filter(|v| !v.is_empty());
    if let Some(p) = set("DEBVISORCONFIG") {
        return Ok(PathBuf::from(p));
    }
    // The XDG spec says to ignore a relative XDG_CONFIG_HOME.
    if let Some(p) = set("XDG_CONFIG_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(p.join("debvisor/config.toml"));
    }
    set("HOME")
        .map(|home| PathBuf::from(home).join(".config/debvisor/config.toml"))
        .ok_or(ConfigError::NoDefaultPath)
}

/// True for `host:port` with a non-zero port, where host is a DNS name, an
/// IPv4 address or a bracketed IPv6 address.
fn is_host_port(s: &str) -> bool {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return addr.port() != 0;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    port_ok && !host.contains(':') && !host.contains('[') && ServerName::try_from(host).is_ok()
}

fn parse_certs(pem: &str) -> Option<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    (!certs.is_empty()).then_some(certs)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ConfigError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Write { path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err(dir))?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err(&tmp))?;
    f.write_all(data).map_err(err(&tmp))?;
    f.sync_all().map_err(err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A throwaway self-signed certificate and its key, PEM.
    fn cert_and_key() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["test".to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn context() -> Context {
        let (cert, key) = cert_and_key();
        Context {
            endpoints: vec![
                "192.0.2.10:7443".into(),
                "[2001:db8::1]:7443".into(),
                "node1.lan:7443".into(),
            ],
            server_name: "debvisor-node".into(),
            ca: cert.clone(),
            crt: cert,
            key,
        }
    }

    fn config() -> ClientConfig {
        ClientConfig::single("node1", context())
    }

    #[test]
    fn round_trips_through_a_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        let cfg = config();
        cfg.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("context = \"node1\""), "{text}");
        assert!(text.contains("[contexts.node1]"), "{text}");
        let back = ClientConfig::load(&path).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.current().unwrap().server_name, "debvisor-node");
        assert!(!dir.path().join("sub/config.toml.tmp").exists());
    }

    #[test]
    fn parses_the_documented_format() {
        let (cert, key) = cert_and_key();
        let text = format!(
            "context = \"node1\"\n[contexts.node1]\nendpoints = [\"192.0.2.10:7443\"]\nserver_name = \"debvisor-node\"\nca = \"\"\"{cert}\"\"\"\ncrt = \"\"\"{cert}\"\"\"\nkey = \"\"\"{key}\"\"\"\n"
        );
        let cfg: ClientConfig = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.current().unwrap().endpoints, ["192.0.2.10:7443"]);
    }

    #[test]
    fn missing_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let err = ClientConfig::load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::NotFound { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(ADMIN_BUNDLE) && msg.contains("--config"), "{msg}");
    }

    #[test]
    fn unknown_fields_and_bad_toml_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "context = \"a\"\ncolour = \"blue\"\n").unwrap();
        let err = ClientConfig::load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("config.toml"));
        let text = toml::to_string(&config())
            .unwrap()
            .replace("server_name =", "extra = 1\nserver_name =");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(ClientConfig::load(&path), Err(ConfigError::Parse { .. })));
        std::fs::write(&path, "context = ").unwrap();
        assert!(matches!(ClientConfig::load(&path), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn unreadable_path_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClientConfig::load(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    #[test]
    fn invalid_values_name_context_and_key() {
        let mut cfg = config();
        cfg.context = "other".into();
        assert_eq!(
            cfg.validate(),
            Err(ValidationError::UnknownContext {
                context: "other".into(),
                known: "node1".into()
            })
        );

        let check = |f: fn(&mut Context)| {
            let mut cfg = config();
            f(cfg.contexts.get_mut("node1").unwrap());
            cfg.validate().unwrap_err()
        };
        assert_eq!(
            check(|c| c.endpoints.clear()),
            ValidationError::NoEndpoints {
                context: "node1".into()
            }
        );
        for bad in [
            "192.0.2.10",
            "node1",
            "node1:0",
            "node1:99999",
            "2001:db8::1:7443",
            ":7443",
            "a b:1",
        ] {
            let mut cfg = config();
            cfg.contexts.get_mut("node1").unwrap().endpoints = vec![bad.into()];
            assert_eq!(
                cfg.validate(),
                Err(ValidationError::BadEndpoint {
                    context: "node1".into(),
                    endpoint: bad.into()
                }),
                "{bad}"
            );
        }
        assert!(matches!(
            check(|c| c.server_name = "not a name".into()),
            ValidationError::BadServerName { .. }
        ));
        assert_eq!(
            check(|c| c.ca = "garbage".into()),
            ValidationError::BadPem {
                context: "node1".into(),
                key: "ca",
                expected: "certificate"
            }
        );
        assert!(matches!(
            check(|c| c.crt = c.key.clone()),
            ValidationError::BadPem { key: "crt", .. }
        ));
        assert!(matches!(
            check(|c| c.key = c.ca.clone()),
            ValidationError::BadPem { key: "key", .. }
        ));
        let msg = check(|c| c.key = String::new()).to_string();
        assert!(msg.contains("key") && msg.contains("node1"), "{msg}");
    }

    #[test]
    fn invalid_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut cfg = config();
        cfg.contexts.get_mut("node1").unwrap().server_name = "bad name".into();
        assert!(matches!(cfg.save(&path), Err(ConfigError::Invalid { .. })));
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        let err = ClientConfig::load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }));
        assert!(err.to_string().contains("config.toml"));

        cfg = config();
        cfg.context = "nope".into();
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        let err = ClientConfig::load(&path).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                source: ValidationError::UnknownContext { .. },
                ..
            }
        ));
    }

    #[test]
    fn no_endpoints_loads_but_does_not_validate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut cfg = config();
        cfg.contexts.get_mut("node1").unwrap().endpoints.clear();
        cfg.save(&path).unwrap();
        let loaded = ClientConfig::load(&path).unwrap();
        assert!(matches!(loaded.validate(), Err(ValidationError::NoEndpoints { .. })));
        let ctx = loaded.current().unwrap().clone();
        let ctx = ctx.with_endpoint_override("192.0.2.1").unwrap();
        ctx.validate("node1").unwrap();
    }

    #[test]
    fn endpoint_override_adds_the_default_port() {
        let ctx = context();
        let o = |e: &str| ctx.clone().with_endpoint_override(e).map(|c| c.endpoints);
        assert_eq!(o("198.51.100.7").unwrap(), ["198.51.100.7:7443"]);
        assert_eq!(o("198.51.100.7:9000").unwrap(), ["198.51.100.7:9000"]);
        assert_eq!(o("node2").unwrap(), ["node2:7443"]);
        assert_eq!(o("2001:db8::2").unwrap(), ["[2001:db8::2]:7443"]);
        assert_eq!(o("[2001:db8::2]").unwrap(), ["[2001:db8::2]:7443"]);
        assert_eq!(o("[2001:db8::2]:1").unwrap(), ["[2001:db8::2]:1"]);
        assert!(o("bad host").is_err());
        assert!(o("").is_err());
    }

    #[test]
    fn default_path_follows_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        let p = |pairs| default_path_from(env(pairs)).ok();
        assert_eq!(
            p(&[("DEBVISORCONFIG", "/x/c.toml"), ("HOME", "/home/a")]),
            Some(PathBuf::from("/x/c.toml"))
        );
        assert_eq!(
            p(&[("DEBVISORCONFIG", ""), ("XDG_CONFIG_HOME", "/cfg"), ("HOME", "/home/a")]),
            Some(PathBuf::from("/cfg/debvisor/config.toml"))
        );
        assert_eq!(
            p(&[("XDG_CONFIG_HOME", "relative"), ("HOME", "/home/a")]),
            Some(PathBuf::from("/home/a/.config/debvisor/config.toml"))
        );
        assert!(matches!(default_path_from(env(&[])), Err(ConfigError::NoDefaultPath)));
    }

    #[test]
    fn debug_hides_the_key() {
        let s = format!("{:?}", context());
        assert!(!s.contains("PRIVATE") && s.contains("redacted"), "{s}");
    }
}
