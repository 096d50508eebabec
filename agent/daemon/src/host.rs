//! Host facts: the trait the node service reads from, and its production
//! implementation over /proc, /usr/lib/os-release and statvfs.

use std::path::{Path, PathBuf};

use debvisor_api::node::v1::{Disk, GetStatusResponse, LoadAverage, Memory};
use nix::sys::statvfs::{FsFlags, statvfs};

/// A host-facts read that failed, with the file it was reading.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file could not be read.
    #[error("Cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file did not have the expected shape.
    #[error("Unexpected contents in {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The blocking task that reads the host did not finish.
    #[error("Status sampling task failed: {0}")]
    Task(String),
}

/// The facts a node reports about itself. One production implementation
/// ([`ProcHost`]) and one fake ([`crate::fakes::FakeHost`]).
pub trait HostFacts: Send + Sync + 'static {
    /// Reads the node's current status.
    fn status(&self) -> Result<GetStatusResponse, HostError>;
}

/// Reads the real host. `root` is `/` in production; tests point it at a
/// directory laid out like one.
#[derive(Debug, Clone)]
pub struct ProcHost {
    root: PathBuf,
    /// Mount points to report, with their names (root, data).
    mounts: Vec<(String, PathBuf)>,
}

impl ProcHost {
    /// A host reader rooted at `root`, reporting the root and data mounts.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let mounts = vec![
            ("root".to_string(), PathBuf::from("/")),
            ("data".to_string(), PathBuf::from(debvisor_api::paths::DATA_MOUNT)),
        ];
        Self { root, mounts }
    }

    fn read(&self, rel: &str) -> Result<String, HostError> {
        let path = self.root.join(rel.trim_start_matches('/'));
        std::fs::read_to_string(&path).map_err(|source| HostError::Read { path, source })
    }

    fn parse_err(&self, rel: &str, what: impl Into<String>) -> HostError {
        HostError::Parse {
            path: self.root.join(rel.trim_start_matches('/')),
            what: what.into(),
        }
    }

    fn disks(&self) -> Vec<Disk> {
        let mounts = self.read("/proc/self/mounts").unwrap_or_default();
        self.mounts
            .iter()
            .filter(|(_, mp)| mp == Path::new("/") || is_mount_point(&mounts, mp))
            .filter_map(|(name, mp)| {
                let st = statvfs(&self.root.join(mp.strip_prefix("/").unwrap_or(mp))).ok()?;
                let frsize = st.fragment_size();
                let total = st.blocks() * frsize;
                let free = st.blocks_free() * frsize;
                Some(Disk {
                    name: name.clone(),
                    mount_point: mp.display().to_string(),
                    total_bytes: total,
                    available_bytes: st.blocks_available() * frsize,
                    used_bytes: total.saturating_sub(free),
                    read_only: st.flags().contains(FsFlags::ST_RDONLY),
                })
            })
            .collect()
    }
}

impl HostFacts for ProcHost {
    fn status(&self) -> Result<GetStatusResponse, HostError> {
        let os_release = self
            .read("/usr/lib/os-release")
            .or_else(|_| self.read("/etc/os-release"))?;
        let os = parse_os_release(&os_release);
        let uptime = self.read("/proc/uptime")?;
        let uptime_seconds = parse_uptime(&uptime).ok_or_else(|| self.parse_err("/proc/uptime", "no number"))?;
        let load = self.read("/proc/loadavg")?;
        let load = parse_loadavg(&load).ok_or_else(|| self.parse_err("/proc/loadavg", "fewer than 3 numbers"))?;
        let meminfo = self.read("/proc/meminfo")?;
        let memory =
            parse_meminfo(&meminfo).ok_or_else(|| self.parse_err("/proc/meminfo", "no MemTotal or MemAvailable"))?;
        let cmdline = self.read("/proc/cmdline")?;
        Ok(GetStatusResponse {
            hostname: self.read("/proc/sys/kernel/hostname")?.trim().to_string(),
            image_version: os.get("IMAGE_VERSION").cloned().unwrap_or_default(),
            image_id: os.get("IMAGE_ID").cloned().unwrap_or_default(),
            booted_slot: booted_slot(&cmdline).unwrap_or_default(),
            uptime_seconds,
            load: Some(load),
            memory: Some(memory),
            disks: self.disks(),
            kernel: self.read("/proc/sys/kernel/osrelease")?.trim().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            simulated: false,
            sampled_at_unix_ms: now_unix_ms(),
        })
    }
}

