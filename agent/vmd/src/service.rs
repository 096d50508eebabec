//! `debvisor.vm.v1.VmService` over the node's hypervisor (libvirt). Calls
//! run on blocking threads (libvirt's API blocks). Who may call, and the
//! audit record of each change, are the agent's business: it is the only
//! client of this service (the socket is root's alone).

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use debvisor_api::validate::SingleLineString;
use debvisor_api::vm::v1 as pb;
use debvisor_api::vm::v1::vm_service_server::VmService;
use debvisor_virt::{Hypervisor, Libvirt, LibvirtOptions, SnapshotName, VirtError, VmEvent, VmEventKind, VmName};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::console::{self, ConsoleStream};
use crate::display;

use crate::convert::{field, snapshot_to_pb, spec_from_pb, summary_to_pb, vm_to_pb};

/// The hypervisor, connected on first use and again after a failed
/// connection (libvirtd may start after the agent).
pub struct VmBackend {
    opts: LibvirtOptions,
    conn: Mutex<Option<Arc<dyn Hypervisor>>>,
    /// The hypervisor's lifecycle events, for every watcher.
    events: broadcast::Sender<VmEvent>,
}

/// Events a watcher may fall behind by before it is sent the VMs afresh.
const EVENT_BACKLOG: usize = 256;

impl VmBackend {
    /// A backend that connects with `opts` when first asked.
    pub fn new(opts: LibvirtOptions) -> Self {
        Self {
            opts,
            conn: Mutex::new(None),
            events: broadcast::channel(EVENT_BACKLOG).0,
        }
    }

    /// A backend over `hv` (tests).
    pub fn with(hv: Arc<dyn Hypervisor>, opts: LibvirtOptions) -> Self {
        let b = Self::new(opts);
        b.forward_events(hv.as_ref());
        *b.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(hv);
        b
    }

    /// Passes `hv`'s events on to the watchers.
    fn forward_events(&self, hv: &dyn Hypervisor) {
        let tx = self.events.clone();
        hv.subscribe(Box::new(move |e| {
            // No watcher is not an error.
            let _ = tx.send(e.clone());
        }));
    }

    /// The connection, opened now if there is none. Blocks (libvirt's
    /// connect does): call it on a blocking thread.
    fn get(&self) -> Result<Arc<dyn Hypervisor>, Status> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        match &*conn {
            Some(hv) if hv.is_alive() => return Ok(hv.clone()),
            Some(_) => tracing::warn!(uri = %self.opts.uri, "the libvirt connection was lost; connecting again"),
            None => {}
        }
        let hv: Arc<dyn Hypervisor> = Arc::new(Libvirt::open(self.opts.clone()).map_err(|e| {
            Status::unavailable(format!(
                "{e}. Is libvirtd running (systemctl status libvirtd), and does storage pool {:?} exist?",
                self.opts.pool
            ))
        })?);
        self.forward_events(hv.as_ref());
        *conn = Some(hv.clone());
        Ok(hv)
    }
}

/// The VM service.
#[derive(Clone)]
pub struct VmServer {
    backend: Arc<VmBackend>,
}

impl VmServer {
    /// The service over `backend`.
    pub fn new(backend: Arc<VmBackend>) -> Self {
        Self { backend }
    }

    /// Runs `f` on the hypervisor on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, VirtError> + Send + 'static,
    ) -> Result<T, Status> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || f(backend.get()?.as_ref()).map_err(virt_status))
            .await
            .map_err(|e| Status::internal(format!("The VM operation did not finish: {e}")))?
    }

    /// A lifecycle action on the VM `raw`, answered with the VM afterwards.
    async fn act(
        &self,
        req: Request<pb::VmRef>,
        f: fn(&dyn Hypervisor, &VmName) -> Result<(), VirtError>,
    ) -> Result<Response<pb::Vm>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        self.run(move |hv| {
            f(hv, &name)?;
            hv.get(&name)
        })
        .await
        .map(|v| Response::new(vm_to_pb(v)))
    }
}

impl VmServer {
    /// The start of a console or display stream: its first message (which
    /// names the VM), the rest of the input, and the lifecycle events from
    /// now on (subscribed before the stream opens, so that a stop right
    /// after is seen).
    async fn open_stream(
        &self,
        req: Request<Streaming<pb::ConsoleInput>>,
    ) -> Result<
        (
            VmName,
            pb::ConsoleInput,
            Streaming<pb::ConsoleInput>,
            broadcast::Receiver<VmEvent>,
        ),
        Status,
    > {
        let mut input = req.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("name: the stream ended before naming a VM"))?;
        console::check_input(&first)?;
        let name = vm_name("name", &first.name)?;
        self.run(|_| Ok(())).await?;
        Ok((name, first, input, self.backend.events.subscribe()))
    }
}

