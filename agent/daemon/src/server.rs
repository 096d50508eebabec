//! The agent's transports: the Unix socket (peer credentials) and TCP with
//! mutual TLS, both serving the same services (node, units, audit, node
//! health, config, update, grpc.health.v1 and reflection) behind the same middleware: tracing,
//! metrics, caller identity, per-client rate limiting and an UNIMPLEMENTED
//! answer that names the supported versions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use debvisor_api::audit::v1::audit_service_server::AuditServiceServer;
use debvisor_api::config_api::v1::config_service_server::ConfigServiceServer;
use debvisor_api::health::v1::node_health_service_server::NodeHealthServiceServer;
use debvisor_api::node::v1::node_service_server::NodeServiceServer;
use debvisor_api::provision::v1::provision_service_server::ProvisionServiceServer;
use debvisor_api::units::v1::unit_service_server::UnitServiceServer;
use debvisor_api::update::v1::update_service_server::UpdateServiceServer;
use debvisor_api::vm::v1::vm_service_server::VmServiceServer;
use debvisor_audit::AuditLog;
use debvisor_systemd::{Journal, Units};
use debvisor_telemetry::{Metrics, RateLimitLayer, TraceLayer};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::codec::CompressionEncoding;
use tonic::service::{InterceptorLayer, Routes};
use tonic::transport::{Server, ServerTlsConfig};

use crate::audit_service::{AuditApi, Auditor};
use crate::auth::{self, PeerPolicy};
use crate::config::AgentConfig;
use crate::config_service::{ConfigApi, ConfigFiles, ConfigOrigin};
use crate::health_service::{HealthApi, HealthSource};
use crate::host::HostFacts;
use crate::provision_service::ProvisionApi;
use crate::routing::{KnownMethods, UnknownMethodLayer};
use crate::service::NodeApi;
use crate::status::{MAX_AGE, StatusCache};
use crate::units_service::UnitsApi;
use crate::update_service::{UpdateApi, UpdateBackend};
use crate::vm_service::{VmApi, Vmd};

/// Where and how the agent serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Unix socket path (local API).
    pub socket: PathBuf,
    /// TCP address for mutual TLS, with the certificate files; `None`
    /// disables TCP.
    pub tls: Option<TlsListen>,
    /// Plain-HTTP address of `/metrics`; `None` disables it.
    pub metrics: Option<SocketAddr>,
}

/// The mutual-TLS listener settings.
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// The CA that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
}

/// The host facilities the services work on, real or fake.
#[derive(Clone)]
pub struct Backends {
    /// Node facts.
    pub host: Arc<dyn HostFacts>,
    /// systemd units.
    pub units: Arc<dyn Units>,
    /// The journal.
    pub journal: Arc<dyn Journal>,
    /// The audit log.
    pub audit: AuditLog,
    /// The node's health: debvisor-init's socket, or a simulation.
    pub health: Arc<dyn HealthSource>,
    /// The PXE provisioner this agent runs, if any (agent.toml `provision`).
    pub provision: Option<debvisor_provision::Provisioner>,
    /// The VM daemon (debvisor-vmd), if this agent manages VMs.
    pub vm: Option<Vmd>,
}

/// Listeners bound and ready to serve; binding first lets the caller report
/// readiness to systemd only once clients can connect.
pub struct Bound {
    unix: tokio::net::UnixListener,
    tcp: Option<(tokio::net::TcpListener, ServerTlsConfig)>,
    metrics: Option<tokio::net::TcpListener>,
}

impl Bound {
    /// The TCP address actually bound (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The metrics address actually bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Binds the socket (replacing a stale one), the mTLS port and the metrics
/// port.
pub async fn bind(cfg: &ServeConfig) -> anyhow::Result<Bound> {
    // Access is decided per request from peer credentials, so the socket
    // itself is open to all local users.
    let unix = debvisor_api::daemon::bind_unix(&cfg.socket, 0o666)?;
    let tcp = match &cfg.tls {
        Some(t) => {
            let read = |p: &Path, what: &str| {
                std::fs::read(p).with_context(|| format!("Cannot read the {what} {}", p.display()))
            };
            let tls = debvisor_api::tls::server_tls(
                &read(&t.cert, "TLS certificate")?,
                &read(&t.key, "TLS key")?,
                &read(&t.client_ca, "client CA certificate")?,
            )
            .context("Bad TLS material")?;
            let l = tokio::net::TcpListener::bind(t.addr)
                .await
                .with_context(|| format!("Cannot listen on {}", t.addr))?;
            Some((l, tls))
        }
        None => None,
    };
    let metrics = match cfg.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("Cannot listen on {addr} for /metrics"))?,
        ),
        None => None,
    };
    Ok(Bound { unix, tcp, metrics })
}

