//! `debvisor-vmd`: the node's VMs, through libvirt, in their own process.
//!
//! It serves `debvisor.vm.v1` on a Unix socket only root may open
//! ([`debvisor_api::paths::VMD_SOCKET`]). The agent is its one client: the
//! agent authenticates each caller, checks the role, forwards the call here
//! and audits the result. Keeping libvirt out of the agent keeps the
//! agent's memory small (libvirt maps about 9 MB of libraries: gnutls, glib,
//! libxml2, ...) and keeps a libvirt call that hangs from holding the agent.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use debvisor_api::vm::v1::vm_service_server::VmServiceServer;
use tokio_stream::wrappers::UnixListenerStream;

pub mod config;
mod console;
mod convert;
mod display;
mod service;

pub use console::MAX_CONSOLE_INPUT;
pub use convert::spec_from_pb;
pub use service::{VmBackend, VmServer};

/// Binds the socket at `path` for root alone (mode 0600), replacing a
/// stale one and creating its directory.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    debvisor_api::daemon::bind_unix(path, 0o600)
}

/// Serves `debvisor.vm.v1` over `backend` on `listener` until `shutdown`
/// resolves.
pub async fn serve(
    listener: tokio::net::UnixListener,
    backend: Arc<VmBackend>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(VmServiceServer::new(VmServer::new(backend)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("The VM service stopped")
}

/// Binds `path` and serves `backend` there on a task of its own until the
/// runtime ends (tests and tools that run the daemon in-process).
pub fn spawn(path: &Path, backend: Arc<VmBackend>) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let listener = bind(path)?;
    Ok(tokio::spawn(serve(listener, backend, std::future::pending())))
}
