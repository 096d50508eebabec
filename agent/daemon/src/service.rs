//! `debvisor.node.v1.NodeService`: status from the host sampler, a stream of
//! status deltas, and reboot/shutdown through systemd.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use debvisor_api::node::v1::node_service_server::NodeService;
use debvisor_api::node::v1::{
    GetStatusRequest, GetStatusResponse, PowerRequest, PowerResponse, StatusDelta, WatchStatusRequest,
};
use debvisor_api::validate::SingleLineString;
use debvisor_systemd::Units;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::audit_service::Auditor;
use crate::auth::Caller;
use crate::host::HostError;
use crate::status::{self, StatusCache};

/// The node service.
#[derive(Clone)]
pub struct NodeApi {
    status: Arc<StatusCache>,
    units: Arc<dyn Units>,
    audit: Auditor,
}

impl NodeApi {
    /// A node service over the status sampler, systemd and the audit log.
    pub fn new(status: Arc<StatusCache>, units: Arc<dyn Units>, audit: Auditor) -> Self {
        Self { status, units, audit }
    }

    async fn power(&self, req: Request<PowerRequest>, action: &str, target: &str) -> Result<PowerResponse, Status> {
        let caller = Caller::of(&req)?;
        let reason = req.into_inner().reason;
        let checked = SingleLineString::<200>::try_from(reason.as_str())
            .map_err(|e| Status::invalid_argument(format!("reason: {e}")));
        let result = match checked {
            Err(e) => Err(e),
            Ok(_) => {
                tracing::warn!(actor = %caller.actor, reason, "{action} requested");
                let done = if target == "reboot.target" {
                    self.units.reboot().await
                } else {
                    self.units.poweroff().await
                };
                done.map(|()| PowerResponse { target: target.into() })
                    .map_err(crate::units_service::units_status)
            }
        };
        let audit_target = if reason.is_empty() {
            String::new()
        } else {
            format!("reason: {reason}")
        };
        self.audit.record(&caller, action, &audit_target, result).await
    }
}

impl From<HostError> for Status {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Read { .. } | HostError::Parse { .. } | HostError::Task(_) => Status::unavailable(e.to_string()),
        }
    }
}

type DeltaStream = Pin<Box<dyn Stream<Item = Result<StatusDelta, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn get_status(&self, _req: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        let s = self.status.get().await?;
        Ok(Response::new(GetStatusResponse::clone(&s)))
    }

    type WatchStatusStream = DeltaStream;

    async fn watch_status(&self, req: Request<WatchStatusRequest>) -> Result<Response<DeltaStream>, Status> {
        let ms = match req.into_inner().interval_ms {
            0 => 1000,
            ms => ms.max(250),
        };
        let first = self.status.get().await?;
        let cache = self.status.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            if tx.send(Ok(status::full(&first))).await.is_err() {
                return;
            }
            let mut last = first;
            let mut tick = tokio::time::interval(Duration::from_millis(u64::from(ms)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tx.closed() => return,
                }
                let next = match cache.get().await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                if let Some(d) = status::delta(&last, &next)
                    && tx.send(Ok(d)).await.is_err()
                {
                    return;
                }
                last = next;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn reboot(&self, req: Request<PowerRequest>) -> Result<Response<PowerResponse>, Status> {
        self.power(req, "node.Reboot", "reboot.target").await.map(Response::new)
    }

    async fn shutdown(&self, req: Request<PowerRequest>) -> Result<Response<PowerResponse>, Status> {
        self.power(req, "node.Shutdown", "poweroff.target")
            .await
            .map(Response::new)
    }
}
