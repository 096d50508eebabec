//! The catalog and machine records in the wire form of
//! `debvisor.provision.v1`, both ways. Shared by the agent's service and
//! `debvisorctl provision`, so that a profile or group file means the same
//! on both ends.

use debvisor_api::provision::v1 as pb;

use crate::config::Mac;
use crate::profiles::{BootMode, Group, InstallDisk, Invalid, Profile, Selector};
use crate::store::Machine;

fn invalid(field: &str, value: &str, reason: &str) -> Invalid {
    Invalid {
        field: field.into(),
        value: value.chars().take(128).collect(),
        reason: reason.into(),
    }
}

/// A profile as sent.
pub fn profile_to_pb(p: &Profile) -> pb::Profile {
    pb::Profile {
        name: p.name.clone(),
        mode: match p.mode {
            BootMode::Live => pb::BootMode::Live,
            BootMode::Install => pb::BootMode::Install,
        } as i32,
        image: p.image.clone(),
        kernel_args: p.kernel_args.clone(),
        config: p.config.clone(),
        install_disk: p.install_disk.as_ref().map(|d| pb::InstallDisk {
            disk: Some(match d {
                InstallDisk::ById(path) => pb::install_disk::Disk::ById(path.clone()),
                InstallDisk::OnlyEmpty { min_gb } => pb::install_disk::Disk::OnlyEmptyMinGb(*min_gb),
            }),
        }),
    }
}

/// A profile as received (not validated yet: [`Profile::validate`]).
pub fn profile_from_pb(p: &pb::Profile) -> Result<Profile, Invalid> {
    let mode = match pb::BootMode::try_from(p.mode) {
        Ok(pb::BootMode::Live) => BootMode::Live,
        Ok(pb::BootMode::Install) => BootMode::Install,
        _ => {
            return Err(invalid(
                "profile.mode",
                &p.mode.to_string(),
                "BOOT_MODE_LIVE (1) or BOOT_MODE_INSTALL (2)",
            ));
        }
    };
    let install_disk = match p.install_disk.as_ref().and_then(|d| d.disk.as_ref()) {
        None => None,
        Some(pb::install_disk::Disk::ById(path)) => Some(InstallDisk::ById(path.clone())),
        Some(pb::install_disk::Disk::OnlyEmptyMinGb(gb)) => Some(InstallDisk::OnlyEmpty { min_gb: *gb }),
    };
    Ok(Profile {
        name: p.name.clone(),
        mode,
        image: p.image.clone(),
        kernel_args: p.kernel_args.clone(),
        config: p.config.clone(),
        install_disk,
    })
}

/// A group as sent.
pub fn group_to_pb(g: &Group) -> pb::Group {
    let s = &g.selector;
    pb::Group {
        name: g.name.clone(),
        profile: g.profile.clone(),
        selector: Some(pb::Selector {
            mac: s.mac.map(|m| m.to_string()).unwrap_or_default(),
            uuid: s.uuid.clone().unwrap_or_default(),
            arch: s.arch.clone().unwrap_or_default(),
            labels: s.labels.clone().into_iter().collect(),
        }),
    }
}

/// A group as received (not validated yet: [`Group::validate`]).
pub fn group_from_pb(g: &pb::Group) -> Result<Group, Invalid> {
    let s = g.selector.clone().unwrap_or_default();
    let opt = |v: String| (!v.is_empty()).then_some(v);
    let mac = match opt(s.mac) {
        None => None,
        Some(m) => Some(
            m.parse::<Mac>()
                .map_err(|_| invalid("group.selector.mac", &m, "six hex pairs such as 52:54:00:ab:cd:ef"))?,
        ),
    };
    Ok(Group {
        name: g.name.clone(),
        profile: g.profile.clone(),
        selector: Selector {
            mac,
            uuid: opt(s.uuid).map(|u| u.to_ascii_lowercase()),
            arch: opt(s.arch),
            labels: s.labels.into_iter().collect(),
        },
    })
}

/// A machine record as sent, with its lease's address (empty without one);
/// the selected group and profile are left for the caller to fill in.
pub fn machine_to_pb(m: &Machine, ip: String) -> pb::Machine {
    pb::Machine {
        mac: m.mac.to_string(),
        client: m.client.clone(),
        arch: m.arch.map(u32::from),
        boot_file: m.boot_file.clone().unwrap_or_default(),
        first_seen: m.first_seen,
        last_seen: m.last_seen,
        uuid: m.uuid.clone().unwrap_or_default(),
        profile: m.profile.clone().unwrap_or_default(),
        installed: m.installed,
        labels: m.labels.clone().into_iter().collect(),
        ip,
        selected_group: String::new(),
        selected_profile: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_round_trip_through_the_wire_form() {
        let p = Profile {
            name: "rack-install".into(),
            mode: BootMode::Install,
            image: "0.1.0".into(),
            kernel_args: vec!["quiet".into()],
            config: "version = 1\n".into(),
            install_disk: Some(InstallDisk::OnlyEmpty { min_gb: 8 }),
        };
        assert_eq!(profile_from_pb(&profile_to_pb(&p)).unwrap(), p);
        let by_id = Profile {
            install_disk: Some(InstallDisk::ById("/dev/disk/by-id/virtio-DISK1".into())),
            ..p.clone()
        };
        assert_eq!(profile_from_pb(&profile_to_pb(&by_id)).unwrap(), by_id);
        let mut bad = profile_to_pb(&p);
        bad.mode = 0;
        let e = profile_from_pb(&bad).unwrap_err();
        assert_eq!(e.field, "profile.mode");
    }

    #[test]
    fn groups_round_trip_and_bad_macs_name_the_field() {
        let g = Group {
            name: "rack-1".into(),
            profile: "live".into(),
            selector: Selector {
                mac: Some("52:54:00:12:34:56".parse().unwrap()),
                uuid: None,
                arch: Some("x86_64".into()),
                labels: [("rack".to_string(), "r1".to_string())].into(),
            },
        };
        assert_eq!(group_from_pb(&group_to_pb(&g)).unwrap(), g);
        let mut bad = group_to_pb(&g);
        bad.selector.as_mut().unwrap().mac = "52:54:00:12:34".into();
        let e = group_from_pb(&bad).unwrap_err();
        assert_eq!(e.field, "group.selector.mac");
        assert!(e.to_string().contains("52:54:00:12:34"), "{e}");
    }
}
