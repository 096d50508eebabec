//! `storage/data` (free space and read-only remounts of the data
//! partition) and `resources/{memory,load,disk}`.

use std::path::Path;

use tokio::time::Instant;

use super::{Check, Outcome};

/// Used space of the filesystem holding `path`, in percent (as `df`:
/// used / (used + available to users)), and the bytes available.
pub fn usage(path: &Path) -> Result<(f64, u64), String> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs {}: {e}", path.display()))?;
    let frsize = st.fragment_size().max(1);
    let used = st.blocks().saturating_sub(st.blocks_free());
    let avail = st.blocks_available();
    let total = used + avail;
    let percent = if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    };
    Ok((percent, avail.saturating_mul(frsize)))
}

/// The mount whose mount point holds `path` (the longest prefix) in
/// `/proc/self/mountinfo` text: (mount point, read-only).
pub fn mount_of(mountinfo: &str, path: &str) -> Option<(String, bool)> {
    let mut best: Option<(String, bool)> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(opts)) = (f.get(4), f.get(5)) else {
            continue;
        };
        let point = point.replace("\\040", " ");
        let under = point == "/" || path == point || path.starts_with(&format!("{point}/"));
        // Later lines are mounted over earlier ones.
        if under && best.as_ref().is_none_or(|(b, _)| point.len() >= b.len()) {
            best = Some((point, opts.split(',').any(|o| o == "ro")));
        }
    }
    best
}

/// `MemAvailable` in `/proc/meminfo` text, in KiB.
pub fn mem_available_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The 1-minute load in `/proc/loadavg` text.
pub fn load1(loadavg: &str) -> Option<f64> {
    loadavg.split_whitespace().next()?.parse().ok()
}

/// `storage/data`.
#[derive(Debug, Clone)]
pub struct StorageCheck {
    /// The data partition's mount point.
    pub data: String,
    /// Also checked for a read-only remount (it lives on the data partition).
    pub var: String,
    /// `/proc/self/mountinfo`.
    pub mountinfo: String,
    /// Warn from this usage.
    pub warn_percent: u8,
    /// Fail from this usage.
    pub fail_percent: u8,
}

impl StorageCheck {
    /// `DATA_MOUNT` and `/var` with these limits.
    pub fn new(warn_percent: u8, fail_percent: u8) -> Self {
        Self {
            data: debvisor_api::paths::DATA_MOUNT.to_string(),
            var: "/var".to_string(),
            mountinfo: "/proc/self/mountinfo".to_string(),
            warn_percent,
            fail_percent,
        }
    }
}

#[async_trait::async_trait]
impl Check for StorageCheck {
    fn name(&self) -> &str {
        "storage/data"
    }
    fn kind(&self) -> &'static str {
        "storage"
    }
    fn required(&self) -> bool {
        true
    }
    async fn run(&self, _deadline: Instant) -> Outcome {
        if !Path::new(&self.data).is_dir() {
            return Outcome::fail(format!(
                "{} does not exist: the data partition is not mounted",
                self.data
            ));
        }
        let mountinfo = match std::fs::read_to_string(&self.mountinfo) {
            Ok(t) => t,
            Err(e) => return Outcome::fail(format!("cannot read {}: {e}", self.mountinfo)),
        };
        for path in [&self.data, &self.var] {
            if let Some((point, true)) = mount_of(&mountinfo, path)
                && point != "/"
            {
                return Outcome::fail(format!(
                    "{path} is mounted read-only (at {point}): remounted after I/O errors? See `journalctl -k`"
                ));
            }
        }
        let (percent, avail) = match usage(Path::new(&self.data)) {
            Ok(u) => u,
            Err(e) => return Outcome::fail(e),
        };
        let text = format!("{} is {percent:.0}% full ({} MiB free)", self.data, avail >> 20);
        if percent >= f64::from(self.fail_percent) {
            Outcome::fail(format!("{text}; limit {}%", self.fail_percent))
        } else if percent >= f64::from(self.warn_percent) {
            Outcome::warn(format!("{text}; warning from {}%", self.warn_percent))
        } else {
            Outcome::pass(text)
        }
    }
}

/// `resources/memory`, `resources/load` or `resources/disk`.
#[derive(Debug, Clone)]
pub enum ResourceCheck {
    /// MemAvailable in this file vs a minimum in MiB.
    Memory {
        /// `/proc/meminfo`.
        meminfo: String,
        /// The minimum.
        min_mib: u64,
    },
    /// The 1-minute load per CPU vs a warning level.
    Load {
        /// `/proc/loadavg`.
        loadavg: String,
        /// The level.
        per_cpu_warn: f64,
    },
    /// Usage of the root filesystem (a read-only squashfs: information only).
    Disk {
        /// `/`.
        root: String,
    },
}

impl ResourceCheck {
    /// The three checks with these thresholds.
    pub fn all(min_mib: u64, per_cpu_warn: f64) -> Vec<Self> {
        vec![
            Self::Memory {
                meminfo: "/proc/meminfo".into(),
                min_mib,
            },
            Self::Load {
                loadavg: "/proc/loadavg".into(),
                per_cpu_warn,
            },
            Self::Disk { root: "/".into() },
        ]
    }
}

