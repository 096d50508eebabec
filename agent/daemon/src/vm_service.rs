//! `debvisor.vm.v1.VmService` in the agent: it authenticates each caller,
//! records every change in the audit log (as `vm.*` on `vm:NAME`) and
//! forwards the call to the VM daemon, `debvisor-vmd`, which talks to
//! libvirt in its own process (see that crate for why).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use debvisor_api::vm::v1 as pb;
use debvisor_api::vm::v1::vm_service_client::VmServiceClient;
use debvisor_api::vm::v1::vm_service_server::VmService;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::audit_service::Auditor;
use crate::auth::Caller;

/// The VM daemon, reached over its socket when first asked (it may start
/// after the agent, and a restart of it is picked up by the next call).
#[derive(Debug, Clone)]
pub struct Vmd {
    socket: PathBuf,
    client: VmServiceClient<Channel>,
}

/// The largest answer taken from the VM daemon (a list of thousands of VMs).
const MAX_ANSWER_BYTES: usize = 64 << 20;

impl Vmd {
    /// The daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        let socket = socket.into();
        let channel = debvisor_api::client::unix_channel_lazy(&socket);
        Self {
            client: VmServiceClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES),
            socket,
        }
    }

    /// Where it listens.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// The VM service.
#[derive(Clone)]
pub struct VmApi {
    vmd: Option<Vmd>,
    audit: Auditor,
}

/// What UNAVAILABLE says when this agent manages no VMs.
pub const NO_VMS: &str = "This agent manages no VMs (it was started without a hypervisor)";

impl VmApi {
    /// The service forwarding to `vmd` (`None`: every call is UNAVAILABLE).
    pub fn new(vmd: Option<Vmd>, audit: Auditor) -> Self {
        Self { vmd, audit }
    }

    /// Sends `msg` to the daemon with `call`; a daemon that cannot be
    /// reached is UNAVAILABLE with what to check.
    async fn forward<Q, R, F>(
        &self,
        msg: Q,
        call: impl FnOnce(VmServiceClient<Channel>, Request<Q>) -> F,
    ) -> Result<R, Status>
    where
        F: Future<Output = Result<Response<R>, Status>>,
    {
        let vmd = self.vmd.as_ref().ok_or_else(|| Status::unavailable(NO_VMS))?;
        call(vmd.client.clone(), Request::new(msg))
            .await
            .map(Response::into_inner)
            .map_err(|s| {
                // A status the daemon sent has no source; one made here from a
                // failed connection has.
                if std::error::Error::source(&s).is_some() {
                    Status::unavailable(format!(
                        "The VM daemon does not answer on {}: {}. Is it running (systemctl status debvisor-vmd)?",
                        vmd.socket.display(),
                        crate::error_chain(&s)
                    ))
                } else {
                    s
                }
            })
    }

    /// A read: the caller is checked, nothing is recorded.
    async fn read<Q, R, F>(
        &self,
        req: Request<Q>,
        call: impl FnOnce(VmServiceClient<Channel>, Request<Q>) -> F,
    ) -> Result<Response<R>, Status>
    where
        F: Future<Output = Result<Response<R>, Status>>,
    {
        Caller::of(&req)?;
        self.forward(req.into_inner(), call).await.map(Response::new)
    }

    /// A change: forwarded and recorded as `action` on the target
    /// `target` names in the request.
    async fn change<Q, R, F>(
        &self,
        req: Request<Q>,
        action: &str,
        target: impl FnOnce(&Q) -> String,
        call: impl FnOnce(VmServiceClient<Channel>, Request<Q>) -> F,
    ) -> Result<Response<R>, Status>
    where
        F: Future<Output = Result<Response<R>, Status>>,
    {
        let caller = Caller::of(&req)?;
        let msg = req.into_inner();
        let target = target(&msg);
        self.audit
            .audited(&caller, action, &target, self.forward(msg, call))
            .await
    }
}

/// The start of a console or display stream: its caller, its target
/// (`vm:NAME`, from the first message) and the input for the daemon (the
/// first message, then the rest until the caller closes its side).
async fn open_pipe(
    req: Request<Streaming<pb::ConsoleInput>>,
) -> Result<(Caller, String, impl Stream<Item = pb::ConsoleInput> + Send + 'static), Status> {
    let caller = Caller::of(&req)?;
    let mut input = req.into_inner();
    let first = input
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("name: the stream ended before naming a VM"))?;
    let target = format!("vm:{}", first.name);
    Ok((
        caller,
        target,
        tokio_stream::once(first).chain(input.map_while(Result::ok)),
    ))
}

fn vm(r: &pb::VmRef) -> String {
    format!("vm:{}", r.name)
}

fn snapshot(r: &pb::SnapshotRef) -> String {
    format!("vm:{}/snapshot:{}", r.name, r.snapshot)
}

/// A stream of VM events.
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::VmEvent, Status>> + Send>>;

/// A serial console's output.
type ConsoleStream = Pin<Box<dyn Stream<Item = Result<pb::ConsoleOutput, Status>> + Send>>;

