//! The wire messages of `debvisor.vm.v1` to and from the typed VM model of
//! `debvisor-virt`.

use debvisor_api::vm::v1 as pb;
use debvisor_virt::{
    BootDevice, BridgeName, DiskSource, DiskSpec, Firmware, MacAddr, NetworkKind, NicSpec, SnapshotInfo, SpecError,
    VmDetail, VmInfo, VmName, VmSpec, VmState, VolumeName,
};

/// `r`, its error placed under `field`.
pub(crate) fn field<T>(field: &str, r: Result<T, SpecError>) -> Result<T, SpecError> {
    r.map_err(|e| e.under(field))
}

/// The typed spec of a request's spec; the error names the field.
pub fn spec_from_pb(s: &pb::VmSpec) -> Result<VmSpec, SpecError> {
    let mut disks = Vec::new();
    for (i, d) in s.disks.iter().enumerate() {
        let at = format!("disks[{i}]");
        let source = match &d.source {
            Some(pb::disk_spec::Source::NewSizeMib(size_mib)) => DiskSource::New { size_mib: *size_mib },
            Some(pb::disk_spec::Source::ImportVolume(v)) => DiskSource::Import {
                volume: field(&format!("{at}.import_volume"), VolumeName::try_from(v.as_str()))?,
            },
            Some(pb::disk_spec::Source::IsoVolume(v)) => DiskSource::Iso {
                volume: field(&format!("{at}.iso_volume"), VolumeName::try_from(v.as_str()))?,
            },
            None => {
                return Err(SpecError::new(
                    at,
                    "set one of new_size_mib, import_volume or iso_volume",
                ));
            }
        };
        disks.push(DiskSpec { source });
    }
    let mut nics = Vec::new();
    for (i, n) in s.nics.iter().enumerate() {
        let at = format!("nics[{i}]");
        let network = if n.bridge.is_empty() {
            NetworkKind::Nat
        } else {
            NetworkKind::Bridge(field(&format!("{at}.bridge"), BridgeName::try_from(n.bridge.as_str()))?)
        };
        let vlan = match n.vlan {
            0 => None,
            v => Some(
                u16::try_from(v)
                    .map_err(|_| SpecError::new(format!("{at}.vlan"), format!("{v} is not a VLAN id: give 1-4094")))?,
            ),
        };
        let mac = if n.mac.is_empty() {
            None
        } else {
            Some(field(&format!("{at}.mac"), MacAddr::try_from(n.mac.as_str()))?)
        };
        nics.push(NicSpec { network, vlan, mac });
    }
    let mut boot = Vec::new();
    for (i, b) in s.boot.iter().enumerate() {
        boot.push(match pb::BootDevice::try_from(*b) {
            Ok(pb::BootDevice::Disk) => BootDevice::Disk,
            Ok(pb::BootDevice::Cdrom) => BootDevice::Cdrom,
            Ok(pb::BootDevice::Network) => BootDevice::Network,
            _ => {
                return Err(SpecError::new(
                    format!("boot[{i}]"),
                    format!("{b} is not a boot device: give DISK, CDROM or NETWORK"),
                ));
            }
        });
    }
    let firmware = match pb::Firmware::try_from(s.firmware) {
        Ok(pb::Firmware::Unspecified | pb::Firmware::Bios) => Firmware::Bios,
        Ok(pb::Firmware::Uefi) => Firmware::Uefi,
        Err(_) => {
            return Err(SpecError::new(
                "firmware",
                format!("{} is not a firmware: give BIOS or UEFI", s.firmware),
            ));
        }
    };
    let spec = VmSpec {
        name: field("name", VmName::try_from(s.name.as_str()))?,
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        firmware,
        disks,
        nics,
        boot,
        autostart: s.autostart,
    };
    spec.validate()?;
    Ok(spec)
}

pub(crate) fn state_to_pb(s: VmState) -> pb::VmState {
    match s {
        VmState::Running => pb::VmState::Running,
        VmState::Blocked => pb::VmState::Blocked,
        VmState::Paused => pb::VmState::Paused,
        VmState::ShuttingDown => pb::VmState::ShuttingDown,
        VmState::Shutoff => pb::VmState::Shutoff,
        VmState::Crashed => pb::VmState::Crashed,
        VmState::PmSuspended => pb::VmState::PmSuspended,
        VmState::Unknown => pb::VmState::Unspecified,
    }
}