/// Milliseconds since the Unix epoch by the system clock (0 if the clock is
/// before 1970).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn is_mount_point(mounts: &str, mp: &Path) -> bool {
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1).is_some_and(|m| Path::new(m) == mp))
}

/// Parses os-release(5): KEY=value lines, values optionally quoted.
pub fn parse_os_release(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

/// The first field of /proc/uptime.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The three load averages of /proc/loadavg.
pub fn parse_loadavg(text: &str) -> Option<LoadAverage> {
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>());
    Some(LoadAverage {
        one: it.next()?.ok()?,
        five: it.next()?.ok()?,
        fifteen: it.next()?.ok()?,
    })
}

/// MemTotal and MemAvailable from /proc/meminfo, in bytes.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))?;
        let kib: u64 = line[name.len() + 1..].split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    Some(Memory {
        total_bytes: total,
        available_bytes: available,
        used_bytes: total.saturating_sub(available),
    })
}

/// The slot named by `rauc.slot=` on the kernel command line.
pub fn booted_slot(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("rauc.slot="))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_uptime("123.45 200.10\n"), Some(123.45));
        let l = parse_loadavg("0.50 0.25 0.10 1/123 4567\n").unwrap();
        assert_eq!((l.one, l.five, l.fifteen), (0.5, 0.25, 0.1));
        assert!(parse_loadavg("0.5").is_none());
        let m = parse_meminfo("MemTotal:        2000 kB\nMemFree: 10 kB\nMemAvailable:    500 kB\n").unwrap();
        assert_eq!(
            (m.total_bytes, m.available_bytes, m.used_bytes),
            (2_048_000, 512_000, 1_536_000)
        );
        assert!(parse_meminfo("MemTotalX: 5 kB\n").is_none());
        assert_eq!(booted_slot("BOOT_IMAGE=x rauc.slot=B quiet").as_deref(), Some("B"));
        assert_eq!(booted_slot("quiet"), None);
        let os = parse_os_release("# c\nID=debian\nIMAGE_VERSION=\"0.1.0\"\nIMAGE_ID=debvisor-node\n");
        assert_eq!(os["IMAGE_VERSION"], "0.1.0");
        assert_eq!(os["ID"], "debian");
    }

    #[test]
    fn reads_a_host_tree() {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w("usr/lib/os-release", "IMAGE_ID=debvisor-node\nIMAGE_VERSION=1.2.3\n");
        w("proc/uptime", "42.0 1.0\n");
        w("proc/loadavg", "1.00 2.00 3.00 1/1 1\n");
        w("proc/meminfo", "MemTotal: 4 kB\nMemAvailable: 1 kB\n");
        w("proc/cmdline", "boot=debvisor rauc.slot=A\n");
        w("proc/sys/kernel/hostname", "node1\n");
        w("proc/sys/kernel/osrelease", "6.1.0-test\n");
        w("proc/self/mounts", "");
        let s = ProcHost::new(dir.path()).status().unwrap();
        assert_eq!(s.hostname, "node1");
        assert_eq!(s.image_version, "1.2.3");
        assert_eq!(s.booted_slot, "A");
        assert_eq!(s.kernel, "6.1.0-test");
        assert_eq!(
            s.disks.len(),
            1,
            "only the root is reported when /data is not a mount point"
        );
        assert!(s.disks[0].total_bytes > 0);
        assert!(!s.simulated);
    }

    #[test]
    fn missing_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = ProcHost::new(dir.path()).status().unwrap_err().to_string();
        assert!(err.contains("os-release"), "{err}");
    }
}
