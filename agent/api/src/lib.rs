//! The DebVisor wire contract.
//!
//! Everything that crosses a process boundary between DebVisor parts lives
//! here: the generated protobuf services (`debvisor.<service>.v1`), the
//! descriptor set for server reflection, the well-known paths and ports of a
//! node, and the client helpers that connect to an agent over its Unix socket
//! or over TLS. Every other crate depends on this one, never the reverse.

pub mod client;
pub mod config;
pub mod daemon;
pub mod machine;
pub mod paths;
pub mod tls;
pub mod validate;

/// `debvisor.node.v1`: node identity, image, slot and resource figures.
pub mod node {
    /// Version 1 of the node service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("debvisor.node.v1");
    }
}

/// `debvisor.units.v1`: systemd units and the journal.
pub mod units {
    /// Version 1 of the units service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("debvisor.units.v1");
    }
}

/// `debvisor.audit.v1`: the hash-chained audit log.
pub mod audit {
    /// Version 1 of the audit service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("debvisor.audit.v1");
    }
}

/// `debvisor.health.v1`: health checks, remediation and the boot gate.
pub mod health {
    /// Version 1 of the health service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("debvisor.health.v1");
    }
}

/// `debvisor.config.v1`: the machine config in effect and the admin client
/// bundle. (Named `config_api` because [`config`] is debvisorctl's client
/// configuration.)
pub mod config_api {
    /// Version 1 of the config service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("debvisor.config.v1");
    }
}

/// `debvisor.update.v1`: the A/B root slots and their updates through RAUC.
pub mod update {
    /// Version 1 of the update service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("debvisor.update.v1");
    }

    /// An install phase as one lower-case word for people and logs:
    /// `downloading`, `verifying`, `installing`, `done`, `failed`, or
    /// `unknown` for a value this build does not know.
    pub fn phase_word(phase: i32) -> &'static str {
        match v1::Phase::try_from(phase) {
            Ok(v1::Phase::Downloading) => "downloading",
            Ok(v1::Phase::Verifying) => "verifying",
            Ok(v1::Phase::Installing) => "installing",
            Ok(v1::Phase::Done) => "done",
            Ok(v1::Phase::Failed) => "failed",
            _ => "unknown",
        }
    }
}

/// The encoded `FileDescriptorSet` of every DebVisor protobuf, for
/// `tonic-reflection`.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/debvisor_descriptor.bin"));

/// The API versions this build serves, named in UNIMPLEMENTED answers.
pub const SUPPORTED_SERVICES: &[&str] = &[
    "debvisor.node.v1.NodeService",
    "debvisor.units.v1.UnitService",
    "debvisor.audit.v1.AuditService",
    "debvisor.health.v1.NodeHealthService",
    "debvisor.config.v1.ConfigService",
    "debvisor.update.v1.UpdateService",
];