pub(crate) fn summary_to_pb(v: VmInfo) -> pb::VmSummary {
    pb::VmSummary {
        state: state_to_pb(v.state) as i32,
        state_text: v.state.as_str().to_string(),
        name: v.name,
        uuid: v.uuid,
        vcpus: v.vcpus,
        memory_mib: v.memory_mib,
        cpu_time_ns: v.cpu_time_ns,
        autostart: v.autostart,
    }
}

pub(crate) fn vm_to_pb(v: VmDetail) -> pb::Vm {
    pb::Vm {
        summary: Some(summary_to_pb(v.info)),
        uefi: v.uefi,
        disks: v
            .disks
            .into_iter()
            .map(|d| pb::VmDisk {
                target: d.target,
                path: d.path,
                cdrom: d.cdrom,
                capacity_bytes: d.capacity.unwrap_or(0),
            })
            .collect(),
        nics: v
            .nics
            .into_iter()
            .map(|n| pb::VmNic {
                mac: n.mac,
                network: n.network,
            })
            .collect(),
        boot: v.boot,
        vnc_port: v.vnc_port.map_or(0, u32::from),
    }
}

pub(crate) fn snapshot_to_pb(s: SnapshotInfo) -> pb::Snapshot {
    pb::Snapshot {
        name: s.name,
        description: s.description,
        created_unix: s.created,
        vm_state: s.state,
        current: s.current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> pb::VmSpec {
        pb::VmSpec {
            name: "web-1".into(),
            vcpus: 1,
            memory_mib: 256,
            disks: vec![pb::DiskSpec {
                source: Some(pb::disk_spec::Source::NewSizeMib(512)),
            }],
            nics: vec![pb::NicSpec::default()],
            ..Default::default()
        }
    }

    #[test]
    fn a_wire_spec_becomes_the_typed_one_or_names_its_field() {
        let s = spec_from_pb(&spec()).unwrap();
        assert_eq!(s.name.as_str(), "web-1");
        assert_eq!(s.nics[0].network, NetworkKind::Nat);
        let cases: Vec<(pb::VmSpec, &str)> = vec![
            (
                pb::VmSpec {
                    name: "../x".into(),
                    ..spec()
                },
                "name",
            ),
            (
                pb::VmSpec {
                    disks: vec![pb::DiskSpec { source: None }],
                    ..spec()
                },
                "disks[0]",
            ),
            (
                pb::VmSpec {
                    disks: vec![pb::DiskSpec {
                        source: Some(pb::disk_spec::Source::IsoVolume("/etc/passwd".into())),
                    }],
                    ..spec()
                },
                "disks[0].iso_volume",
            ),
            (
                pb::VmSpec {
                    nics: vec![pb::NicSpec {
                        bridge: "br0;rm".into(),
                        ..Default::default()
                    }],
                    ..spec()
                },
                "nics[0].bridge",
            ),
            (
                pb::VmSpec {
                    nics: vec![pb::NicSpec {
                        mac: "ff:ff:ff:ff:ff:ff".into(),
                        ..Default::default()
                    }],
                    ..spec()
                },
                "nics[0].mac",
            ),
            (
                pb::VmSpec {
                    nics: vec![pb::NicSpec {
                        bridge: "br0".into(),
                        vlan: 70000,
                        ..Default::default()
                    }],
                    ..spec()
                },
                "nics[0].vlan",
            ),
            (
                pb::VmSpec {
                    boot: vec![9],
                    ..spec()
                },
                "boot[0]",
            ),
            (pb::VmSpec { firmware: 7, ..spec() }, "firmware"),
            (pb::VmSpec { vcpus: 0, ..spec() }, "vcpus"),
        ];
        for (s, f) in cases {
            let e = spec_from_pb(&s).unwrap_err();
            assert_eq!(e.field, f, "{e}");
        }
    }
}
