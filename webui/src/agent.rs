//! The console's only window on the node: the agent's gRPC API.
//!
//! Pages ask a [`NodeSource`] for the node's status. The production source,
//! [`GrpcNodeSource`], connects to the agent's Unix socket for every request,
//! so a restarted agent is picked up without restarting the console. Tests
//! may implement the trait themselves (see [`crate::fakes`]).

use std::error::Error as _;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use debvisor_api::client::{ConnectError, connect_unix};
use debvisor_api::health::v1::node_health_service_client::NodeHealthServiceClient;
use debvisor_api::health::v1::{ListRequest, NodeHealth};
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::node::v1::{GetStatusRequest, GetStatusResponse};
use tonic::transport::Channel;

/// How long the console waits for the agent before giving up on a page.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A boxed future, so that [`NodeSource`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the agent could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket could not be reached (agent down or restarting).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The agent answered the call with an error status.
    #[error("The agent refused the request: {}", .0.message())]
    Call(#[from] tonic::Status),
    /// The agent did not answer in time.
    #[error("The agent did not answer within {} s", AGENT_TIMEOUT.as_secs())]
    Timeout,
    /// This node source offers no gRPC channel (a fixed source in tests).
    #[error("This node source has no connection to an agent")]
    NoChannel,
}

impl AgentError {
    /// A one-line description for a page: the top message and, for
    /// connection failures, the operating system's reason (for example "No
    /// such file or directory"), without any debug output.
    pub fn summary(&self) -> String {
        match self {
            AgentError::Connect(e) => {
                let mut root: &dyn std::error::Error = e;
                while let Some(next) = root.source() {
                    root = next;
                }
                if std::ptr::addr_eq(root, e as &dyn std::error::Error) {
                    e.to_string()
                } else {
                    format!("{e}: {root}")
                }
            }
            other => other.to_string(),
        }
    }
}

/// Something that can tell the console the node's status.
pub trait NodeSource: Send + Sync + 'static {
    /// Fetches the current status of the node, on behalf of the signed-in
    /// `user` (None for the console's own requests).
    fn status<'a>(&'a self, user: Option<&'a str>) -> BoxFuture<'a, Result<GetStatusResponse, AgentError>>;

    /// Fetches the node's health (checks, boot gate, machine config state)
    /// on behalf of `user`.
    fn health<'a>(&'a self, user: Option<&'a str>) -> BoxFuture<'a, Result<NodeHealth, AgentError>>;

    /// A gRPC channel to the agent, for pages that call other services
    /// (units, audit...) with the generated clients. Wrap each request with
    /// [`on_behalf_of`] and bound unary calls with [`bounded`].
    fn channel(&self) -> BoxFuture<'_, Result<Channel, AgentError>> {
        Box::pin(async { Err(AgentError::NoChannel) })
    }
}

/// Metadata key naming the console user a request is made for. The agent
/// trusts it only from the console's own uid on its Unix socket and records
/// it in the audit log as `console:USER`.
pub const ON_BEHALF_OF: &str = "x-debvisor-user";

/// Wraps `msg` in a request that names the console user it is made for.
pub fn on_behalf_of<T>(msg: T, user: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(v) = user.and_then(|u| tonic::metadata::MetadataValue::try_from(u).ok()) {
        req.metadata_mut().insert(ON_BEHALF_OF, v);
    }
    req
}

/// The production [`NodeSource`]: `debvisor.node.v1.NodeService/GetStatus`
/// over the agent's Unix socket.
#[derive(Debug, Clone)]
pub struct GrpcNodeSource {
    socket: PathBuf,
}

impl GrpcNodeSource {
    /// A source that talks to the agent socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    async fn fetch(&self, user: Option<&str>) -> Result<GetStatusResponse, AgentError> {
        let channel = connect_unix(&self.socket).await?;
        let mut client = NodeServiceClient::new(channel);
        Ok(client
            .get_status(on_behalf_of(GetStatusRequest {}, user))
            .await?
            .into_inner())
    }

    async fn fetch_health(&self, user: Option<&str>) -> Result<NodeHealth, AgentError> {
        let channel = connect_unix(&self.socket).await?;
        let mut client = NodeHealthServiceClient::new(channel);
        let request = ListRequest {
            include_history: false,
            kind: String::new(),
        };
        Ok(client.list(on_behalf_of(request, user)).await?.into_inner())
    }
}

/// Runs `call` with the console's agent timeout and logs a failure.
pub async fn bounded<T>(what: &str, call: impl Future<Output = Result<T, AgentError>>) -> Result<T, AgentError> {
    let result = tokio::time::timeout(AGENT_TIMEOUT, call)
        .await
        .unwrap_or(Err(AgentError::Timeout));
    if let Err(e) = &result {
        tracing::warn!(error = %e, cause = ?e.source().map(ToString::to_string), "agent {what} request failed");
    }
    result
}

impl NodeSource for GrpcNodeSource {
    fn status<'a>(&'a self, user: Option<&'a str>) -> BoxFuture<'a, Result<GetStatusResponse, AgentError>> {
        Box::pin(bounded("status", self.fetch(user)))
    }

    fn health<'a>(&'a self, user: Option<&'a str>) -> BoxFuture<'a, Result<NodeHealth, AgentError>> {
        Box::pin(bounded("health", self.fetch_health(user)))
    }

    fn channel(&self) -> BoxFuture<'_, Result<Channel, AgentError>> {
        Box::pin(async { Ok(connect_unix(&self.socket).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_reported_with_its_reason() {
        let source = GrpcNodeSource::new("/nonexistent/debvisor-test/agent.sock");
        let err = source.status(None).await.unwrap_err();
        let summary = err.summary();
        assert!(summary.contains("/nonexistent/debvisor-test/agent.sock"), "{summary}");
        assert!(summary.contains("No such file or directory"), "{summary}");
    }
}
