//! `debvisor.health.v1.NodeHealthService`: the node's health checks, alerts
//! and boot gate. debvisor-init runs the checks and serves the same service on
//! its own socket; the agent, the one door to the node, forwards List and
//! Watch there ([`InitForwarder`]). In `--sim` the answers come from
//! [`crate::fakes::SimHealth`] instead.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use debvisor_api::health::v1::node_health_service_client::NodeHealthServiceClient;
use debvisor_api::health::v1::node_health_service_server::NodeHealthService;
use debvisor_api::health::v1::{ListRequest, NodeHealth, WatchRequest};
use tokio::sync::Mutex;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::auth::Caller;

/// A stream of complete health states, as Watch returns it.
pub type HealthStream = Pin<Box<dyn Stream<Item = Result<NodeHealth, Status>> + Send>>;

/// Where the node's health comes from: debvisor-init, or a simulation.
#[tonic::async_trait]
pub trait HealthSource: Send + Sync {
    /// Every check (of `req.kind`, when set) with its latest result, the
    /// node's state, the boot gate and recent alerts.
    async fn list(&self, req: ListRequest) -> Result<NodeHealth, HealthError>;
    /// The current state, then a new complete state on every change; ends
    /// when the source stops.
    async fn watch(&self, req: WatchRequest) -> Result<HealthStream, HealthError>;
}

/// Why the node's health could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Nothing answers on init's socket (init stopped, restarting, or not
    /// installed).
    #[error("debvisor-init does not answer on {path}; check `systemctl status debvisor-init`")]
    InitUnreachable {
        /// Init's socket.
        path: PathBuf,
        /// What the connection attempt or the call reported.
        detail: String,
    },
    /// Init did not answer within the agent's limit.
    #[error("debvisor-init did not answer {call} on {path} within {} s", .after.as_secs())]
    InitTimeout {
        /// The call.
        call: &'static str,
        /// Init's socket.
        path: PathBuf,
        /// The limit.
        after: Duration,
    },
    /// Init answered with an error of its own, passed on as it is.
    #[error("{}", .0.message())]
    Init(Status),
}

impl From<HealthError> for Status {
    fn from(e: HealthError) -> Self {
        match &e {
            HealthError::InitUnreachable { detail, .. } => Status::unavailable(format!("{e} ({detail})")),
            HealthError::InitTimeout { .. } => Status::deadline_exceeded(e.to_string()),
            HealthError::Init(s) => Status::new(s.code(), s.message()),
        }
    }
}

/// How long a List may take at init before the agent gives up.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to init's socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Forwards List and Watch to debvisor-init's socket. Connects on first use,
/// keeps the channel, and connects again when init has restarted.
pub struct InitForwarder {
    path: PathBuf,
    channel: Mutex<Option<Channel>>,
}

impl InitForwarder {
    /// A forwarder to init's socket at `path` (normally
    /// [`debvisor_api::paths::INIT_SOCKET`]); nothing is connected yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            channel: Mutex::new(None),
        }
    }

    /// Init's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unreachable(&self, detail: impl Into<String>) -> HealthError {
        HealthError::InitUnreachable {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// The kept channel, or a new one.
    async fn client(&self) -> Result<NodeHealthServiceClient<Channel>, HealthError> {
        let mut kept = self.channel.lock().await;
        if let Some(ch) = kept.as_ref() {
            return Ok(NodeHealthServiceClient::new(ch.clone()));
        }
        let ch = match tokio::time::timeout(CONNECT_TIMEOUT, debvisor_api::client::connect_unix(&self.path)).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => return Err(self.unreachable(crate::error_chain(&e))),
            Err(_) => return Err(self.unreachable(format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))),
        };
        *kept = Some(ch.clone());
        Ok(NodeHealthServiceClient::new(ch))
    }

    /// Forgets the kept channel, so that the next call connects anew.
    async fn forget(&self) {
        *self.channel.lock().await = None;
    }

    /// Runs `call` on a channel to init; when the connection turns out to be
    /// dead (init restarted since), connects once more and retries.
    async fn with_retry<T, F, Fut>(&self, call: F) -> Result<T, HealthError>
    where
        F: Fn(NodeHealthServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let mut retried = false;
        loop {
            match call(self.client().await?).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(s) if is_transport_failure(&s) => {
                    self.forget().await;
                    if retried {
                        return Err(self.unreachable(transport_detail(&s)));
                    }
                    retried = true;
                }
                Err(s) => return Err(HealthError::Init(s)),
            }
        }
    }
}

