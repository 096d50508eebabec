//! Choosing how to reach the agent and connecting.
//!
//! In order: `--socket PATH` (local Unix socket); `--fingerprint` with
//! `--endpoint` (server-only TLS pinned to the node's certificate, for first
//! contact); otherwise the client config (`--config`, `$DEBVISORCONFIG`,
//! `$XDG_CONFIG_HOME/debvisor/config.toml`, `~/.config/debvisor/config.toml`)
//! and its current or `--context` context over mutual TLS, with `--endpoint`
//! replacing the context's endpoints. When no config file exists and the
//! agent's socket does, we are on a node: the socket is used. That is not
//! limited to root, so that a member of the `debvisor` group gets the same
//! default (and anyone else the agent's advice on how to get access).

use std::path::{Path, PathBuf};
use std::time::Duration;

use debvisor_api::config::{self, ADMIN_BUNDLE, ClientConfig, ConfigError, Context};
use debvisor_api::tls::MtlsError;
use debvisor_api::{client, paths};
use tonic::transport::Channel;

use crate::cli::ConnArgs;
use crate::diagnose::{Cause, Via, cause_of, diagnose};

/// How this run will reach the agent.
#[derive(Debug, Clone)]
pub enum Plan {
    /// The local Unix socket.
    Socket(PathBuf),
    /// Server-only TLS to `endpoint`, accepting exactly the certificate with
    /// SHA-256 `pin`.
    Pinned {
        /// host:port.
        endpoint: String,
        /// The certificate's SHA-256.
        pin: [u8; 32],
    },
    /// Mutual TLS with a context of the client config.
    Mtls {
        /// The context, endpoints already overridden by `--endpoint`.
        context: Box<Context>,
    },
}

impl Plan {
    /// How the agent is reached, for messages. For mutual TLS, the first
    /// endpoint (the one tried first).
    pub fn via(&self) -> Via {
        match self {
            Plan::Socket(p) => Via::Socket(p.clone()),
            Plan::Pinned { endpoint, .. } => Via::Tls {
                endpoint: endpoint.clone(),
                pinned: true,
            },
            Plan::Mtls { context, .. } => Via::Tls {
                endpoint: context.endpoints.join(", "),
                pinned: false,
            },
        }
    }
}

/// Why no connection to the agent could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No config file at the path looked at, and no local socket either.
    #[error("No client config at {}", path.display())]
    NoConfig {
        /// Where we looked.
        path: PathBuf,
        /// True when the path came from `--config` or `$DEBVISORCONFIG`.
        explicit: bool,
    },
    /// The config file cannot be read or used.
    #[error(transparent)]
    Config(ConfigError),
    /// `--context` names no context of the config.
    #[error("No context {name:?} in {}: it has {known}", path.display())]
    UnknownContext {
        /// The name asked for.
        name: String,
        /// The config file.
        path: PathBuf,
        /// The contexts it has, comma-separated.
        known: String,
    },
    /// The current context is missing or an override is not host:port.
    #[error("Cannot use {}", path.display())]
    Context {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: config::ValidationError,
    },
    /// `--fingerprint` without `--endpoint`.
    #[error("--fingerprint needs --endpoint HOST:PORT (the node to pin)")]
    FingerprintWithoutEndpoint,
    /// The fingerprint is malformed.
    #[error(transparent)]
    Fingerprint(client::ConnectError),
    /// Mutual TLS failed; the message says what to do.
    #[error(transparent)]
    Mtls(MtlsError),
    /// The socket or pinned-TLS connection failed.
    #[error("Cannot connect to the agent at {via}: {}", diagnose(.cause, .via).what)]
    Failed {
        /// How we tried.
        via: Via,
        /// What the error chain comes down to.
        cause: Cause,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Connecting took longer than `--timeout`.
    #[error("Cannot connect to the agent at {via}: no answer within {secs} s")]
    Timeout {
        /// How we tried.
        via: Via,
        /// The timeout.
        secs: u64,
    },
}

