//! [`Hypervisor`] over libvirt (the `virt` crate): a real libvirtd on a
//! node (`qemu:///system`), or libvirt's own test driver
//! (`test:///default`) for tests and the agent's simulation mode.

use std::sync::{Arc, Mutex};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::domain_snapshot::DomainSnapshot;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

use crate::console::Console;
use crate::error::VirtError;
use crate::events::{self, EventSink, Registration, Sinks};
use crate::hypervisor::{Hypervisor, SnapshotInfo, VmDetail, VmDisk, VmInfo, VmNic, VmState, VolumeInfo};
use crate::parse;
use crate::spec::{BootDevice, DiskSource, Firmware, NetworkKind, NicSpec, SnapshotName, VmName, VmSpec};
use crate::xml::{self, AttachedDisk, DomainHost};

const MIB: u64 = 1 << 20;

/// Where VMs live on this host.
#[derive(Debug, Clone)]
pub struct LibvirtOptions {
    /// The connection URI (`qemu:///system`, `test:///default`).
    pub uri: String,
    /// The storage pool holding disks, images and ISOs.
    pub pool: String,
    /// libvirt's NAT network.
    pub nat_network: String,
    /// The QEMU domain type: `kvm`, or `qemu` for TCG.
    pub qemu_domain_type: String,
}

/// A connection closed when dropped (`virt` 0.4's `Connect` is not).
pub(crate) struct Owned(pub(crate) Connect);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.close();
    }
}

impl std::ops::Deref for Owned {
    type Target = Connect;
    fn deref(&self) -> &Connect {
        &self.0
    }
}

/// libvirt, through one connection.
pub struct Libvirt {
    /// The lifecycle callback (dropped before the connection).
    _events: Registration,
    sinks: Arc<Sinks>,
    conn: Owned,
    opts: LibvirtOptions,
    host: DomainHost,
    /// Creating, cloning and deleting check, then change: one at a time.
    changes: Mutex<()>,
}

impl Libvirt {
    /// Connects to `opts.uri` and checks that the pool exists.
    pub fn open(opts: LibvirtOptions) -> Result<Libvirt, VirtError> {
        // libvirt's default handler prints every error to stderr; the
        // errors are returned instead.
        virt::error::clear_error_callback();
        events::start_event_loop()?;
        let conn = Owned(
            Connect::open(Some(&opts.uri))
                .map_err(|e| VirtError::libvirt(format!("Connecting to libvirt at {}", opts.uri), &e))?,
        );
        let kind = conn
            .get_type()
            .map_err(|e| VirtError::libvirt("Asking libvirt for its driver", &e))?;
        let domain_type = if kind.eq_ignore_ascii_case("test") {
            "test".to_string()
        } else {
            opts.qemu_domain_type.clone()
        };
        let sinks = Arc::new(Sinks::default());
        let lv = Libvirt {
            _events: Registration::lifecycle(&conn, sinks.clone())?,
            sinks,
            host: DomainHost {
                domain_type,
                emulator: None,
                nat_network: opts.nat_network.clone(),
            },
            conn,
            opts,
            changes: Mutex::new(()),
        };
        lv.pool()?;
        Ok(lv)
    }

    fn pool(&self) -> Result<StoragePool, VirtError> {
        let pool = StoragePool::lookup_by_name(&self.conn, &self.opts.pool).map_err(|e| {
            VirtError::libvirt(
                format!(
                    "The VM storage pool {:?} (define it, or set the pool in the agent config)",
                    self.opts.pool
                ),
                &e,
            )
        })?;
        if !pool.is_active().unwrap_or(false) {
            pool.create(0)
                .map_err(|e| VirtError::libvirt(format!("Starting storage pool {}", self.opts.pool), &e))?;
        }
        Ok(pool)
    }

    fn domain(&self, name: &VmName) -> Result<Domain, VirtError> {
        Domain::lookup_by_name(&self.conn, name.as_str()).map_err(|e| match VirtError::libvirt("", &e) {
            VirtError::NotFound(_) => VirtError::NotFound(format!("No VM is called {name}")),
            other => other,
        })
    }

