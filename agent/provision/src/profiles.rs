//! Profiles and groups in the matchbox style. A profile says how a machine
//! boots (live from RAM or install to disk), which image version, extra
//! kernel arguments and the machine config template. A group selects a
//! profile for the machines its selector matches (MAC, UUID, architecture,
//! labels); the most specific matching group wins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Mac;

/// How a profile boots a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// The root image is fetched into RAM; no disk is touched.
    Live,
    /// The A/B layout is written to a disk, then the machine boots from it.
    Install,
}

/// Which disk an install writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallDisk {
    /// A `/dev/disk/by-id/...` path.
    ById(String),
    /// The only disk without partitions of at least this many GB.
    OnlyEmpty {
        /// Smallest size accepted, in GB (10^9 bytes).
        min_gb: u32,
    },
}

impl InstallDisk {
    /// The kernel argument value the installer reads (`debvisor.install_disk=`).
    pub fn kernel_arg(&self) -> String {
        match self {
            InstallDisk::ById(p) => p.clone(),
            InstallDisk::OnlyEmpty { min_gb } => format!("empty:{min_gb}"),
        }
    }
}

/// A profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Its name (`[a-z0-9-]`, 1-63).
    pub name: String,
    /// Live or install.
    pub mode: BootMode,
    /// The image version, a directory of the images root.
    pub image: String,
    /// Extra kernel arguments, one per entry.
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// The machine config template (TOML); `{{hostname}}`, `{{mac}}` and
    /// `{{profile}}` are replaced per machine.
    #[serde(default)]
    pub config: String,
    /// The disk an install writes (install mode only).
    #[serde(default)]
    pub install_disk: Option<InstallDisk>,
}

/// What a group matches. Every key set must match; an empty selector
/// matches every machine (a default group).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The machine's MAC.
    #[serde(default)]
    pub mac: Option<Mac>,
    /// The machine's SMBIOS UUID (lower case).
    #[serde(default)]
    pub uuid: Option<String>,
    /// iPXE's `${buildarch}` (`x86_64`, `i386`, `arm64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// Labels the machine must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    fn specificity(&self) -> usize {
        usize::from(self.mac.is_some())
            + usize::from(self.uuid.is_some())
            + usize::from(self.arch.is_some())
            + self.labels.len()
    }
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Its name (`[a-z0-9-]`, 1-63).
    pub name: String,
    /// The profile it selects.
    pub profile: String,
    /// The machines it matches.
    #[serde(default)]
    pub selector: Selector,
}

/// What is known of a machine asking for its boot script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Its MAC.
    pub mac: Option<Mac>,
    /// Its UUID.
    pub uuid: Option<String>,
    /// iPXE's build architecture.
    pub arch: Option<String>,
    /// Its labels (from the machine record).
    pub labels: BTreeMap<String, String>,
}

impl Group {
    /// Whether the group's selector matches `f`.
    pub fn matches(&self, f: &Facts) -> bool {
        let s = &self.selector;
        s.mac.is_none_or(|m| f.mac == Some(m))
            && s.uuid
                .as_ref()
                .is_none_or(|u| f.uuid.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(u)))
            && s.arch.as_ref().is_none_or(|a| f.arch.as_ref() == Some(a))
            && s.labels.iter().all(|(k, v)| f.labels.get(k) == Some(v))
    }
}

/// The most specific group matching `f` (ties go to the first name).
pub fn select<'a>(groups: &'a [Group], f: &Facts) -> Option<&'a Group> {
    groups.iter().filter(|g| g.matches(f)).min_by(|a, b| {
        b.selector
            .specificity()
            .cmp(&a.selector.specificity())
            .then(a.name.cmp(&b.name))
    })
}

/// A profile or group that cannot be stored, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value:?}: {reason}")]
pub struct Invalid {
    /// The field, e.g. `profile.kernel_args[2]`.
    pub field: String,
    /// The offending value.
    pub value: String,
    /// The rule.
    pub reason: String,
}

fn invalid(field: impl Into<String>, value: &str, reason: &str) -> Invalid {
    Invalid {
        field: field.into(),
        value: value.chars().take(128).collect(),
        reason: reason.into(),
    }
}