impl ConnectError {
    /// The next step, when the message does not already say it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConnectError::NoConfig { path, explicit } => Some(format!(
                "Copy the admin bundle from the node (console: Settings > Client bundle, or the file {ADMIN_BUNDLE} \
                 on the node) to {}{}; on the node itself, run as root or as a member of the 'debvisor' group \
                 to use the agent's socket ({}).",
                path.display(),
                if *explicit {
                    String::new()
                } else {
                    " (looked at $DEBVISORCONFIG, else $XDG_CONFIG_HOME/debvisor/config.toml, \
                     else ~/.config/debvisor/config.toml), or pass --config FILE"
                        .to_string()
                },
                paths::AGENT_SOCKET
            )),
            ConnectError::UnknownContext { .. } => Some("Pass one of those with --context.".into()),
            ConnectError::Failed { via, cause, .. } => Some(diagnose(cause, via).next),
            ConnectError::Timeout { via, .. } => Some(diagnose(&Cause::Unreachable, via).next),
            ConnectError::Mtls(e) => match e {
                MtlsError::Handshake { source, .. } => Some(diagnose(&cause_of(source), &tls_via()).next),
                MtlsError::Transport { source, .. } => Some(diagnose(&cause_of(source), &tls_via()).next),
                MtlsError::Unreachable { .. } => Some(diagnose(&Cause::Unreachable, &tls_via()).next),
                _ => None,
            },
            ConnectError::Config(_)
            | ConnectError::Context { .. }
            | ConnectError::FingerprintWithoutEndpoint
            | ConnectError::Fingerprint(_) => None,
        }
    }
}

fn tls_via() -> Via {
    Via::Tls {
        endpoint: String::new(),
        pinned: false,
    }
}

/// Decides how to reach the agent from the connection flags.
pub fn plan(args: &ConnArgs) -> Result<Plan, ConnectError> {
    plan_with(args, Path::new(paths::AGENT_SOCKET))
}