    fn info(d: &Domain) -> Result<VmInfo, VirtError> {
        let name = d
            .get_name()
            .map_err(|e| VirtError::libvirt("Reading a VM's name", &e))?;
        let i = d
            .get_info()
            .map_err(|e| VirtError::libvirt(format!("Reading VM {name}"), &e))?;
        Ok(VmInfo {
            uuid: d.get_uuid_string().unwrap_or_default(),
            state: state(i.state),
            vcpus: i.nr_virt_cpu,
            // The current allocation (for the VMs made here, also the maximum).
            memory_mib: i.memory / 1024,
            max_memory_mib: i.max_mem / 1024,
            cpu_time_ns: i.cpu_time,
            autostart: d.get_autostart().unwrap_or(false),
            name,
        })
    }

    fn detail(&self, d: &Domain) -> Result<VmDetail, VirtError> {
        let info = Self::info(d)?;
        let text = d
            .get_xml_desc(0)
            .map_err(|e| VirtError::libvirt(format!("Reading VM {}", info.name), &e))?;
        let x = parse::domain(&text).map_err(|e| VirtError::Libvirt {
            op: format!("Reading VM {}", info.name),
            message: e,
        })?;
        let disks = x
            .disks
            .into_iter()
            .map(|d| VmDisk {
                capacity: StorageVol::lookup_by_path(&self.conn, &d.path)
                    .and_then(|v| v.get_info())
                    .ok()
                    .map(|i| i.capacity),
                target: d.target,
                path: d.path,
                cdrom: d.cdrom,
            })
            .collect();
        Ok(VmDetail {
            vnc_port: x.vnc_port.filter(|_| info.state.is_active()),
            info,
            uefi: x.uefi,
            disks,
            nics: x
                .nics
                .into_iter()
                .map(|n| VmNic {
                    mac: n.mac,
                    network: n.network,
                })
                .collect(),
            boot: x.boot,
        })
    }

    fn exists(&self, name: &VmName) -> Result<(), VirtError> {
        if Domain::lookup_by_name(&self.conn, name.as_str()).is_ok() {
            return Err(VirtError::Exists(format!(
                "A VM called {name} exists already: pick another name"
            )));
        }
        Ok(())
    }

    /// Checks memory and pool space for a VM of `memory_mib` with `need`
    /// bytes of new volumes.
    fn check_room(&self, pool: &StoragePool, memory_mib: u64, need: u64) -> Result<(), VirtError> {
        let free = self.free_memory()?;
        if memory_mib * MIB > free {
            return Err(VirtError::Insufficient(format!(
                "memory_mib: {memory_mib} MiB is more than the {} MiB of memory the host has free: lower it, or stop another VM first",
                free / MIB
            )));
        }
        let _ = pool.refresh(0);
        let available = pool
            .get_info()
            .map_err(|e| VirtError::libvirt(format!("Reading storage pool {}", self.opts.pool), &e))?
            .available;
        if need > available {
            return Err(VirtError::Insufficient(format!(
                "disks: the new disks need {} MiB and storage pool {} has {} MiB free: make them smaller, or delete unused volumes",
                need.div_ceil(MIB),
                self.opts.pool,
                available / MIB
            )));
        }
        Ok(())
    }

    /// The host's free memory in bytes: libvirt's figure, or (where the
    /// driver has none) its memory less what the running VMs have. The test
    /// driver's figure is not used: it is the node's KiB count given as
    /// bytes (`test:///default` claims 3 MiB free of 3 GiB).
    fn free_memory(&self) -> Result<u64, VirtError> {
        if self.host.domain_type != "test"
            && let Ok(free) = self.conn.get_free_memory()
        {
            return Ok(free);
        }
        let total = self
            .conn
            .get_node_info()
            .map_err(|e| VirtError::libvirt("Reading the host's memory", &e))?
            .memory
            * 1024;
        let used: u64 = self
            .list()?
            .iter()
            .filter(|v| v.state.is_active())
            .map(|v| v.memory_mib * MIB)
            .sum();
        Ok(total.saturating_sub(used))
    }

    fn source_volume(pool: &StoragePool, field: &str, name: &str) -> Result<StorageVol, VirtError> {
        StorageVol::lookup_by_name(pool, name).map_err(|_| {
            VirtError::Invalid(crate::spec::SpecError::new(
                field,
                format!("the storage pool has no volume {name:?}: upload it first, or pick one from the volume list"),
            ))
        })
    }