#[tonic::async_trait]
impl VmService for VmApi {
    async fn list_vms(&self, req: Request<pb::ListVmsRequest>) -> Result<Response<pb::ListVmsResponse>, Status> {
        self.read(req, |mut c, r| async move { c.list_vms(r).await }).await
    }

    type WatchVmsStream = EventStream;

    async fn watch_vms(&self, req: Request<pb::WatchVmsRequest>) -> Result<Response<EventStream>, Status> {
        // The daemon's stream is passed on as it is; when the watcher goes,
        // dropping it ends the daemon's side too.
        let events = self.read(req, |mut c, r| async move { c.watch_vms(r).await }).await?;
        Ok(Response::new(Box::pin(events.into_inner())))
    }

    async fn get_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.read(req, |mut c, r| async move { c.get_vm(r).await }).await
    }

    async fn create_vm(&self, req: Request<pb::CreateVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let target = |r: &pb::CreateVmRequest| format!("vm:{}", r.spec.as_ref().map_or("", |s| s.name.as_str()));
        self.change(req, "vm.create", target, |mut c, r| async move { c.create_vm(r).await })
            .await
    }

    async fn start_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.change(req, "vm.start", vm, |mut c, r| async move { c.start_vm(r).await })
            .await
    }

    async fn shutdown_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.change(req, "vm.shutdown", vm, |mut c, r| async move { c.shutdown_vm(r).await })
            .await
    }

    async fn stop_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.change(req, "vm.stop", vm, |mut c, r| async move { c.stop_vm(r).await })
            .await
    }

    async fn reboot_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.change(req, "vm.reboot", vm, |mut c, r| async move { c.reboot_vm(r).await })
            .await
    }

    async fn suspend_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.change(req, "vm.suspend", vm, |mut c, r| async move { c.suspend_vm(r).await })
            .await
    }

    async fn resume_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.change(req, "vm.resume", vm, |mut c, r| async move { c.resume_vm(r).await })
            .await
    }

    async fn set_autostart(&self, req: Request<pb::SetAutostartRequest>) -> Result<Response<pb::Vm>, Status> {
        let target = |r: &pb::SetAutostartRequest| format!("vm:{}", r.name);
        self.change(req, "vm.autostart", target, |mut c, r| async move {
            c.set_autostart(r).await
        })
        .await
    }

    async fn delete_vm(&self, req: Request<pb::DeleteVmRequest>) -> Result<Response<pb::DeleteVmResponse>, Status> {
        let target = |r: &pb::DeleteVmRequest| format!("vm:{}", r.name);
        self.change(req, "vm.delete", target, |mut c, r| async move { c.delete_vm(r).await })
            .await
    }

    async fn clone_vm(&self, req: Request<pb::CloneVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let target = |r: &pb::CloneVmRequest| format!("vm:{}", r.new_name);
        self.change(req, "vm.clone", target, |mut c, r| async move { c.clone_vm(r).await })
            .await
    }

    async fn create_snapshot(&self, req: Request<pb::CreateSnapshotRequest>) -> Result<Response<pb::Snapshot>, Status> {
        let target = |r: &pb::CreateSnapshotRequest| format!("vm:{}/snapshot:{}", r.name, r.snapshot);
        self.change(req, "vm.snapshot.create", target, |mut c, r| async move {
            c.create_snapshot(r).await
        })
        .await
    }

    async fn list_snapshots(&self, req: Request<pb::VmRef>) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        self.read(req, |mut c, r| async move { c.list_snapshots(r).await })
            .await
    }

    async fn revert_snapshot(&self, req: Request<pb::SnapshotRef>) -> Result<Response<pb::Vm>, Status> {
        self.change(req, "vm.snapshot.revert", snapshot, |mut c, r| async move {
            c.revert_snapshot(r).await
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        self.change(req, "vm.snapshot.delete", snapshot, |mut c, r| async move {
            c.delete_snapshot(r).await
        })
        .await
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        self.read(req, |mut c, r| async move { c.list_volumes(r).await }).await
    }

    type OpenConsoleStream = ConsoleStream;

    async fn open_console(&self, req: Request<Streaming<pb::ConsoleInput>>) -> Result<Response<ConsoleStream>, Status> {
        let (caller, target, keys) = open_pipe(req).await?;
        let call = self.forward(keys, |mut c, r| async move { c.open_console(r).await });
        let output = self.audit.audited(&caller, "vm.console", &target, call).await?;
        Ok(Response::new(Box::pin(output.into_inner())))
    }

    type OpenDisplayStream = ConsoleStream;

    async fn open_display(&self, req: Request<Streaming<pb::ConsoleInput>>) -> Result<Response<ConsoleStream>, Status> {
        let (caller, target, keys) = open_pipe(req).await?;
        let call = self.forward(keys, |mut c, r| async move { c.open_display(r).await });
        let output = self.audit.audited(&caller, "vm.display", &target, call).await?;
        Ok(Response::new(Box::pin(output.into_inner())))
    }
}