/// [`plan`] with the path of the local socket to fall back on.
fn plan_with(args: &ConnArgs, local_socket: &Path) -> Result<Plan, ConnectError> {
    if let Some(socket) = &args.socket {
        return Ok(Plan::Socket(socket.clone()));
    }
    if let Some(fp) = &args.fingerprint {
        let endpoint = args
            .endpoint
            .as_deref()
            .ok_or(ConnectError::FingerprintWithoutEndpoint)?;
        let pin = client::parse_fingerprint(fp).map_err(ConnectError::Fingerprint)?;
        return Ok(Plan::Pinned {
            endpoint: with_default_port(endpoint),
            pin,
        });
    }
    let on_node = || local_socket.exists();
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => match config::default_path() {
            Ok(p) => (p, false),
            Err(_) if on_node() => return Ok(Plan::Socket(local_socket.to_path_buf())),
            Err(e) => return Err(ConnectError::Config(e)),
        },
    };
    let cfg = match ClientConfig::load(&path) {
        Ok(cfg) => cfg,
        Err(ConfigError::NotFound { .. }) if !explicit && on_node() => {
            return Ok(Plan::Socket(local_socket.to_path_buf()));
        }
        Err(ConfigError::NotFound { path }) => return Err(ConnectError::NoConfig { path, explicit }),
        Err(e) => return Err(ConnectError::Config(e)),
    };
    let context = match &args.context {
        Some(name) => match cfg.contexts.get(name) {
            Some(c) => c.clone(),
            None => {
                return Err(ConnectError::UnknownContext {
                    name: name.clone(),
                    path,
                    known: cfg.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        },
        None => {
            let c = cfg.current().map_err(|source| ConnectError::Context {
                path: path.clone(),
                source,
            })?;
            c.clone()
        }
    };
    let context = match &args.endpoint {
        Some(ep) => context
            .with_endpoint_override(ep)
            .map_err(|source| ConnectError::Context { path, source })?,
        None => context,
    };
    Ok(Plan::Mtls {
        context: Box::new(context),
    })
}

/// `host` becomes `host:7443`; `host:port` and `[v6]:port` stay.
fn with_default_port(endpoint: &str) -> String {
    let e = endpoint.trim();
    let has_port = e.parse::<std::net::SocketAddr>().is_ok()
        || e.rsplit_once(':')
            .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok());
    if has_port {
        e.to_string()
    } else if e.contains(':') && !e.starts_with('[') {
        format!("[{e}]:{}", paths::AGENT_TLS_PORT)
    } else {
        format!("{e}:{}", paths::AGENT_TLS_PORT)
    }
}

/// Connects as planned, giving up after `timeout`.
pub async fn connect(plan: &Plan, timeout: Duration) -> Result<Channel, ConnectError> {
    let via = plan.via();
    let attempt = async {
        match plan {
            Plan::Socket(path) => client::connect_unix(path).await.map_err(|e| failed(&via, e)),
            Plan::Pinned { endpoint, pin } => client::connect_tls_pinned(endpoint, *pin)
                .await
                .map_err(|e| failed(&via, e)),
            Plan::Mtls { context, .. } => debvisor_api::tls::connect_mtls(context)
                .await
                .map_err(ConnectError::Mtls),
        }
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| {
        Err(ConnectError::Timeout {
            via: via.clone(),
            secs: timeout.as_secs(),
        })
    })
}

fn failed(via: &Via, e: client::ConnectError) -> ConnectError {
    ConnectError::Failed {
        via: via.clone(),
        cause: cause_of(&e),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ConnArgs {
        ConnArgs {
            config: None,
            context: None,
            endpoint: None,
            socket: None,
            fingerprint: None,
        }
    }

    #[test]
    fn socket_flag_wins() {
        let a = ConnArgs {
            socket: Some("/tmp/a.sock".into()),
            endpoint: Some("n1:7443".into()),
            ..args()
        };
        assert!(
            matches!(plan_with(&a, Path::new("/nonexistent")), Ok(Plan::Socket(p)) if p == Path::new("/tmp/a.sock"))
        );
    }

    #[test]
    fn fingerprint_needs_an_endpoint_and_gets_the_default_port() {
        let fp = "ab".repeat(32);
        let a = ConnArgs {
            fingerprint: Some(fp.clone()),
            ..args()
        };
        assert!(matches!(
            plan_with(&a, Path::new("/nonexistent")),
            Err(ConnectError::FingerprintWithoutEndpoint)
        ));
        let a = ConnArgs {
            fingerprint: Some(fp),
            endpoint: Some("192.0.2.1".into()),
            ..args()
        };
        match plan_with(&a, Path::new("/nonexistent")) {
            Ok(Plan::Pinned { endpoint, pin }) => {
                assert_eq!(endpoint, "192.0.2.1:7443");
                assert_eq!(pin, [0xab; 32]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_ports() {
        assert_eq!(with_default_port("n1"), "n1:7443");
        assert_eq!(with_default_port("n1:8443"), "n1:8443");
        assert_eq!(with_default_port("[2001:db8::1]:9"), "[2001:db8::1]:9");
        assert_eq!(with_default_port("2001:db8::1"), "[2001:db8::1]:7443");
    }

    #[test]
    fn missing_explicit_config_says_where_it_looked_and_how_to_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let a = ConnArgs {
            config: Some(path.clone()),
            ..args()
        };
        // Even with a local socket, an explicit config must exist.
        let sock = dir.path().join("agent.sock");
        std::fs::write(&sock, "").unwrap();
        let err = plan_with(&a, &sock).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        let hint = err.hint().unwrap();
        assert!(hint.contains(ADMIN_BUNDLE) && hint.contains("socket"), "{hint}");
    }

    #[test]
    fn unknown_context_lists_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let c = test_context();
        ClientConfig::single("node1", c).save(&path).unwrap();
        let a = ConnArgs {
            config: Some(path),
            context: Some("node9".into()),
            ..args()
        };
        let err = plan_with(&a, Path::new("/nonexistent")).unwrap_err();
        assert!(
            err.to_string().contains("node9") && err.to_string().contains("node1"),
            "{err}"
        );
    }

    #[test]
    fn endpoint_flag_replaces_the_context_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        ClientConfig::single("node1", test_context()).save(&path).unwrap();
        let a = ConnArgs {
            config: Some(path),
            endpoint: Some("198.51.100.7".into()),
            ..args()
        };
        match plan_with(&a, Path::new("/nonexistent")).unwrap() {
            Plan::Mtls { context } => {
                assert_eq!(context.endpoints, vec!["198.51.100.7:7443".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A context whose PEM values parse (a fixed self-signed P-256
    /// certificate and key, generated once for these tests).
    fn test_context() -> Context {
        Context {
            endpoints: vec!["192.0.2.10:7443".into()],
            server_name: "debvisor-node".into(),
            ca: TEST_CERT.into(),
            crt: TEST_CERT.into(),
            key: TEST_KEY.into(),
        }
    }

    const TEST_CERT: &str = include_str!("../tests/data/test-cert.pem");
    const TEST_KEY: &str = include_str!("../tests/data/test-key.pem");
}
