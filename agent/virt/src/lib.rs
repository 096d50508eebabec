//! Virtual machines for the DebVisor agent, through libvirt.
//!
//! - [`spec`]: the typed VM spec (name, vCPUs, memory, BIOS or UEFI, disks:
//!   new qcow2, imported image or ISO from the storage pool; NICs on a bridge
//!   or the NAT network; boot order; autostart) and its validated names;
//!   [`VmSpec::validate`] names the field it refuses.
//! - [`xml`]: the domain, volume and snapshot XML, written by a typed
//!   builder that escapes every value.
//! - [`Hypervisor`]: what the agent asks of the hypervisor; [`Libvirt`]
//!   implements it with the `virt` crate, against a real libvirtd
//!   (`qemu:///system`) or libvirt's own test driver (`test:///default`, the
//!   agent's simulation mode and the tests).
//!
//! Disks live in one libvirt storage pool: a VM's disks are volumes called
//! `<vm>-disk<N>.qcow2`, images and ISOs are volumes of the same pool, so a
//! request names a volume, never a path.
//!
//! - [`VmEvent`]: libvirt's lifecycle events, delivered to the sinks given
//!   to [`Hypervisor::subscribe`] from libvirt's event loop thread.
//!
//! - [`Console`]: a running VM's serial console, read and written from
//!   blocking threads.
//!
//! Not yet here: VLAN tags on Linux bridges (libvirt 9 applies `<vlan>` to
//! Open vSwitch only, so the agent will tag the VM's port itself) and the
//! VNC console proxy.

#![warn(missing_docs)]

mod console;
mod error;
mod events;
mod hypervisor;
mod libvirt;
pub mod parse;
pub mod spec;
pub mod xml;

pub use console::Console;
pub use error::VirtError;
pub use events::{EventSink, VmEvent, VmEventKind};
pub use hypervisor::{Hypervisor, SnapshotInfo, VmDetail, VmDisk, VmInfo, VmNic, VmState, VolumeInfo};
pub use libvirt::{Libvirt, LibvirtOptions};
pub use spec::{
    BootDevice, BridgeName, DiskSource, DiskSpec, Firmware, MacAddr, NetworkKind, NicSpec, SnapshotName, SpecError,
    VmName, VmSpec, VolumeName,
};

pub mod test_driver;