/// A stream of VM events.
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::VmEvent, Status>> + Send>>;

impl VmServer {
    /// Sends a "present" event for every VM (or the one `only` names);
    /// false once the watcher is gone or the list failed (it was told).
    async fn send_present(&self, tx: &mpsc::Sender<Result<pb::VmEvent, Status>>, only: Option<&VmName>) -> bool {
        let vms = match self.run(|hv| hv.list()).await {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return false;
            }
        };
        for v in vms.into_iter().filter(|v| only.is_none_or(|n| n.as_str() == v.name)) {
            let e = pb::VmEvent {
                name: v.name.clone(),
                event: "present".into(),
                detail: String::new(),
                vm: Some(summary_to_pb(v)),
            };
            if tx.send(Ok(e)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The wire form of `e`, with the VM as it is now.
    async fn event_to_pb(&self, e: VmEvent) -> pb::VmEvent {
        let vm = match (e.kind, VmName::try_from(e.name.as_str())) {
            (VmEventKind::Undefined, _) | (_, Err(_)) => None,
            (_, Ok(name)) => self.run(move |hv| hv.info(&name)).await.ok().map(summary_to_pb),
        };
        pb::VmEvent {
            name: e.name,
            event: e.kind.as_str().into(),
            detail: e.detail.into(),
            vm,
        }
    }
}

#[tonic::async_trait]
impl VmService for VmServer {
    async fn list_vms(&self, _req: Request<pb::ListVmsRequest>) -> Result<Response<pb::ListVmsResponse>, Status> {
        let vms = self.run(|hv| hv.list()).await?;
        Ok(Response::new(pb::ListVmsResponse {
            vms: vms.into_iter().map(summary_to_pb).collect(),
        }))
    }

    type WatchVmsStream = EventStream;

    async fn watch_vms(&self, req: Request<pb::WatchVmsRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let only = match r.name.as_str() {
            "" => None,
            n => Some(vm_name("name", n)?),
        };
        // Connected first (events flow from the connection on), subscribed
        // before the VMs are read, so nothing falls between the two.
        self.run(|_| Ok(())).await?;
        let mut events = self.backend.events.subscribe();
        let api = self.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            if r.initial && !api.send_present(&tx, only.as_ref()).await {
                return;
            }
            loop {
                let e = tokio::select! {
                    e = events.recv() => e,
                    _ = tx.closed() => return,
                };
                match e {
                    Ok(e) if only.as_ref().is_none_or(|n| n.as_str() == e.name) => {
                        if tx.send(Ok(api.event_to_pb(e).await)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // The events held back are stale: skip them, say
                        // so, then send the VMs as they are.
                        events = events.resubscribe();
                        let resync = pb::VmEvent {
                            event: "resync".into(),
                            ..Default::default()
                        };
                        if tx.send(Ok(resync)).await.is_err() || !api.send_present(&tx, only.as_ref()).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let vm = self.run(move |hv| hv.get(&name)).await?;
        Ok(Response::new(vm_to_pb(vm)))
    }

    async fn create_vm(&self, req: Request<pb::CreateVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let spec = req.into_inner().spec.unwrap_or_default();
        let spec = spec_from_pb(&spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.run(move |hv| hv.create(&spec))
            .await
            .map(vm_to_pb)
            .map(Response::new)
    }

    async fn start_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.act(req, |hv, n| hv.start(n)).await
    }

    async fn shutdown_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.act(req, |hv, n| hv.shutdown(n)).await
    }

    async fn stop_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.act(req, |hv, n| hv.stop(n)).await
    }

    async fn reboot_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.act(req, |hv, n| hv.reboot(n)).await
    }

    async fn suspend_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.act(req, |hv, n| hv.suspend(n)).await
    }

    async fn resume_vm(&self, req: Request<pb::VmRef>) -> Result<Response<pb::Vm>, Status> {
        self.act(req, |hv, n| hv.resume(n)).await
    }

    async fn set_autostart(&self, req: Request<pb::SetAutostartRequest>) -> Result<Response<pb::Vm>, Status> {
        let r = req.into_inner();
        let name = vm_name("name", &r.name)?;
        let on = r.autostart;
        self.run(move |hv| {
            hv.set_autostart(&name, on)?;
            hv.get(&name)
        })
        .await
        .map(vm_to_pb)
        .map(Response::new)
    }

    async fn delete_vm(&self, req: Request<pb::DeleteVmRequest>) -> Result<Response<pb::DeleteVmResponse>, Status> {
        let r = req.into_inner();
        let name = vm_name("name", &r.name)?;
        let disks = r.delete_disks;
        self.run(move |hv| hv.delete(&name, disks)).await?;
        Ok(Response::new(pb::DeleteVmResponse {}))
    }

    async fn clone_vm(&self, req: Request<pb::CloneVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let r = req.into_inner();
        let from = vm_name("name", &r.name)?;
        let to = vm_name("new_name", &r.new_name)?;
        self.run(move |hv| hv.clone_vm(&from, &to))
            .await
            .map(vm_to_pb)
            .map(Response::new)
    }

    async fn create_snapshot(&self, req: Request<pb::CreateSnapshotRequest>) -> Result<Response<pb::Snapshot>, Status> {
        let r = req.into_inner();
        let name = vm_name("name", &r.name)?;
        let snap = snapshot_name(&r.snapshot)?;
        let description = SingleLineString::<1024>::try_from(r.description.as_str())
            .map_err(|e| Status::invalid_argument(format!("description: {e}")))?;
        self.run(move |hv| hv.snapshot_create(&name, &snap, description.as_str()))
            .await
            .map(snapshot_to_pb)
            .map(Response::new)
    }

    async fn list_snapshots(&self, req: Request<pb::VmRef>) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let name = vm_name("name", &req.into_inner().name)?;
        let snaps = self.run(move |hv| hv.snapshot_list(&name)).await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: snaps.into_iter().map(snapshot_to_pb).collect(),
        }))
    }

    async fn revert_snapshot(&self, req: Request<pb::SnapshotRef>) -> Result<Response<pb::Vm>, Status> {
        let r = req.into_inner();
        let name = vm_name("name", &r.name)?;
        let snap = snapshot_name(&r.snapshot)?;
        self.run(move |hv| {
            hv.snapshot_revert(&name, &snap)?;
            hv.get(&name)
        })
        .await
        .map(vm_to_pb)
        .map(Response::new)
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let r = req.into_inner();
        let name = vm_name("name", &r.name)?;
        let snap = snapshot_name(&r.snapshot)?;
        self.run(move |hv| hv.snapshot_delete(&name, &snap)).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    type OpenConsoleStream = ConsoleStream;

    async fn open_console(&self, req: Request<Streaming<pb::ConsoleInput>>) -> Result<Response<ConsoleStream>, Status> {
        let (name, first, input, events) = self.open_stream(req).await?;
        let n = name.clone();
        let con = self.run(move |hv| hv.console(&n)).await?;
        console::bridge(name, con, first, input, events).map(Response::new)
    }

    type OpenDisplayStream = ConsoleStream;

    async fn open_display(&self, req: Request<Streaming<pb::ConsoleInput>>) -> Result<Response<ConsoleStream>, Status> {
        let (name, first, input, events) = self.open_stream(req).await?;
        let n = name.clone();
        let vm = self.run(move |hv| hv.get(&n)).await?;
        if !vm.info.state.is_active() {
            return Err(Status::failed_precondition(format!(
                "{name} is {}: start it to reach its display",
                vm.info.state.as_str()
            )));
        }
        let port = vm.vnc_port.ok_or_else(|| {
            Status::failed_precondition(format!(
                "{name} has no VNC display (this hypervisor gives it none); use its serial console"
            ))
        })?;
        display::bridge(name, port, first, input, events)
            .await
            .map(Response::new)
    }

    async fn list_volumes(
        &self,
        _req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let vols = self.run(|hv| hv.volumes()).await?;
        Ok(Response::new(pb::ListVolumesResponse {
            volumes: vols
                .into_iter()
                .map(|v| pb::Volume {
                    name: v.name,
                    path: v.path,
                    capacity_bytes: v.capacity,
                    allocation_bytes: v.allocation,
                })
                .collect(),
        }))
    }
}

/// Every VM error to its status, in one place.
pub(crate) fn virt_status(e: VirtError) -> Status {
    let msg = e.to_string();
    match e {
        VirtError::Invalid(_) => Status::invalid_argument(msg),
        VirtError::NotFound(_) => Status::not_found(msg),
        VirtError::Exists(_) => Status::already_exists(msg),
        VirtError::WrongState(_) | VirtError::Insufficient(_) => Status::failed_precondition(msg),
        VirtError::Events(_) => Status::unavailable(msg),
        VirtError::Libvirt { .. } => Status::internal(msg),
    }
}

fn vm_name(f: &str, raw: &str) -> Result<VmName, Status> {
    field(f, VmName::try_from(raw)).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn snapshot_name(raw: &str) -> Result<SnapshotName, Status> {
    field("snapshot", SnapshotName::try_from(raw)).map_err(|e| Status::invalid_argument(e.to_string()))
}
