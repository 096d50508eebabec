//! The typed VM spec and the validated names in it. Each name is built only
//! through `TryFrom<&str>`, so holding one proves it passed its rules; a
//! spec is checked as a whole by [`VmSpec::validate`], whose error names the
//! field and says what to change.

use std::fmt;

/// The most virtual CPUs a VM may have.
pub const MAX_VCPUS: u32 = 64;
/// The least memory a VM may have, in MiB.
pub const MIN_MEMORY_MIB: u64 = 32;
/// The most memory a VM may have, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// The largest new disk, in MiB (64 TiB).
pub const MAX_DISK_MIB: u64 = 64 << 20;
/// The most disks (ISOs included) a VM may have.
pub const MAX_DISKS: usize = 16;
/// The most network interfaces a VM may have.
pub const MAX_NICS: usize = 8;

/// A field of a spec or a request that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    /// The field, as the API names it (`disks[1].size_mib`).
    pub field: String,
    /// What is wrong and what is allowed.
    pub problem: String,
}

impl SpecError {
    /// A refusal of `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same refusal under `prefix` (`disks[0]` + `volume`).
    pub fn under(self, prefix: &str) -> SpecError {
        SpecError {
            field: if self.field.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{}", self.field)
            },
            problem: self.problem,
        }
    }
}

/// The value for a message: at most 64 characters, control characters
/// escaped.
fn shown(v: &str) -> String {
    let mut s: String = v.chars().take(64).flat_map(char::escape_debug).collect();
    if v.chars().count() > 64 {
        s.push('…');
    }
    s
}