/// `[a-z0-9-]`, 1-63, not starting or ending with `-`.
pub fn is_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An image version: `[A-Za-z0-9._-]`, 1-64, not `.` or `..`.
pub fn is_version(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Arguments the provisioner sets itself; a profile may not override them.
const RESERVED_ARGS: &[&str] = &[
    "debvisor.live",
    "debvisor.live_sha256",
    "debvisor.config",
    "debvisor.install",
    "debvisor.install_sha256",
    "debvisor.install_disk",
    "debvisor.installed",
    "initrd",
    "ip",
    "boot",
    "BOOTIF",
];

impl Profile {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !is_name(&self.name) {
            return Err(invalid(
                "profile.name",
                &self.name,
                "1-63 of a-z 0-9 -, not starting or ending with -",
            ));
        }
        if !is_version(&self.image) {
            return Err(invalid(
                "profile.image",
                &self.image,
                "an image version: 1-64 of A-Z a-z 0-9 . _ -",
            ));
        }
        for (i, a) in self.kernel_args.iter().enumerate() {
            let field = format!("profile.kernel_args[{i}]");
            if a.is_empty() || a.len() > 256 || !a.bytes().all(|b| b.is_ascii_graphic() && !b"\"'\\$".contains(&b)) {
                return Err(invalid(
                    field,
                    a,
                    "one argument of printable ASCII without spaces, quotes, \\ or $",
                ));
            }
            let key = a.split('=').next().unwrap_or(a);
            if RESERVED_ARGS.contains(&key) {
                return Err(invalid(field, a, "set by the provisioner from the profile; remove it"));
            }
        }
        if self.config.len() > 64 * 1024 {
            return Err(invalid("profile.config", "(template)", "at most 64 KiB"));
        }
        match (&self.mode, &self.install_disk) {
            (BootMode::Install, None) => {
                return Err(invalid(
                    "profile.install_disk",
                    "",
                    "install mode needs a disk: by_id = \"/dev/disk/by-id/...\" or only_empty = { min_gb = N }",
                ));
            }
            (BootMode::Live, Some(_)) => {
                return Err(invalid(
                    "profile.install_disk",
                    "",
                    "live mode touches no disk; remove it",
                ));
            }
            (_, Some(InstallDisk::ById(p))) => {
                let rest = p.strip_prefix("/dev/disk/by-id/").unwrap_or("");
                if rest.is_empty()
                    || rest.len() > 200
                    || !rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-@+".contains(&b))
                {
                    return Err(invalid("profile.install_disk.by_id", p, "a /dev/disk/by-id/NAME path"));
                }
            }
            (_, Some(InstallDisk::OnlyEmpty { min_gb })) if *min_gb == 0 => {
                return Err(invalid("profile.install_disk.only_empty.min_gb", "0", "at least 1"));
            }
            _ => {}
        }
        Ok(())
    }

    /// The machine config for one machine: the template with its fields filled in.
    pub fn render_config(&self, mac: Mac, hostname: &str) -> String {
        self.config
            .replace("{{hostname}}", hostname)
            .replace("{{mac}}", &mac.to_string())
            .replace("{{profile}}", &self.name)
    }
}

impl Group {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !is_name(&self.name) {
            return Err(invalid(
                "group.name",
                &self.name,
                "1-63 of a-z 0-9 -, not starting or ending with -",
            ));
        }
        if !is_name(&self.profile) {
            return Err(invalid("group.profile", &self.profile, "a profile name"));
        }
        if let Some(u) = &self.selector.uuid
            && (u.len() != 36 || !u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        {
            return Err(invalid(
                "group.selector.uuid",
                u,
                "a UUID such as 5c3a8e2e-0f4e-4c1a-9d0e-3f1b2a4c5d6e",
            ));
        }
        if let Some(a) = &self.selector.arch
            && !["x86_64", "i386", "arm64", "arm32"].contains(&a.as_str())
        {
            return Err(invalid(
                "group.selector.arch",
                a,
                "one of x86_64, i386, arm64, arm32 (iPXE's buildarch)",
            ));
        }
        for (k, v) in &self.selector.labels {
            if !is_name(k) || v.len() > 63 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(invalid(
                    format!("group.selector.labels.{k}"),
                    v,
                    "label keys a-z 0-9 -, values A-Z a-z 0-9 . _ -",
                ));
            }
        }
        Ok(())
    }
}

