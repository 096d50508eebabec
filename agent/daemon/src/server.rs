//! The agent's transports: the Unix socket and TCP with TLS, both serving
//! the same services (node API, grpc.health.v1, reflection).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use debvisor_api::node::v1::node_service_server::NodeServiceServer;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::InterceptorLayer;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::auth::PeerPolicy;
use crate::host::HostFacts;
use crate::service::NodeApi;

/// Where and how the agent serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Unix socket path (local API).
    pub socket: PathBuf,
    /// TCP address for TLS, with the certificate and key PEM files; `None`
    /// disables TCP.
    pub tls: Option<TlsListen>,
}

/// The TLS listener settings.
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
}

/// Listeners bound and ready to serve; binding first lets the caller report
/// readiness to systemd only once clients can connect.
pub struct Bound {
    unix: tokio::net::UnixListener,
    tcp: Option<(tokio::net::TcpListener, Identity)>,
}

impl Bound {
    /// The TCP address actually bound (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }
}

/// Binds the socket (replacing a stale one) and the TLS port.
pub async fn bind(cfg: &ServeConfig) -> anyhow::Result<Bound> {
    let unix = bind_unix(&cfg.socket)?;
    let tcp = match &cfg.tls {
        Some(t) => {
            let cert =
                std::fs::read(&t.cert).with_context(|| format!("Cannot read TLS certificate {}", t.cert.display()))?;
            let key = std::fs::read(&t.key).with_context(|| format!("Cannot read TLS key {}", t.key.display()))?;
            let l = tokio::net::TcpListener::bind(t.addr)
                .await
                .with_context(|| format!("Cannot listen on {}", t.addr))?;
            Some((l, Identity::from_pem(cert, key)))
        }
        None => None,
    };
    Ok(Bound { unix, tcp })
}

fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("Cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("Cannot remove stale socket {}", path.display())),
    }
    let l = tokio::net::UnixListener::bind(path).with_context(|| format!("Cannot bind {}", path.display()))?;
    // Access is decided per request from peer credentials, so the socket
    // itself is open to all local users.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("Cannot set the mode of {}", path.display()))?;
    Ok(l)
}

/// Serves every service on both transports until `shutdown` resolves.
pub async fn serve(
    bound: Bound,
    host: Arc<dyn HostFacts>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = NodeApi::new(host);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<NodeServiceServer<NodeApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(debvisor_api::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("Cannot build the reflection service")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let policy = PeerPolicy::from_host();
    let unix = Server::builder()
        .layer(InterceptorLayer::new(move |req| policy.check(req)))
        .add_service(NodeServiceServer::new(node.clone()))
        .add_service(health.clone())
        .add_service(reflection.clone())
        .serve_with_incoming_shutdown(UnixListenerStream::new(bound.unix), stopped(stop_rx.clone()));

    let tcp = async {
        let Some((listener, identity)) = bound.tcp else {
            return Ok(());
        };
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .context("Bad TLS configuration")?
            .add_service(NodeServiceServer::new(node))
            .add_service(health)
            .add_service(reflection)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped(stop_rx.clone()))
            .await
            .context("TLS server failed")
    };
    let (u, t) = tokio::join!(unix, tcp);
    u.context("Unix socket server failed")?;
    t
}