/// `[A-Za-z0-9]` first, then `[A-Za-z0-9._-]`, `1..=max` bytes, no `..`.
fn check_name(v: &str, max: usize, what: &str) -> Result<(), SpecError> {
    let ok_start = v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if v.is_empty() || v.len() > max || !ok_start || !ok_chars || v.contains("..") {
        return Err(SpecError::new(
            "",
            format!(
                "{:?} is not a valid {what}: use 1-{max} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit, without \"..\"",
                shown(v)
            ),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $t:ident, $max:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $t(String);

        impl $t {
            /// The longest value, in bytes.
            pub const MAX: usize = $max;

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $t {
            type Error = SpecError;
            fn try_from(v: &str) -> Result<Self, SpecError> {
                check_name(v, $max, $what)?;
                Ok($t(v.to_string()))
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A VM (libvirt domain) name: also the prefix of its disks' volume names.
    VmName,
    63,
    "VM name"
);
name_type!(
    /// A snapshot name.
    SnapshotName,
    63,
    "snapshot name"
);
name_type!(
    /// A volume (file) in the VM storage pool: never a path, so never
    /// anything outside the pool.
    VolumeName,
    128,
    "volume name"
);

/// A Linux bridge name (an interface name: 1-15 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BridgeName(String);

impl BridgeName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for BridgeName {
    type Error = SpecError;
    fn try_from(v: &str) -> Result<Self, SpecError> {
        check_name(v, 15, "bridge name")?;
        Ok(BridgeName(v.to_string()))
    }
}

impl fmt::Display for BridgeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unicast Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl TryFrom<&str> for MacAddr {
    type Error = SpecError;
    fn try_from(v: &str) -> Result<Self, SpecError> {
        let bad = || {
            SpecError::new(
                "",
                format!(
                    "{:?} is not a unicast MAC address: six hex pairs separated by ':', with an even first byte (52:54:00:12:34:56)",
                    shown(v)
                ),
            )
        };
        let parts: Vec<&str> = v.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(bad());
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if b[0] & 1 == 1 || b == [0; 6] {
            return Err(bad());
        }
        Ok(MacAddr(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// How the VM boots its first stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// SeaBIOS.
    #[default]
    Bios,
    /// UEFI (OVMF).
    Uefi,
}

/// Where a disk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A new, empty qcow2 volume of this many MiB.
    New {
        /// Its size in MiB.
        size_mib: u64,
    },
    /// A copy of an image volume of the pool (raw or qcow2), as the VM's own
    /// qcow2 volume.
    Import {
        /// The image in the pool.
        volume: VolumeName,
    },
    /// An ISO volume of the pool, attached read-only as a CD-ROM.
    Iso {
        /// The ISO in the pool.
        volume: VolumeName,
    },
}

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Where it comes from.
    pub source: DiskSource,
}

impl DiskSpec {
    /// Whether this is a CD-ROM.
    pub fn is_cdrom(&self) -> bool {
        matches!(self.source, DiskSource::Iso { .. })
    }
}

/// Which network a NIC joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkKind {
    /// libvirt's NAT network (`default`).
    Nat,
    /// A host bridge (from the machine config).
    Bridge(BridgeName),
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// Its network.
    pub network: NetworkKind,
    /// An 802.1Q tag (1-4094), on bridges only.
    pub vlan: Option<u16>,
    /// Its MAC; libvirt picks one when unset.
    pub mac: Option<MacAddr>,
}

/// A boot device class, in the order the firmware tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    /// The hard disks.
    Disk,
    /// The CD-ROMs.
    Cdrom,
    /// The network (PXE).
    Network,
}

impl BootDevice {
    /// libvirt's `<boot dev=...>`.
    pub fn libvirt(self) -> &'static str {
        match self {
            BootDevice::Disk => "hd",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Network => "network",
        }
    }
}

/// Everything a VM is created from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Its name.
    pub name: VmName,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// Disks, in order (virtio disks vda, vdb, ...; CD-ROMs sda, sdb, ...).
    pub disks: Vec<DiskSpec>,
    /// Network interfaces, in order.
    pub nics: Vec<NicSpec>,
    /// Boot order; empty means disk, then CD-ROM, then network, for what the
    /// VM has.
    pub boot: Vec<BootDevice>,
    /// Start with the host.
    pub autostart: bool,
}

impl VmSpec {
    /// Checks the numbers and the combinations; the error names the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(SpecError::new(
                "vcpus",
                format!("{} is out of range: give 1-{MAX_VCPUS}", self.vcpus),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(SpecError::new(
                "memory_mib",
                format!(
                    "{} MiB is out of range: give {MIN_MEMORY_MIB}-{MAX_MEMORY_MIB} MiB",
                    self.memory_mib
                ),
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(SpecError::new(
                "disks",
                format!("{} disks: at most {MAX_DISKS}", self.disks.len()),
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if let DiskSource::New { size_mib } = d.source
                && !(1..=MAX_DISK_MIB).contains(&size_mib)
            {
                return Err(SpecError::new(
                    format!("disks[{i}].size_mib"),
                    format!("{size_mib} MiB is out of range: give 1-{MAX_DISK_MIB} MiB"),
                ));
            }
        }
        if self.nics.len() > MAX_NICS {
            return Err(SpecError::new(
                "nics",
                format!("{} interfaces: at most {MAX_NICS}", self.nics.len()),
            ));
        }
        let mut macs = Vec::new();
        for (i, n) in self.nics.iter().enumerate() {
            if let Some(tag) = n.vlan {
                if !(1..=4094).contains(&tag) {
                    return Err(SpecError::new(
                        format!("nics[{i}].vlan"),
                        format!("{tag} is not a VLAN id: give 1-4094"),
                    ));
                }
                if n.network == NetworkKind::Nat {
                    return Err(SpecError::new(
                        format!("nics[{i}].vlan"),
                        "the NAT network carries no VLANs: put the interface on a bridge, or drop the tag",
                    ));
                }
            }
            if let Some(mac) = n.mac {
                if macs.contains(&mac) {
                    return Err(SpecError::new(
                        format!("nics[{i}].mac"),
                        format!("{mac} is already the MAC of another interface of this VM"),
                    ));
                }
                macs.push(mac);
            }
        }
        for (i, b) in self.boot.iter().enumerate() {
            if self.boot[..i].contains(b) {
                return Err(SpecError::new(
                    format!("boot[{i}]"),
                    format!("{} is listed twice", b.libvirt()),
                ));
            }
            let has = match b {
                BootDevice::Disk => self.disks.iter().any(|d| !d.is_cdrom()),
                BootDevice::Cdrom => self.disks.iter().any(DiskSpec::is_cdrom),
                BootDevice::Network => !self.nics.is_empty(),
            };
            if !has {
                return Err(SpecError::new(
                    format!("boot[{i}]"),
                    format!(
                        "the VM has no {} to boot from: add one, or drop it from the boot order",
                        noun(*b)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The boot order to write: the spec's, or disk, CD-ROM, network for
    /// what the VM has.
    pub fn boot_order(&self) -> Vec<BootDevice> {
        if !self.boot.is_empty() {
            return self.boot.clone();
        }
        default_boot(
            self.disks.iter().any(|d| !d.is_cdrom()),
            self.disks.iter().any(DiskSpec::is_cdrom),
            !self.nics.is_empty(),
        )
    }
}

/// Disk, CD-ROM, network: those a VM has.
pub fn default_boot(disk: bool, cdrom: bool, network: bool) -> Vec<BootDevice> {
    [
        (disk, BootDevice::Disk),
        (cdrom, BootDevice::Cdrom),
        (network, BootDevice::Network),
    ]
    .into_iter()
    .filter_map(|(has, b)| has.then_some(b))
    .collect()
}

impl BootDevice {
    /// The device for libvirt's `<boot dev=...>` value.
    pub fn from_libvirt(v: &str) -> Option<BootDevice> {
        match v {
            "hd" => Some(BootDevice::Disk),
            "cdrom" => Some(BootDevice::Cdrom),
            "network" => Some(BootDevice::Network),
            _ => None,
        }
    }
}

fn noun(b: BootDevice) -> &'static str {
    match b {
        BootDevice::Disk => "disk",
        BootDevice::Cdrom => "ISO (CD-ROM)",
        BootDevice::Network => "network interface",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> VmSpec {
        VmSpec {
            name: VmName::try_from("web-1").unwrap(),
            vcpus: 2,
            memory_mib: 512,
            firmware: Firmware::Bios,
            disks: vec![DiskSpec {
                source: DiskSource::New { size_mib: 1024 },
            }],
            nics: vec![NicSpec {
                network: NetworkKind::Nat,
                vlan: None,
                mac: None,
            }],
            boot: Vec::new(),
            autostart: false,
        }
    }

    #[test]
    fn names_refuse_what_libvirt_or_a_path_would_misread() {
        for ok in ["web-1", "a", "db_2.prod", &"x".repeat(63)] {
            VmName::try_from(ok).unwrap();
        }
        for bad in [
            "",
            "-web",
            ".hidden",
            "a/b",
            "../etc",
            "a..b",
            "web 1",
            "wéb",
            "a<b>",
            &"x".repeat(64),
        ] {
            let e = VmName::try_from(bad).unwrap_err();
            assert!(e.problem.contains("is not a valid VM name"), "{bad:?}: {e}");
        }
        VolumeName::try_from("debian-12.qcow2").unwrap();
        assert!(VolumeName::try_from("../../etc/shadow").is_err());
        assert!(VolumeName::try_from("/data/x.img").is_err());
        BridgeName::try_from("br0").unwrap();
        assert!(BridgeName::try_from("a-very-long-bridge").is_err());
    }

    #[test]
    fn macs_are_unicast_hex_pairs() {
        assert_eq!(
            MacAddr::try_from("52:54:00:AB:cd:01").unwrap().to_string(),
            "52:54:00:ab:cd:01"
        );
        for bad in [
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "52:54:00:ab:cd",
            "52-54-00-ab-cd-01",
            "52:54:00:ab:cd:0g",
        ] {
            assert!(MacAddr::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_spec_names_the_field_it_refuses() {
        spec().validate().unwrap();
        type Change = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.vcpus = 0), "vcpus"),
            (Box::new(|s| s.vcpus = 65), "vcpus"),
            (Box::new(|s| s.memory_mib = 16), "memory_mib"),
            (
                Box::new(|s| s.disks[0].source = DiskSource::New { size_mib: 0 }),
                "disks[0].size_mib",
            ),
            (Box::new(|s| s.nics[0].vlan = Some(10)), "nics[0].vlan"),
            (
                Box::new(|s| {
                    s.nics[0].network = NetworkKind::Bridge(BridgeName::try_from("br0").unwrap());
                    s.nics[0].vlan = Some(4095);
                }),
                "nics[0].vlan",
            ),
            (Box::new(|s| s.boot = vec![BootDevice::Cdrom]), "boot[0]"),
            (
                Box::new(|s| s.boot = vec![BootDevice::Disk, BootDevice::Disk]),
                "boot[1]",
            ),
            (
                Box::new(|s| {
                    let mac = Some(MacAddr::try_from("52:54:00:00:00:01").unwrap());
                    s.nics[0].mac = mac;
                    s.nics.push(s.nics[0].clone());
                }),
                "nics[1].mac",
            ),
            (Box::new(|s| s.nics = vec![s.nics[0].clone(); 9]), "nics"),
        ];
        for (change, field) in cases {
            let mut s = spec();
            change(&mut s);
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
        }
    }

    #[test]
    fn the_default_boot_order_follows_the_devices() {
        let mut s = spec();
        assert_eq!(s.boot_order(), [BootDevice::Disk, BootDevice::Network]);
        s.disks.push(DiskSpec {
            source: DiskSource::Iso {
                volume: VolumeName::try_from("debian.iso").unwrap(),
            },
        });
        assert_eq!(
            s.boot_order(),
            [BootDevice::Disk, BootDevice::Cdrom, BootDevice::Network]
        );
        s.boot = vec![BootDevice::Cdrom, BootDevice::Disk];
        assert_eq!(s.boot_order(), [BootDevice::Cdrom, BootDevice::Disk]);
    }
}