/// The host name of a machine without a reserved one: `node-` and its MAC's hex digits.
pub fn default_hostname(mac: Mac) -> String {
    format!("node-{}", mac.to_string().replace(':', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, profile: &str, sel: Selector) -> Group {
        Group {
            name: name.into(),
            profile: profile.into(),
            selector: sel,
        }
    }

    #[test]
    fn the_most_specific_group_wins() {
        let mac: Mac = "52:54:00:00:00:11".parse().unwrap();
        let groups = vec![
            group("default", "live", Selector::default()),
            group(
                "x86",
                "live-x86",
                Selector {
                    arch: Some("x86_64".into()),
                    ..Selector::default()
                },
            ),
            group(
                "one",
                "install",
                Selector {
                    mac: Some(mac),
                    arch: Some("x86_64".into()),
                    ..Selector::default()
                },
            ),
            group(
                "rack",
                "rack",
                Selector {
                    labels: [("rack".to_string(), "r1".to_string())].into(),
                    ..Selector::default()
                },
            ),
        ];
        let f = |m: &str, arch: &str| Facts {
            mac: m.parse().ok(),
            arch: Some(arch.into()),
            ..Facts::default()
        };
        assert_eq!(select(&groups, &f("52:54:00:00:00:11", "x86_64")).unwrap().name, "one");
        assert_eq!(select(&groups, &f("52:54:00:00:00:12", "x86_64")).unwrap().name, "x86");
        assert_eq!(
            select(&groups, &f("52:54:00:00:00:12", "arm64")).unwrap().name,
            "default"
        );
        let mut labelled = f("52:54:00:00:00:12", "arm64");
        labelled.labels.insert("rack".into(), "r1".into());
        assert_eq!(select(&groups, &labelled).unwrap().name, "rack");
        assert!(select(&groups[1..2], &f("52:54:00:00:00:12", "arm64")).is_none());
    }

    #[test]
    fn profiles_are_validated_field_by_field() {
        let good = Profile {
            name: "install-a".into(),
            mode: BootMode::Install,
            image: "0.1.0".into(),
            kernel_args: vec!["console=ttyS0".into()],
            config: "[node]\nhostname = \"{{hostname}}\"\n".into(),
            install_disk: Some(InstallDisk::ById("/dev/disk/by-id/virtio-DVDISK01".into())),
        };
        good.validate().unwrap();
        let bad = |f: fn(&mut Profile), field: &str| {
            let mut p = good.clone();
            f(&mut p);
            let e = p.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        bad(|p| p.name = "Bad Name".into(), "profile.name");
        bad(|p| p.image = "../x".into(), "profile.image");
        bad(|p| p.kernel_args.push("a b".into()), "profile.kernel_args[1]");
        bad(
            |p| p.kernel_args.push("debvisor.live=http://evil/".into()),
            "profile.kernel_args[1]",
        );
        bad(
            |p| p.kernel_args.push("debvisor.install=http://evil/".into()),
            "profile.kernel_args[1]",
        );
        bad(|p| p.kernel_args.push("ip=none".into()), "profile.kernel_args[1]");
        bad(|p| p.kernel_args.push("boot=local".into()), "profile.kernel_args[1]");
        bad(|p| p.kernel_args.push("BOOTIF=01-aa".into()), "profile.kernel_args[1]");
        bad(|p| p.install_disk = None, "profile.install_disk");
        bad(
            |p| p.install_disk = Some(InstallDisk::ById("/dev/sda".into())),
            "profile.install_disk.by_id",
        );
        bad(
            |p| {
                p.mode = BootMode::Live;
            },
            "profile.install_disk",
        );
        let m: Mac = "52:54:00:00:00:11".parse().unwrap();
        assert_eq!(good.render_config(m, "node-a"), "[node]\nhostname = \"node-a\"\n");
        assert_eq!(default_hostname(m), "node-525400000011");
    }
}