#[async_trait::async_trait]
impl Check for ResourceCheck {
    fn name(&self) -> &str {
        match self {
            Self::Memory { .. } => "resources/memory",
            Self::Load { .. } => "resources/load",
            Self::Disk { .. } => "resources/disk",
        }
    }
    fn kind(&self) -> &'static str {
        "resources"
    }
    fn required(&self) -> bool {
        false
    }
    async fn run(&self, _deadline: Instant) -> Outcome {
        match self {
            Self::Memory { meminfo, min_mib } => {
                let text = std::fs::read_to_string(meminfo).unwrap_or_default();
                let Some(kib) = mem_available_kib(&text) else {
                    return Outcome::fail(format!("no MemAvailable in {meminfo}"));
                };
                let mib = kib / 1024;
                if mib < *min_mib {
                    Outcome::fail(format!("{mib} MiB available (minimum {min_mib} MiB)"))
                } else {
                    Outcome::pass(format!("{mib} MiB available"))
                }
            }
            Self::Load { loadavg, per_cpu_warn } => {
                let Some(load) = load1(&std::fs::read_to_string(loadavg).unwrap_or_default()) else {
                    return Outcome::fail(format!("cannot read the load from {loadavg}"));
                };
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                let per_cpu = load / cpus as f64;
                let text = format!("load {load:.2} on {cpus} CPUs ({per_cpu:.2} per CPU)");
                if per_cpu > *per_cpu_warn {
                    Outcome::warn(format!("{text}; warning above {per_cpu_warn}"))
                } else {
                    Outcome::pass(text)
                }
            }
            Self::Disk { root } => match usage(Path::new(root)) {
                Ok((percent, _)) => Outcome::pass(format!("{root} is {percent:.0}% used (read-only image)")),
                Err(e) => Outcome::fail(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Status;

    const MOUNTINFO: &str = "22 1 0:20 / / ro,relatime - squashfs /dev/vda2 ro
30 22 253:3 / /data rw,relatime shared:1 - ext4 /dev/vda4 rw
31 22 253:3 /var /var rw,relatime shared:1 - ext4 /dev/vda4 rw
40 30 0:45 / /data/x\\040y rw - tmpfs tmpfs rw
";

    #[test]
    fn mounts() {
        assert_eq!(mount_of(MOUNTINFO, "/data"), Some(("/data".into(), false)));
        assert_eq!(mount_of(MOUNTINFO, "/var/lib"), Some(("/var".into(), false)));
        assert_eq!(mount_of(MOUNTINFO, "/usr"), Some(("/".into(), true)));
        assert_eq!(mount_of(MOUNTINFO, "/data/x y/z"), Some(("/data/x y".into(), false)));
        assert_eq!(mount_of(MOUNTINFO, "/database"), Some(("/".into(), true)));
        let remounted =
            format!("{MOUNTINFO}30 22 253:3 / /data ro,relatime shared:1 - ext4 /dev/vda4 ro,errors=remount-ro\n");
        assert_eq!(mount_of(&remounted, "/data"), Some(("/data".into(), true)));
    }

    #[test]
    fn proc_files() {
        assert_eq!(
            mem_available_kib("MemTotal: 2000 kB\nMemAvailable:    1536000 kB\n"),
            Some(1_536_000)
        );
        assert_eq!(mem_available_kib("MemTotal: 2000 kB\n"), None);
        assert_eq!(load1("0.52 0.40 0.30 1/123 4567\n"), Some(0.52));
    }

    #[tokio::test]
    async fn storage_against_files() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_string();
        let info = dir.path().join("mountinfo");
        std::fs::write(
            &info,
            format!("22 1 0:20 / / rw - ext4 /dev/x rw\n30 22 0:1 / {data} ro - ext4 /dev/y ro\n"),
        )
        .unwrap();
        let mut check = StorageCheck {
            data: data.clone(),
            var: "/var".into(),
            mountinfo: info.to_str().unwrap().into(),
            warn_percent: 100,
            fail_percent: 100,
        };
        let now = Instant::now();
        let out = check.run(now).await;
        assert!(
            out.status == Status::Fail && out.message.contains("read-only"),
            "{out:?}"
        );
        std::fs::write(&info, "22 1 0:20 / / rw - ext4 /dev/x rw\n").unwrap();
        assert_eq!(check.run(now).await.status, Status::Pass);
        check.warn_percent = 0;
        assert_eq!(check.run(now).await.status, Status::Warn);
        check.fail_percent = 0;
        assert_eq!(check.run(now).await.status, Status::Fail);
        check.data = format!("{data}/missing");
        let out = check.run(now).await;
        assert!(
            out.message
                .ends_with("does not exist: the data partition is not mounted"),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn resources_against_files() {
        let dir = tempfile::tempdir().unwrap();
        let meminfo = dir.path().join("meminfo");
        std::fs::write(&meminfo, "MemAvailable: 20480 kB\n").unwrap();
        let mem = ResourceCheck::Memory {
            meminfo: meminfo.to_str().unwrap().into(),
            min_mib: 32,
        };
        assert_eq!(
            mem.run(Instant::now()).await,
            Outcome::fail("20 MiB available (minimum 32 MiB)")
        );
        let loadavg = dir.path().join("loadavg");
        std::fs::write(&loadavg, "1000.00 1.0 1.0 1/1 1\n").unwrap();
        let load = ResourceCheck::Load {
            loadavg: loadavg.to_str().unwrap().into(),
            per_cpu_warn: 4.0,
        };
        assert_eq!(load.run(Instant::now()).await.status, Status::Warn);
        let disk = ResourceCheck::Disk { root: "/".into() };
        assert_eq!(disk.run(Instant::now()).await.status, Status::Pass);
    }
}
