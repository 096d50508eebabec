//! RAUC behind a trait, for the DebVisor agent and supervisor.
//!
//! [`Rauc`] reads the slot status, marks slots and installs bundles;
//! [`DbusRauc`] (or [`LazyRauc`], connecting on first use) implements it over RAUC's D-Bus API
//! (`de.pengutronix.rauc.Installer` at `/` on the system bus, as RAUC 1.8
//! has it: `InstallBundle(sa{sv})`, `Mark(ss) -> (ss)`,
//! `GetSlotStatus() -> a(sa{sv})`, `GetPrimary() -> s`, the properties
//! `Operation`, `LastError`, `Progress (isi)`, `Compatible`, `BootSlot` and
//! the signal `Completed(i)`). [`fakes::FakeRauc`] is an in-memory RAUC for
//! tests and the agent's simulation mode. [`classify`] sorts RAUC's error
//! texts into [`InstallErrorKind`]s.

#![warn(missing_docs)]

mod dbus;
mod error;
pub mod fakes;
pub mod grubenv;
mod rauc;
mod types;
mod verify;

pub use dbus::{DbusRauc, INTERFACE, LazyRauc, SERVICE};
pub use error::RaucError;
pub use rauc::Rauc;
pub use types::{
    BadSlotRef, Completion, InstallErrorKind, InstallEvent, MarkOutcome, MarkState, Progress, RaucStatus, SlotRef,
    SlotStatus, classify, parse_timestamp, slots_note,
};
pub use verify::{
    BundleInfo, BundleVerifier, RaucInfoVerifier, VERITY_BLOCK, VerifyError, bundle_root_hash, parse_info,
    verity_root_hash,
};
