//! The DebVisor image builder as a library: recipe parsing, the host's apt
//! mirror, rootfs, initrd, slot, disk, PXE set and RAUC bundle steps. The `debvisor-image` binary
//! drives them; `debvisor-qa` reuses the mirror lookup for its peer system.

pub mod bundle;
pub mod cmd;
pub mod disk;
pub mod grubenv;
pub mod initrd;
pub mod installer;
pub mod manifest;
pub mod mirror;
pub mod progress;
pub mod pxe;
pub mod recipe;
pub mod rootfs;
pub mod signing;
pub mod slot;
pub mod variant;
