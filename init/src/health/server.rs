//! `debvisor.health.v1.NodeHealthService` over [`Health`]'s watch channel,
//! served on a Unix socket (root only).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;

use debvisor_api::health::v1::node_health_service_server::{NodeHealthService, NodeHealthServiceServer};
use debvisor_api::health::v1::{ListRequest, NodeHealth, WatchRequest};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The service.
#[derive(Debug, Clone)]
pub struct HealthApi {
    rx: watch::Receiver<NodeHealth>,
}

impl HealthApi {
    /// Serves the states published on `rx`.
    pub fn new(rx: watch::Receiver<NodeHealth>) -> Self {
        Self { rx }
    }
}

/// `node` without histories unless `history`, and only checks of `kind`
/// unless it is empty.
pub fn filtered(mut node: NodeHealth, history: bool, kind: &str) -> NodeHealth {
    if !kind.is_empty() {
        node.checks.retain(|c| c.kind == kind);
    }
    if !history {
        for c in &mut node.checks {
            c.history.clear();
        }
    }
    node
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<NodeHealth, Status>> + Send>>;

#[tonic::async_trait]
impl NodeHealthService for HealthApi {
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<NodeHealth>, Status> {
        let r = request.into_inner();
        let node = self.rx.borrow().clone();
        Ok(Response::new(filtered(node, r.include_history, &r.kind)))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let history = request.into_inner().include_history;
        let stream =
            tokio_stream::wrappers::WatchStream::new(self.rx.clone()).map(move |node| Ok(filtered(node, history, "")));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Binds `path` (removing a stale socket, mode 0600) and serves the health
/// service on it until `shutdown` completes.
pub async fn serve_unix(
    path: &Path,
    rx: watch::Receiver<NodeHealth>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("Cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("Cannot remove the stale socket {}", path.display()));
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("Cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("Cannot restrict {} to root", path.display()))?;
    tonic::transport::Server::builder()
        .add_service(NodeHealthServiceServer::new(HealthApi::new(rx)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("Health service failed")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use debvisor_api::health::v1::node_health_service_client::NodeHealthServiceClient;
    use debvisor_api::health::v1::{CheckStatus, NodeState};

    use super::*;
    use crate::health::system::ResourceCheck;
    use crate::health::{Check, Health, Outcome};

    #[tokio::test]
    async fn list_and_watch_over_a_unix_socket() {
        let checks: Vec<Arc<dyn Check>> = ResourceCheck::all(32, 4.0)
            .into_iter()
            .map(|c| Arc::new(c) as _)
            .collect();
        let health = Arc::new(Health::new(
            &checks,
            Duration::from_secs(10),
            Duration::from_secs(5),
            5,
            0,
            None,
        ));
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("init.sock");
        std::fs::write(&sock, "stale").unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let (sock, rx) = (sock.clone(), health.subscribe());
            async move { serve_unix(&sock, rx, async { drop(stopped.await) }).await }
        });
        let mut client = loop {
            match debvisor_api::client::connect_unix(&sock).await {
                Ok(ch) => break NodeHealthServiceClient::new(ch),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut watch = client
            .watch(WatchRequest { include_history: true })
            .await
            .unwrap()
            .into_inner();
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(first.checks.len(), 3);
        assert_eq!(
            first.checks[0].last.as_ref().unwrap().status,
            CheckStatus::Pending as i32
        );

        health.record(
            "resources/memory",
            &Outcome::pass("900 MiB available"),
            1,
            Duration::from_millis(3),
        );
        health.record(
            "resources/memory",
            &Outcome::fail("10 MiB available"),
            2,
            Duration::from_millis(3),
        );
        let mut last = watch.next().await.unwrap().unwrap();
        while last.checks[0].history.len() < 2 {
            last = watch.next().await.unwrap().unwrap();
        }
        assert_eq!(last.checks[0].consecutive_failures, 1);

        let list = client
            .list(ListRequest {
                include_history: false,
                kind: "resources".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.checks.len(), 3);
        assert!(list.checks.iter().all(|c| c.history.is_empty()));
        assert_eq!(list.checks[0].last.as_ref().unwrap().message, "10 MiB available");
        // No required check: nothing keeps the node starting.
        assert_eq!(list.state, NodeState::Healthy as i32);
        let none = client
            .list(ListRequest {
                include_history: true,
                kind: "dns".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(none.checks.is_empty());
        stop.send(()).unwrap();
        drop(watch);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
