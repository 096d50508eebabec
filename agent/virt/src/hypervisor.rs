//! The hypervisor facility: what the agent asks of libvirt, as a trait.

use crate::console::Console;
use crate::error::VirtError;
use crate::events::EventSink;
use crate::spec::{SnapshotName, VmName, VmSpec};

/// A VM's run state (libvirt's domain states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Running.
    Running,
    /// Blocked on a resource (still running).
    Blocked,
    /// Suspended (paused) by the user.
    Paused,
    /// Shutting down.
    ShuttingDown,
    /// Off.
    Shutoff,
    /// Crashed.
    Crashed,
    /// Suspended by guest power management.
    PmSuspended,
    /// libvirt knows no state.
    Unknown,
}

impl VmState {
    /// The state as the API and the console name it.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Blocked => "blocked",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting-down",
            VmState::Shutoff => "shutoff",
            VmState::Crashed => "crashed",
            VmState::PmSuspended => "pm-suspended",
            VmState::Unknown => "unknown",
        }
    }

    /// Whether the VM has a running QEMU (running, blocked, paused,
    /// shutting down, PM-suspended).
    pub fn is_active(self) -> bool {
        !matches!(self, VmState::Shutoff | VmState::Crashed | VmState::Unknown)
    }
}

/// A VM as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    /// Its name.
    pub name: String,
    /// libvirt's UUID.
    pub uuid: String,
    /// Its state.
    pub state: VmState,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB: its current allocation (what it holds while it runs).
    pub memory_mib: u64,
    /// The most memory it may have, in MiB (what a copy of it is given).
    pub max_memory_mib: u64,
    /// CPU time used since it started, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Whether it starts with the host.
    pub autostart: bool,
}

/// A disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// The guest's device (`vda`, `sda`).
    pub target: String,
    /// The file behind it.
    pub path: String,
    /// A CD-ROM.
    pub cdrom: bool,
    /// Its capacity in bytes, when it is a volume of the pool.
    pub capacity: Option<u64>,
}

/// A network interface of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    /// Its MAC.
    pub mac: String,
    /// `network:NAME` or `bridge:NAME`.
    pub network: String,
}

/// A VM with its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDetail {
    /// What the list shows.
    pub info: VmInfo,
    /// UEFI rather than BIOS.
    pub uefi: bool,
    /// Its disks.
    pub disks: Vec<VmDisk>,
    /// Its interfaces.
    pub nics: Vec<VmNic>,
    /// Its boot order (`hd`, `cdrom`, `network`).
    pub boot: Vec<String>,
    /// The VNC display's port while it runs.
    pub vnc_port: Option<u16>,
}

/// A snapshot of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Seconds since the epoch when it was taken.
    pub created: i64,
    /// The VM's state when it was taken.
    pub state: String,
    /// Whether it is the VM's current snapshot.
    pub current: bool,
}

/// A file of the VM storage pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// Its path.
    pub path: String,
    /// Its capacity in bytes.
    pub capacity: u64,
    /// The bytes it takes on the disk.
    pub allocation: u64,
}

/// The hypervisor. Calls block (libvirt's API does): call them from a
/// blocking thread.
pub trait Hypervisor: Send + Sync {
    /// Hands every later lifecycle event of every VM to `sink`, for as long
    /// as the hypervisor lives.
    fn subscribe(&self, sink: EventSink);
    /// Every VM, by name.
    fn list(&self) -> Result<Vec<VmInfo>, VirtError>;
    /// One VM with its devices.
    fn get(&self, name: &VmName) -> Result<VmDetail, VirtError>;
    /// One VM as listed (cheaper than [`Hypervisor::get`]: no XML).
    fn info(&self, name: &VmName) -> Result<VmInfo, VirtError>;
    /// Whether the connection still works (libvirtd may have restarted).
    fn is_alive(&self) -> bool;
    /// Creates the VM's disks and defines it (not started). Memory and pool
    /// space are checked first; a failure removes what was made.
    fn create(&self, spec: &VmSpec) -> Result<VmDetail, VirtError>;
    /// Starts a VM that is off.
    fn start(&self, name: &VmName) -> Result<(), VirtError>;
    /// Asks the guest to shut down (ACPI).
    fn shutdown(&self, name: &VmName) -> Result<(), VirtError>;
    /// Switches the VM off at once.
    fn stop(&self, name: &VmName) -> Result<(), VirtError>;
    /// Asks the guest to reboot (ACPI).
    fn reboot(&self, name: &VmName) -> Result<(), VirtError>;
    /// Pauses a running VM.
    fn suspend(&self, name: &VmName) -> Result<(), VirtError>;
    /// Resumes a paused VM.
    fn resume(&self, name: &VmName) -> Result<(), VirtError>;
    /// Sets whether the VM starts with the host.
    fn set_autostart(&self, name: &VmName, on: bool) -> Result<(), VirtError>;
    /// Removes a VM that is off, with its snapshots; with `disks`, also its
    /// disk volumes (never its ISOs).
    fn delete(&self, name: &VmName, disks: bool) -> Result<(), VirtError>;
    /// Takes a snapshot.
    fn snapshot_create(&self, name: &VmName, snap: &SnapshotName, description: &str)
    -> Result<SnapshotInfo, VirtError>;
    /// The VM's snapshots, oldest first.
    fn snapshot_list(&self, name: &VmName) -> Result<Vec<SnapshotInfo>, VirtError>;
    /// Reverts the VM to a snapshot.
    fn snapshot_revert(&self, name: &VmName, snap: &SnapshotName) -> Result<(), VirtError>;
    /// Deletes a snapshot.
    fn snapshot_delete(&self, name: &VmName, snap: &SnapshotName) -> Result<(), VirtError>;
    /// A new VM `to` with copies of `from`'s disks (which must be off) and
    /// new MACs.
    fn clone_vm(&self, from: &VmName, to: &VmName) -> Result<VmDetail, VirtError>;
    /// The files of the VM storage pool.
    fn volumes(&self) -> Result<Vec<VolumeInfo>, VirtError>;
    /// Opens the serial console of a running VM, taking it over from
    /// whoever held it.
    fn console(&self, name: &VmName) -> Result<Console, VirtError>;
}