/// Applies the message size limit and both compressions to a generated
/// server.
macro_rules! tuned {
    ($server:expr, $max:expr) => {
        $server
            .max_decoding_message_size($max)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Zstd)
    };
}

/// Where the config service reads by default: the node's files, or the
/// simulated sample when the host is simulated (`--sim`).
pub fn default_config_origin(host: &dyn HostFacts) -> ConfigOrigin {
    match host.status() {
        Ok(s) if s.simulated => ConfigOrigin::Simulated,
        _ => ConfigOrigin::Files(ConfigFiles::production()),
    }
}

/// What the update service works on by default: RAUC on the system bus and
/// the data partition, or a fake RAUC and a directory under the temporary
/// directory when the host is simulated (`--sim`).
pub fn default_update_backend(host: &dyn HostFacts) -> UpdateBackend {
    match host.status() {
        Ok(s) if s.simulated => {
            UpdateBackend::simulated(std::env::temp_dir().join(format!("debvisor-sim-updates-{}", std::process::id())))
        }
        _ => UpdateBackend::production(),
    }
}

/// Every service, routed by path; shared by both transports.
async fn routes(
    b: &Backends,
    config: ConfigOrigin,
    update: UpdateBackend,
    cfg: &AgentConfig,
) -> anyhow::Result<Routes> {
    let auditor = Auditor::new(b.audit.clone());
    let status = Arc::new(StatusCache::new(b.host.clone(), MAX_AGE));
    let max = cfg.max_message_bytes;
    let node = tuned!(
        NodeServiceServer::new(NodeApi::new(status, b.units.clone(), auditor.clone())),
        max
    );
    let units = tuned!(
        UnitServiceServer::new(UnitsApi::new(b.units.clone(), b.journal.clone(), auditor.clone())),
        max
    );
    let config = tuned!(
        ConfigServiceServer::new(ConfigApi::new(
            config,
            b.health.clone(),
            b.host.clone(),
            auditor.clone()
        )),
        max
    );
    let provision = tuned!(
        ProvisionServiceServer::new(ProvisionApi::new(b.provision.clone(), auditor.clone())),
        max
    );
    let vm = tuned!(VmServiceServer::new(VmApi::new(b.vm.clone(), auditor.clone())), max);
    let update = tuned!(UpdateServiceServer::new(UpdateApi::new(update, auditor)), max);
    let audit = tuned!(AuditServiceServer::new(AuditApi::new(b.audit.clone())), max);
    let node_health = tuned!(NodeHealthServiceServer::new(HealthApi::new(b.health.clone())), max);

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<NodeServiceServer<NodeApi>>().await;
    reporter.set_serving::<UnitServiceServer<UnitsApi>>().await;
    reporter.set_serving::<AuditServiceServer<AuditApi>>().await;
    reporter.set_serving::<NodeHealthServiceServer<HealthApi>>().await;
    reporter.set_serving::<ConfigServiceServer<ConfigApi>>().await;
    reporter.set_serving::<UpdateServiceServer<UpdateApi>>().await;
    if b.vm.is_some() {
        reporter.set_serving::<VmServiceServer<VmApi>>().await;
    } else {
        reporter.set_not_serving::<VmServiceServer<VmApi>>().await;
    }
    if b.provision.is_some() {
        reporter.set_serving::<ProvisionServiceServer<ProvisionApi>>().await;
    } else {
        reporter.set_not_serving::<ProvisionServiceServer<ProvisionApi>>().await;
    }
    fn reflection() -> tonic_reflection::server::Builder<'static> {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(debvisor_api::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    }
    let reflection_v1 = reflection().build_v1().context("Cannot build the reflection service")?;
    // grpcio's reflection client (Python) still speaks v1alpha.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("Cannot build the v1alpha reflection service")?;

    Ok(Routes::new(node)
        .add_service(units)
        .add_service(audit)
        .add_service(node_health)
        .add_service(config)
        .add_service(update)
        .add_service(provision)
        .add_service(vm)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha))
}