    /// Resolves the disks of `spec` against the pool (each source volume
    /// looked up once).
    fn plan_disks(pool: &StoragePool, spec: &VmSpec) -> Result<Vec<PlannedDisk>, VirtError> {
        let mut out = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            out.push(match &d.source {
                DiskSource::New { size_mib } => PlannedDisk::New { size_mib: *size_mib },
                DiskSource::Import { volume } => {
                    let src = Self::source_volume(pool, &format!("disks[{i}].import_volume"), volume.as_str())?;
                    let capacity = src.get_info().map(|i| i.capacity).unwrap_or(MIB);
                    PlannedDisk::Copy {
                        what: volume.to_string(),
                        src,
                        capacity,
                    }
                }
                DiskSource::Iso { volume } => {
                    let v = Self::source_volume(pool, &format!("disks[{i}].iso_volume"), volume.as_str())?;
                    let path = v
                        .get_path()
                        .map_err(|e| VirtError::libvirt(format!("Reading volume {volume}"), &e))?;
                    PlannedDisk::Attach { path }
                }
            });
        }
        Ok(out)
    }

    /// Makes the volumes of `plan` for VM `vm` (`VM-diskN.qcow2`), or
    /// removes what it made and fails.
    fn make_disks(pool: &StoragePool, vm: &VmName, plan: &[PlannedDisk]) -> Result<Vec<AttachedDisk>, VirtError> {
        let mut made: Vec<StorageVol> = Vec::new();
        let mut out = Vec::new();
        let result = (|| {
            let mut n = 0;
            for p in plan {
                let own = format!("{vm}-disk{n}.qcow2");
                let vol = match p {
                    PlannedDisk::Attach { path } => {
                        out.push(AttachedDisk {
                            path: path.clone(),
                            format: "raw".into(),
                            cdrom: true,
                        });
                        continue;
                    }
                    PlannedDisk::New { size_mib } => StorageVol::create_xml(pool, &xml::volume(&own, *size_mib), 0)
                        .map_err(|e| VirtError::libvirt(format!("Creating volume {own}"), &e))?,
                    PlannedDisk::Copy { what, src, capacity } => {
                        StorageVol::create_xml_from(pool, &xml::volume(&own, capacity.div_ceil(MIB)), src, 0)
                            .map_err(|e| VirtError::libvirt(format!("Copying {what} to {own}"), &e))?
                    }
                };
                n += 1;
                made.push(vol);
                let path = made
                    .last()
                    .unwrap()
                    .get_path()
                    .map_err(|e| VirtError::libvirt(format!("Reading volume {own}"), &e))?;
                out.push(AttachedDisk {
                    path,
                    format: "qcow2".into(),
                    cdrom: false,
                });
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                for v in made {
                    let _ = v.delete(0);
                }
                Err(e)
            }
        }
    }

    /// Defines the domain of `spec` on `disks`; removes the volumes it made
    /// if libvirt refuses.
    fn define(&self, spec: &VmSpec, disks: &[AttachedDisk]) -> Result<Domain, VirtError> {
        let text = xml::domain(spec, disks, &self.host);
        let defined = Domain::define_xml(&self.conn, &text)
            .map_err(|e| VirtError::libvirt(format!("Defining VM {}", spec.name), &e))
            .and_then(|d| {
                d.set_autostart(spec.autostart)
                    .map_err(|e| VirtError::libvirt(format!("Setting autostart of {}", spec.name), &e))?;
                Ok(d)
            });
        if defined.is_err() {
            for d in disks.iter().filter(|d| !d.cdrom) {
                if let Ok(v) = StorageVol::lookup_by_path(&self.conn, &d.path) {
                    let _ = v.delete(0);
                }
            }
        }
        defined
    }

    fn act(
        &self,
        name: &VmName,
        what: &str,
        allowed: impl Fn(VmState) -> Result<(), String>,
        f: impl Fn(&Domain) -> Result<(), virt::error::Error>,
    ) -> Result<(), VirtError> {
        let d = self.domain(name)?;
        let st = Self::info(&d)?.state;
        allowed(st).map_err(|why| VirtError::WrongState(format!("Cannot {what} {name}: {why}")))?;
        f(&d).map_err(|e| VirtError::libvirt(format!("{} {name}", capitalised(what)), &e))
    }

    fn snapshot(&self, d: &Domain, name: &VmName, snap: &SnapshotName) -> Result<DomainSnapshot, VirtError> {
        DomainSnapshot::lookup_by_name(d, snap.as_str(), 0).map_err(|e| match VirtError::libvirt("", &e) {
            VirtError::NotFound(_) => VirtError::NotFound(format!("VM {name} has no snapshot {snap}")),
            other => other,
        })
    }

    fn snapshot_info(s: &DomainSnapshot) -> Result<SnapshotInfo, VirtError> {
        let name = s.get_name().map_err(|e| VirtError::libvirt("Reading a snapshot", &e))?;
        let text = s
            .get_xml_desc(0)
            .map_err(|e| VirtError::libvirt(format!("Reading snapshot {name}"), &e))?;
        let x = parse::snapshot(&text).map_err(|e| VirtError::Libvirt {
            op: format!("Reading snapshot {name}"),
            message: e,
        })?;
        Ok(SnapshotInfo {
            current: s.is_current(0).unwrap_or(false),
            name,
            description: x.description,
            created: x.created,
            state: x.state,
        })
    }
}

