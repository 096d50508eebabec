//! `debvisor.vm.v1.VmService` over the node's hypervisor (libvirt). Calls
//! run on blocking threads (libvirt's API blocks). Who may call, and the
//! audit record of each change, are the agent's business: it is the only
//! client of this service (the socket is root's alone).

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use debvisor_api::validate::SingleLineString;
use debvisor_api::vm::v1 as pb;
use debvisor_api::vm::v1::vm_service_server::VmService;
use debvisor_virt::{
    BootDevice, BridgeName, DiskSource, DiskSpec, Firmware, Hypervisor, Libvirt, LibvirtOptions, MacAddr, NetworkKind,
    NicSpec, SnapshotInfo, SnapshotName, SpecError, VirtError, VmDetail, VmEvent, VmEventKind, VmInfo, VmName, VmSpec,
    VmState, VolumeName,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

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
fn virt_status(e: VirtError) -> Status {
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

fn field<T>(field: &str, r: Result<T, SpecError>) -> Result<T, SpecError> {
    r.map_err(|e| e.under(field))
}

fn vm_name(f: &str, raw: &str) -> Result<VmName, Status> {
    field(f, VmName::try_from(raw)).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn snapshot_name(raw: &str) -> Result<SnapshotName, Status> {
    field("snapshot", SnapshotName::try_from(raw)).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The typed spec of a request's spec; the error names the field.
pub fn spec_from_pb(s: &pb::VmSpec) -> Result<VmSpec, SpecError> {
    let mut disks = Vec::new();
    for (i, d) in s.disks.iter().enumerate() {
        let at = format!("disks[{i}]");
        let source = match &d.source {
            Some(pb::disk_spec::Source::NewSizeMib(size_mib)) => DiskSource::New { size_mib: *size_mib },
            Some(pb::disk_spec::Source::ImportVolume(v)) => DiskSource::Import {
                volume: field(&format!("{at}.import_volume"), VolumeName::try_from(v.as_str()))?,
            },
            Some(pb::disk_spec::Source::IsoVolume(v)) => DiskSource::Iso {
                volume: field(&format!("{at}.iso_volume"), VolumeName::try_from(v.as_str()))?,
            },
            None => {
                return Err(SpecError::new(
                    at,
                    "set one of new_size_mib, import_volume or iso_volume",
                ));
            }
        };
        disks.push(DiskSpec { source });
    }
    let mut nics = Vec::new();
    for (i, n) in s.nics.iter().enumerate() {
        let at = format!("nics[{i}]");
        let network = if n.bridge.is_empty() {
            NetworkKind::Nat
        } else {
            NetworkKind::Bridge(field(&format!("{at}.bridge"), BridgeName::try_from(n.bridge.as_str()))?)
        };
        let vlan = match n.vlan {
            0 => None,
            v => Some(
                u16::try_from(v)
                    .map_err(|_| SpecError::new(format!("{at}.vlan"), format!("{v} is not a VLAN id: give 1-4094")))?,
            ),
        };
        let mac = if n.mac.is_empty() {
            None
        } else {
            Some(field(&format!("{at}.mac"), MacAddr::try_from(n.mac.as_str()))?)
        };
        nics.push(NicSpec { network, vlan, mac });
    }
    let mut boot = Vec::new();
    for (i, b) in s.boot.iter().enumerate() {
        boot.push(match pb::BootDevice::try_from(*b) {
            Ok(pb::BootDevice::Disk) => BootDevice::Disk,
            Ok(pb::BootDevice::Cdrom) => BootDevice::Cdrom,
            Ok(pb::BootDevice::Network) => BootDevice::Network,
            _ => {
                return Err(SpecError::new(
                    format!("boot[{i}]"),
                    format!("{b} is not a boot device: give DISK, CDROM or NETWORK"),
                ));
            }
        });
    }
    let firmware = match pb::Firmware::try_from(s.firmware) {
        Ok(pb::Firmware::Unspecified | pb::Firmware::Bios) => Firmware::Bios,
        Ok(pb::Firmware::Uefi) => Firmware::Uefi,
        Err(_) => {
            return Err(SpecError::new(
                "firmware",
                format!("{} is not a firmware: give BIOS or UEFI", s.firmware),
            ));
        }
    };
    let spec = VmSpec {
        name: field("name", VmName::try_from(s.name.as_str()))?,
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        firmware,
        disks,
        nics,
        boot,
        autostart: s.autostart,
    };
    spec.validate()?;
    Ok(spec)
}

fn state_to_pb(s: VmState) -> pb::VmState {
    match s {
        VmState::Running => pb::VmState::Running,
        VmState::Blocked => pb::VmState::Blocked,
        VmState::Paused => pb::VmState::Paused,
        VmState::ShuttingDown => pb::VmState::ShuttingDown,
        VmState::Shutoff => pb::VmState::Shutoff,
        VmState::Crashed => pb::VmState::Crashed,
        VmState::PmSuspended => pb::VmState::PmSuspended,
        VmState::Unknown => pb::VmState::Unspecified,
    }
}

fn summary_to_pb(v: VmInfo) -> pb::VmSummary {
    pb::VmSummary {
        state: state_to_pb(v.state) as i32,
        state_text: v.state.as_str().to_string(),
        name: v.name,
        uuid: v.uuid,
        vcpus: v.vcpus,
        memory_mib: v.memory_mib,
        cpu_time_ns: v.cpu_time_ns,
        autostart: v.autostart,
    }
}

fn vm_to_pb(v: VmDetail) -> pb::Vm {
    pb::Vm {
        summary: Some(summary_to_pb(v.info)),
        uefi: v.uefi,
        disks: v
            .disks
            .into_iter()
            .map(|d| pb::VmDisk {
                target: d.target,
                path: d.path,
                cdrom: d.cdrom,
                capacity_bytes: d.capacity.unwrap_or(0),
            })
            .collect(),
        nics: v
            .nics
            .into_iter()
            .map(|n| pb::VmNic {
                mac: n.mac,
                network: n.network,
            })
            .collect(),
        boot: v.boot,
        vnc_port: v.vnc_port.map_or(0, u32::from),
    }
}

fn snapshot_to_pb(s: SnapshotInfo) -> pb::Snapshot {
    pb::Snapshot {
        name: s.name,
        description: s.description,
        created_unix: s.created,
        vm_state: s.state,
        current: s.current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> pb::VmSpec {
        pb::VmSpec {
            name: "web-1".into(),
            vcpus: 1,
            memory_mib: 256,
            disks: vec![pb::DiskSpec {
                source: Some(pb::disk_spec::Source::NewSizeMib(512)),
            }],
            nics: vec![pb::NicSpec::default()],
            ..Default::default()
        }
    }

    #[test]
    fn a_wire_spec_becomes_the_typed_one_or_names_its_field() {
        let s = spec_from_pb(&spec()).unwrap();
        assert_eq!(s.name.as_str(), "web-1");
        assert_eq!(s.nics[0].network, NetworkKind::Nat);
        let cases: Vec<(pb::VmSpec, &str)> = vec![
            (
                pb::VmSpec {
                    name: "../x".into(),
                    ..spec()
                },
                "name",
            ),
            (
                pb::VmSpec {
                    disks: vec![pb::DiskSpec { source: None }],
                    ..spec()
                },
                "disks[0]",
            ),
            (
                pb::VmSpec {
                    disks: vec![pb::DiskSpec {
                        source: Some(pb::disk_spec::Source::IsoVolume("/etc/passwd".into())),
                    }],
                    ..spec()
                },
                "disks[0].iso_volume",
            ),
            (
                pb::VmSpec {
                    nics: vec![pb::NicSpec {
                        bridge: "br0;rm".into(),
                        ..Default::default()
                    }],
                    ..spec()
                },
                "nics[0].bridge",
            ),
            (
                pb::VmSpec {
                    nics: vec![pb::NicSpec {
                        mac: "ff:ff:ff:ff:ff:ff".into(),
                        ..Default::default()
                    }],
                    ..spec()
                },
                "nics[0].mac",
            ),
            (
                pb::VmSpec {
                    nics: vec![pb::NicSpec {
                        bridge: "br0".into(),
                        vlan: 70000,
                        ..Default::default()
                    }],
                    ..spec()
                },
                "nics[0].vlan",
            ),
            (
                pb::VmSpec {
                    boot: vec![9],
                    ..spec()
                },
                "boot[0]",
            ),
            (pb::VmSpec { firmware: 7, ..spec() }, "firmware"),
            (pb::VmSpec { vcpus: 0, ..spec() }, "vcpus"),
        ];
        for (s, f) in cases {
            let e = spec_from_pb(&s).unwrap_err();
            assert_eq!(e.field, f, "{e}");
        }
    }
}