/// Serves every service on both transports, and `/metrics`, until
/// `shutdown` resolves. The config service reads from
/// [`default_config_origin`].
pub async fn serve(
    bound: Bound,
    backends: Backends,
    cfg: AgentConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = default_config_origin(backends.host.as_ref());
    serve_with_config(bound, backends, config, cfg, metrics, shutdown).await
}

/// [`serve`], with the config service reading from `config` (tests point it
/// at temporary files).
pub async fn serve_with_config(
    bound: Bound,
    backends: Backends,
    config: ConfigOrigin,
    cfg: AgentConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let update = default_update_backend(backends.host.as_ref());
    serve_with_update(bound, backends, config, update, cfg, metrics, shutdown).await
}

/// [`serve_with_config`], with the update service working on `update`
/// (tests hand it a fake RAUC they control).
pub async fn serve_with_update(
    bound: Bound,
    backends: Backends,
    config: ConfigOrigin,
    update: UpdateBackend,
    cfg: AgentConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let routes = routes(&backends, config, update, &cfg).await?;
    let known = KnownMethods::agent();
    let limit = RateLimitLayer::new(cfg.rate_limit).context("Bad rate limit")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // One span per call only when traces are exported: without a collector
    // nobody reads them.
    let trace = TraceLayer::enabled(cfg.otel.endpoint.is_some());
    let policy = PeerPolicy::from_host(&cfg.console_user);
    let unix = Server::builder()
        .layer(trace.clone())
        .layer(metrics.layer("unix"))
        .layer(InterceptorLayer::new(move |req| policy.check(req)))
        .layer(limit.clone())
        .layer(UnknownMethodLayer::new(known.clone()))
        .add_routes(routes.clone())
        .serve_with_incoming_shutdown(
            metrics.count_connections("unix", UnixListenerStream::new(bound.unix)),
            stopped(stop_rx.clone()),
        );

    let tcp = async {
        let Some((listener, tls)) = bound.tcp else {
            return Ok(());
        };
        Server::builder()
            .tls_config(tls)
            .context("Bad TLS configuration")?
            .layer(trace)
            .layer(metrics.layer("tcp"))
            .layer(InterceptorLayer::new(auth::identify_tls))
            .layer(limit)
            .layer(UnknownMethodLayer::new(known))
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                metrics.count_connections("tcp", nodelay(TcpListenerStream::new(listener))),
                stopped(stop_rx.clone()),
            )
            .await
            .context("mTLS server failed")
    };
    let http = async {
        let Some(listener) = bound.metrics else {
            return Ok(());
        };
        debvisor_telemetry::serve_metrics(listener, metrics.clone(), stopped(stop_rx.clone()))
            .await
            .context("Metrics server failed")
    };
    // Graceful shutdown waits for open calls, but streams (WatchStatus,
    // StreamLogs with follow) stay open until their clients leave: give them
    // a moment, then close them so that a stop or reboot is not held up.
    let grace = async {
        stopped(stop_rx.clone()).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::info!("closing the streams still open after {} s", SHUTDOWN_GRACE.as_secs());
    };
    tokio::select! {
        (u, t, h) = async { tokio::join!(unix, tcp, http) } => {
            u.context("Unix socket server failed")?;
            t?;
            h
        }
        () = grace => Ok(()),
    }
}

/// Turns off Nagle's algorithm on accepted connections, as tonic does for
/// the listeners it binds itself: a small gRPC answer must not wait for the
/// client's delayed ACK.
fn nodelay(incoming: TcpListenerStream) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    incoming.map(|accepted| {
        accepted.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!("Cannot set TCP_NODELAY: {e}");
            }
        })
    })
}

/// How long calls still open at shutdown may run on.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