/// A status made by the client side from a failed connection or a broken
/// stream (it carries the transport error as its source), as opposed to one
/// that init sent.
fn is_transport_failure(s: &Status) -> bool {
    use std::error::Error;
    s.source().is_some()
        && matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        )
}

fn transport_detail(s: &Status) -> String {
    use std::error::Error;
    match s.source() {
        Some(src) => crate::error_chain(src),
        None => s.message().to_string(),
    }
}

#[tonic::async_trait]
impl HealthSource for InitForwarder {
    async fn list(&self, req: ListRequest) -> Result<NodeHealth, HealthError> {
        let call = self.with_retry(|mut c| {
            let req = req.clone();
            async move { c.list(req).await }
        });
        tokio::time::timeout(LIST_TIMEOUT, call).await.unwrap_or_else(|_| {
            Err(HealthError::InitTimeout {
                call: "List",
                path: self.path.clone(),
                after: LIST_TIMEOUT,
            })
        })
    }

    async fn watch(&self, req: WatchRequest) -> Result<HealthStream, HealthError> {
        let call = self.with_retry(|mut c| async move { c.watch(req).await });
        let upstream = tokio::time::timeout(LIST_TIMEOUT, call).await.unwrap_or_else(|_| {
            Err(HealthError::InitTimeout {
                call: "Watch",
                path: self.path.clone(),
                after: LIST_TIMEOUT,
            })
        })?;
        // Init's messages pass through as they come. When init ends the
        // stream, ours ends; when its connection breaks, ours ends with
        // UNAVAILABLE naming init. Dropping ours (the client left) drops
        // init's call, which cancels it there.
        let path = self.path.clone();
        let piped = upstream.map(move |item| {
            item.map_err(|s| {
                if is_transport_failure(&s) {
                    Status::from(HealthError::InitUnreachable {
                        path: path.clone(),
                        detail: format!("the stream broke: {}", transport_detail(&s)),
                    })
                } else {
                    s
                }
            })
        });
        Ok(Box::pin(piped))
    }
}

/// The gRPC service over a [`HealthSource`]. Every authenticated caller may
/// read the node's health, as with GetStatus.
#[derive(Clone)]
pub struct HealthApi {
    source: Arc<dyn HealthSource>,
}

impl HealthApi {
    /// The service over `source`.
    pub fn new(source: Arc<dyn HealthSource>) -> Self {
        Self { source }
    }
}

#[tonic::async_trait]
impl NodeHealthService for HealthApi {
    async fn list(&self, req: Request<ListRequest>) -> Result<Response<NodeHealth>, Status> {
        Caller::of(&req)?;
        Ok(Response::new(self.source.list(req.into_inner()).await?))
    }

    type WatchStream = HealthStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<HealthStream>, Status> {
        Caller::of(&req)?;
        Ok(Response::new(self.source.watch(req.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_unavailable_and_names_init() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.sock");
        let f = InitForwarder::new(&path);
        let s = Status::from(f.list(ListRequest::default()).await.unwrap_err());
        assert_eq!(s.code(), Code::Unavailable);
        let want = format!(
            "debvisor-init does not answer on {}; check `systemctl status debvisor-init`",
            path.display()
        );
        assert!(s.message().starts_with(&want), "{}", s.message());
        let s = Status::from(f.watch(WatchRequest::default()).await.err().unwrap());
        assert_eq!(s.code(), Code::Unavailable);
    }

    #[test]
    fn init_errors_pass_through_with_their_code() {
        let s = Status::from(HealthError::Init(Status::invalid_argument(
            "kind: \"disk\" is not a kind",
        )));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "kind: \"disk\" is not a kind");
        let s = Status::from(HealthError::InitTimeout {
            call: "List",
            path: "/run/debvisor/init.sock".into(),
            after: LIST_TIMEOUT,
        });
        assert_eq!(s.code(), Code::DeadlineExceeded);
        assert!(s.message().contains("within 10 s"), "{}", s.message());
    }
}
