//! `debvisor.node.v1.NodeService` over any [`HostFacts`].

use std::sync::Arc;

use debvisor_api::node::v1::node_service_server::NodeService;
use debvisor_api::node::v1::{GetStatusRequest, GetStatusResponse};
use tonic::{Request, Response, Status};

use crate::host::{HostError, HostFacts};

/// The node service: answers from whichever host backend it was given.
#[derive(Clone)]
pub struct NodeApi {
    host: Arc<dyn HostFacts>,
}

impl NodeApi {
    /// A node service reading from `host`.
    pub fn new(host: Arc<dyn HostFacts>) -> Self {
        Self { host }
    }
}

impl From<HostError> for Status {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Read { .. } | HostError::Parse { .. } => Status::unavailable(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn get_status(&self, _req: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        let host = self.host.clone();
        let status = tokio::task::spawn_blocking(move || host.status())
            .await
            .map_err(|e| Status::internal(format!("Status task failed: {e}")))??;
        Ok(Response::new(status))
    }
}
