//! The agent end to end (its services on a temporary Unix socket and over
//! mutual TLS, with fake host facilities and test doubles of its peers), as
//! one test binary.

mod health;
mod provision;
mod transports;
mod update;

use std::sync::Arc;

use debvisor_agent::fakes::{FakeHost, SimHealth};
use debvisor_agent::server::Backends;
use debvisor_audit::AuditLog;
use debvisor_systemd::fakes::{FakeJournal, FakeUnits};

/// The agent's facilities as `--sim` has them (fake host called `host`,
/// fake units and journal, simulated health), with `audit` and `provision`.
fn sim_backends(host: &str, audit: AuditLog, provision: Option<debvisor_provision::Provisioner>) -> Backends {
    let journal = Arc::new(FakeJournal::new());
    Backends {
        host: Arc::new(FakeHost::new(host)),
        units: Arc::new(FakeUnits::new().with_journal(journal.clone())),
        journal,
        audit,
        health: Arc::new(SimHealth::new()),
        provision,
    }
}
