//! The DebVisor node agent: the one door to a node.
//!
//! Serves the `debvisor.*.v1` gRPC services (node, units, audit, config,
//! update through RAUC, provision (when the agent runs the PXE provisioner), and health, which it forwards to debvisor-init) over a Unix socket (authorised by peer
//! credentials) and over TCP with mutual TLS. Host facilities sit behind
//! traits ([`host::HostFacts`], [`health_service::HealthSource`], and the
//! systemd units and journal of `debvisor-systemd`) with a production
//! implementation and fakes for tests and `--sim`. Every mutating call lands
//! in the hash-chained audit log of `debvisor-audit`.

pub mod audit_service;
pub mod auth;
pub mod config;
pub mod config_service;
pub mod fakes;
pub mod health_service;
pub mod host;
pub mod provision_service;
pub mod routing;
pub mod server;
pub mod service;
pub mod status;
pub mod units_service;
pub mod update_service;
pub mod vm_service;

/// An error and all its sources on one line, for status messages: the wire
/// carries no error chain, so the cause has to travel in the text.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}