/// A disk of a VM about to be made, its source already found.
enum PlannedDisk {
    /// A new empty qcow2 volume.
    New { size_mib: u64 },
    /// A copy of `src` (named `what` in errors) of `capacity` bytes.
    Copy {
        what: String,
        src: StorageVol,
        capacity: u64,
    },
    /// An existing image attached as is (a CD-ROM).
    Attach { path: String },
}

impl PlannedDisk {
    /// Bytes of pool space this disk takes.
    fn new_bytes(&self) -> u64 {
        match self {
            PlannedDisk::New { size_mib } => size_mib * MIB,
            PlannedDisk::Copy { capacity, .. } => *capacity,
            PlannedDisk::Attach { .. } => 0,
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn state(s: sys::virDomainState) -> VmState {
    match s {
        sys::VIR_DOMAIN_RUNNING => VmState::Running,
        sys::VIR_DOMAIN_BLOCKED => VmState::Blocked,
        sys::VIR_DOMAIN_PAUSED => VmState::Paused,
        sys::VIR_DOMAIN_SHUTDOWN => VmState::ShuttingDown,
        sys::VIR_DOMAIN_SHUTOFF => VmState::Shutoff,
        sys::VIR_DOMAIN_CRASHED => VmState::Crashed,
        sys::VIR_DOMAIN_PMSUSPENDED => VmState::PmSuspended,
        _ => VmState::Unknown,
    }
}

fn running(st: VmState) -> Result<(), String> {
    match st {
        VmState::Running | VmState::Blocked => Ok(()),
        other => Err(format!("it is {}, not running", other.as_str())),
    }
}

fn off(st: VmState) -> Result<(), String> {
    if st.is_active() {
        Err(format!("it is {}: shut it down or stop it first", st.as_str()))
    } else {
        Ok(())
    }
}

impl Hypervisor for Libvirt {
    fn subscribe(&self, sink: EventSink) {
        self.sinks.add(sink);
    }

    fn list(&self) -> Result<Vec<VmInfo>, VirtError> {
        let doms = self
            .conn
            .list_all_domains(0)
            .map_err(|e| VirtError::libvirt("Listing VMs", &e))?;
        let mut out = Vec::with_capacity(doms.len());
        for d in &doms {
            match Self::info(d) {
                Ok(i) => out.push(i),
                // Undefined between the list and the read.
                Err(VirtError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn get(&self, name: &VmName) -> Result<VmDetail, VirtError> {
        let d = self.domain(name)?;
        self.detail(&d)
    }

    fn info(&self, name: &VmName) -> Result<VmInfo, VirtError> {
        Self::info(&self.domain(name)?)
    }

    fn is_alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }

    fn create(&self, spec: &VmSpec) -> Result<VmDetail, VirtError> {
        spec.validate()?;
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        self.exists(&spec.name)?;
        let pool = self.pool()?;
        let plan = Self::plan_disks(&pool, spec)?;
        self.check_room(&pool, spec.memory_mib, plan.iter().map(PlannedDisk::new_bytes).sum())?;
        let disks = Self::make_disks(&pool, &spec.name, &plan)?;
        let d = self.define(spec, &disks)?;
        self.detail(&d)
    }

    fn start(&self, name: &VmName) -> Result<(), VirtError> {
        self.act(name, "start", off, |d| d.create().map(drop))
    }

    fn shutdown(&self, name: &VmName) -> Result<(), VirtError> {
        self.act(name, "shut down", running, |d| d.shutdown().map(drop))
    }

    fn stop(&self, name: &VmName) -> Result<(), VirtError> {
        self.act(
            name,
            "stop",
            |st| {
                if st.is_active() {
                    Ok(())
                } else {
                    Err(format!("it is {} already", st.as_str()))
                }
            },
            |d| d.destroy(),
        )
    }

    fn reboot(&self, name: &VmName) -> Result<(), VirtError> {
        self.act(name, "reboot", running, |d| d.reboot(0))
    }

    fn suspend(&self, name: &VmName) -> Result<(), VirtError> {
        self.act(name, "suspend", running, |d| d.suspend().map(drop))
    }

    fn resume(&self, name: &VmName) -> Result<(), VirtError> {
        self.act(
            name,
            "resume",
            |st| {
                if st == VmState::Paused {
                    Ok(())
                } else {
                    Err(format!("it is {}, not paused", st.as_str()))
                }
            },
            |d| d.resume().map(drop),
        )
    }

    fn set_autostart(&self, name: &VmName, on: bool) -> Result<(), VirtError> {
        let d = self.domain(name)?;
        d.set_autostart(on)
            .map(drop)
            .map_err(|e| VirtError::libvirt(format!("Setting autostart of {name}"), &e))
    }

    fn delete(&self, name: &VmName, disks: bool) -> Result<(), VirtError> {
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let d = self.domain(name)?;
        let detail = self.detail(&d)?;
        off(detail.info.state).map_err(|why| VirtError::WrongState(format!("Cannot delete {name}: {why}")))?;
        let mut flags = sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE;
        // The UEFI variable store goes too (the test driver has none).
        if detail.uefi && self.host.domain_type != "test" {
            flags |= sys::VIR_DOMAIN_UNDEFINE_NVRAM;
        }
        d.undefine_flags(flags)
            .map_err(|e| VirtError::libvirt(format!("Deleting VM {name}"), &e))?;
        if disks {
            for disk in detail.disks.iter().filter(|d| !d.cdrom) {
                if let Ok(v) = StorageVol::lookup_by_path(&self.conn, &disk.path) {
                    v.delete(0).map_err(|e| {
                        VirtError::libvirt(format!("VM {name} is deleted, but not its disk {}", disk.path), &e)
                    })?;
                }
            }
        }
        Ok(())
    }

    fn snapshot_create(
        &self,
        name: &VmName,
        snap: &SnapshotName,
        description: &str,
    ) -> Result<SnapshotInfo, VirtError> {
        let d = self.domain(name)?;
        if DomainSnapshot::lookup_by_name(&d, snap.as_str(), 0).is_ok() {
            return Err(VirtError::Exists(format!(
                "VM {name} has a snapshot called {snap} already: pick another name"
            )));
        }
        let s = DomainSnapshot::create_xml(&d, &xml::snapshot(snap, description), 0)
            .map_err(|e| VirtError::libvirt(format!("Taking snapshot {snap} of {name}"), &e))?;
        Self::snapshot_info(&s)
    }

    fn snapshot_list(&self, name: &VmName) -> Result<Vec<SnapshotInfo>, VirtError> {
        let d = self.domain(name)?;
        let snaps = d
            .list_all_snapshots(0)
            .map_err(|e| VirtError::libvirt(format!("Listing the snapshots of {name}"), &e))?;
        let mut out = snaps.iter().map(Self::snapshot_info).collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    fn snapshot_revert(&self, name: &VmName, snap: &SnapshotName) -> Result<(), VirtError> {
        let d = self.domain(name)?;
        self.snapshot(&d, name, snap)?
            .revert(0)
            .map_err(|e| VirtError::libvirt(format!("Reverting {name} to {snap}"), &e))
    }

    fn snapshot_delete(&self, name: &VmName, snap: &SnapshotName) -> Result<(), VirtError> {
        let d = self.domain(name)?;
        self.snapshot(&d, name, snap)?
            .delete(0)
            .map_err(|e| VirtError::libvirt(format!("Deleting snapshot {snap} of {name}"), &e))
    }

    fn clone_vm(&self, from: &VmName, to: &VmName) -> Result<VmDetail, VirtError> {
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let src = self.domain(from)?;
        let detail = self.detail(&src)?;
        off(detail.info.state).map_err(|why| VirtError::WrongState(format!("Cannot clone {from}: {why}")))?;
        self.exists(to)?;
        let pool = self.pool()?;
        let mut plan = Vec::new();
        for d in &detail.disks {
            plan.push(if d.cdrom {
                PlannedDisk::Attach { path: d.path.clone() }
            } else {
                PlannedDisk::Copy {
                    what: d.path.clone(),
                    src: StorageVol::lookup_by_path(&self.conn, &d.path)
                        .map_err(|e| VirtError::libvirt(format!("Finding disk {} of {from}", d.path), &e))?,
                    capacity: d.capacity.unwrap_or(MIB),
                }
            });
        }
        let need = plan.iter().map(PlannedDisk::new_bytes).sum();
        self.check_room(&pool, detail.info.max_memory_mib, need)?;
        // The clone's spec: the source's, with its own disks and new MACs.
        let mut nics = Vec::new();
        for n in &detail.nics {
            let network = match n.network.split_once(':') {
                Some(("bridge", br)) => NetworkKind::Bridge(br.try_into()?),
                _ => NetworkKind::Nat,
            };
            nics.push(NicSpec {
                network,
                vlan: None,
                mac: None,
            });
        }
        let spec = VmSpec {
            name: to.clone(),
            vcpus: detail.info.vcpus,
            memory_mib: detail.info.max_memory_mib,
            firmware: if detail.uefi { Firmware::Uefi } else { Firmware::Bios },
            // The disks are the copies below.
            disks: Vec::new(),
            nics,
            boot: detail.boot.iter().filter_map(|b| BootDevice::from_libvirt(b)).collect(),
            autostart: false,
        };
        let disks = Self::make_disks(&pool, to, &plan)?;
        let d = self.define(&spec, &disks)?;
        self.detail(&d)
    }

    fn console(&self, name: &VmName) -> Result<Console, VirtError> {
        let d = self.domain(name)?;
        let st = Self::info(&d)?.state;
        if !st.is_active() {
            return Err(VirtError::WrongState(format!(
                "{name} is {}: start it to reach its console",
                st.as_str()
            )));
        }
        let stream = virt::stream::Stream::new(&self.conn, 0)
            .map_err(|e| VirtError::libvirt(format!("Opening the console of {name}"), &e))?;
        d.open_console(None, &stream, sys::VIR_DOMAIN_CONSOLE_FORCE)
            .map_err(|e| match e.code() {
                virt::error::ErrorNumber::NoSupport => VirtError::WrongState(format!(
                    "Cannot open the console of {name}: this hypervisor has no consoles"
                )),
                _ => VirtError::libvirt(format!("Opening the console of {name}"), &e),
            })?;
        Ok(Console::new(stream, name.as_str()))
    }

    fn volumes(&self) -> Result<Vec<VolumeInfo>, VirtError> {
        let pool = self.pool()?;
        let _ = pool.refresh(0);
        let vols = pool
            .list_all_volumes(0)
            .map_err(|e| VirtError::libvirt(format!("Listing storage pool {}", self.opts.pool), &e))?;
        let mut out = Vec::new();
        for v in vols {
            let name = v.get_name().unwrap_or_default();
            let info = v
                .get_info()
                .map_err(|e| VirtError::libvirt(format!("Reading volume {name}"), &e))?;
            out.push(VolumeInfo {
                path: v.get_path().unwrap_or_default(),
                name,
                capacity: info.capacity,
                allocation: info.allocation,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
