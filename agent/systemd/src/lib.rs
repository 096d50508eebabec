//! systemd units and the journal behind traits, for the DebVisor agent.
//!
//! [`Units`] lists, inspects, starts, stops, enables and follows units and
//! reboots the host; [`SystemdUnits`] implements it over systemd's D-Bus API
//! (`org.freedesktop.systemd1`) with zbus. [`Journal`] reads and follows the
//! journal; [`JournalCtl`] runs `journalctl -o json` with an argv vector.
//! [`fakes`] holds in-memory versions of both for tests and the agent's
//! simulation mode. Unit names and the other inputs are the validated types
//! of [`debvisor_api::validate`].

#![warn(missing_docs)]

mod bus_path;
mod error;
pub mod fakes;
mod journal;
mod journalctl;
mod systemd;
mod units;

pub use bus_path::{escape_label, unescape_label, unit_name_from_path, unit_path};
pub use error::UnitsError;
pub use journal::{Journal, JournalError, LogEntry, LogQuery, parse_entry};
pub use journalctl::{JournalCtl, MAX_LINE_BYTES};
pub use systemd::{DEFAULT_JOB_TIMEOUT, SystemdUnits};
pub use units::{JobResult, NOT_LOADED, UnitChange, UnitDetail, UnitFileChange, UnitFilter, UnitInfo, Units};
