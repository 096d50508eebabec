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

/// `debvisor.vm.v1`: the node's virtual machines (libvirt).
pub mod vm {
    /// Version 1 of the VM service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("debvisor.vm.v1");
    }
}

/// `debvisor.provision.v1`: the PXE provisioner's profiles, groups,
/// machines and leases.
pub mod provision {
    /// Version 1 of the provisioning service.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("debvisor.provision.v1");
    }

    /// A profile's mode as a word: `live`, `install`, or `?` for a value
    /// this build does not know.
    pub fn mode_word(mode: i32) -> &'static str {
        match v1::BootMode::try_from(mode) {
            Ok(v1::BootMode::Live) => "live",
            Ok(v1::BootMode::Install) => "install",
            _ => "?",
        }
    }

    /// The disk a profile installs to, for people: the by-id path, "the
    /// only empty disk of N GB or more", or `-` (live).
    pub fn disk_text(p: &v1::Profile) -> String {
        match p.install_disk.as_ref().and_then(|d| d.disk.as_ref()) {
            Some(v1::install_disk::Disk::ById(path)) => path.clone(),
            Some(v1::install_disk::Disk::OnlyEmptyMinGb(gb)) => format!("the only empty disk of {gb} GB or more"),
            None => "-".into(),
        }
    }

    /// Labels as sorted `k=v` joined by `sep`, or `-` when there are none.
    pub fn labels_text(labels: &std::collections::HashMap<String, String>, sep: &str) -> String {
        let mut v: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        v.sort();
        if v.is_empty() { "-".into() } else { v.join(sep) }
    }

    /// What a group's selector matches, for people: `mac=.., arch=..,
    /// labels k=v` or "every machine".
    pub fn selector_text(s: Option<&v1::Selector>) -> String {
        let Some(s) = s else { return "every machine".into() };
        let mut parts: Vec<String> = [("mac", &s.mac), ("uuid", &s.uuid), ("arch", &s.arch)]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !s.labels.is_empty() {
            parts.push(format!("labels {}", labels_text(&s.labels, " ")));
        }
        if parts.is_empty() {
            "every machine".into()
        } else {
            parts.join(", ")
        }
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
    "debvisor.provision.v1.ProvisionService",
    "debvisor.vm.v1.VmService",
];
