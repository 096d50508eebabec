//! Host facts: the trait the node service reads from, and its production
//! implementation over /proc, /sys/class/net, /usr/lib/os-release and
//! statvfs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use debvisor_api::node::v1::{Cpu, Disk, GetStatusResponse, LoadAverage, Memory, NetworkInterface};
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
    /// The previous /proc/stat reading, so that CPU usage covers the time
    /// between two samples (shared by clones).
    previous_cpu: Arc<Mutex<Option<(Instant, CpuTimes)>>>,
}

impl ProcHost {
    /// A host reader rooted at `root`, reporting the root and data mounts.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let mounts = vec![
            ("root".to_string(), PathBuf::from("/")),
            ("data".to_string(), PathBuf::from(debvisor_api::paths::DATA_MOUNT)),
        ];
        Self {
            root,
            mounts,
            previous_cpu: Arc::new(Mutex::new(None)),
        }
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

    /// CPU usage since the previous call (since boot on the first).
    fn cpu(&self, uptime_seconds: f64) -> Result<Cpu, HostError> {
        let text = self.read("/proc/stat")?;
        let now = parse_proc_stat(&text).ok_or_else(|| self.parse_err("/proc/stat", "no cpu line"))?;
        let mut previous = self.previous_cpu.lock().unwrap_or_else(|p| p.into_inner());
        let at = Instant::now();
        let cpu = match previous.as_ref() {
            Some((then, before)) => cpu_usage(Some(before), &now, at.duration_since(*then).as_millis() as u64),
            None => cpu_usage(None, &now, (uptime_seconds * 1000.0) as u64),
        };
        *previous = Some((at, now));
        Ok(cpu)
    }

    /// Every interface but loopback, with its link state.
    fn interfaces(&self) -> Result<Vec<NetworkInterface>, HostError> {
        let text = self.read("/proc/net/dev")?;
        let mut list =
            parse_net_dev(&text).ok_or_else(|| self.parse_err("/proc/net/dev", "a line without counters"))?;
        list.retain(|i| i.name != "lo");
        for i in &mut list {
            // Kernel names never hold a slash; refuse one rather than leave /sys.
            let state = if i.name.contains('/') || i.name.starts_with('.') {
                None
            } else {
                self.read(&format!("/sys/class/net/{}/operstate", i.name)).ok()
            };
            i.operstate = state.map(|s| s.trim().to_string()).unwrap_or_else(|| "unknown".into());
            i.up = matches!(i.operstate.as_str(), "up" | "unknown");
        }
        Ok(list)
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
        let cpu = self.cpu(uptime_seconds)?;
        let interfaces = self.interfaces()?;
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
            cpu: Some(cpu),
            interfaces,
        })
    }
}

/// Cumulative CPU times from /proc/stat, in clock ticks: the whole machine
/// and each CPU, as (busy, total).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTimes {
    /// The `cpu` line.
    pub all: (u64, u64),
    /// The `cpuN` lines, in order.
    pub each: Vec<(u64, u64)>,
}

/// (busy, total) of one /proc/stat cpu line's numbers: busy is everything
/// but idle (4th) and iowait (5th); guest columns (9th, 10th) are already in
/// user and nice.
fn busy_total(numbers: &[u64]) -> (u64, u64) {
    let total: u64 = numbers.iter().take(8).sum();
    let idle = numbers.get(3).copied().unwrap_or(0) + numbers.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Parses the cpu lines of /proc/stat (None without a `cpu` line or with a
/// number that does not parse).
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let mut all = None;
    let mut each = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(label) = words.next().filter(|w| w.starts_with("cpu")) else {
            continue;
        };
        let numbers: Vec<u64> = words.map(str::parse).collect::<Result<_, _>>().ok()?;
        if numbers.len() < 4 {
            return None;
        }
        if label == "cpu" {
            all = Some(busy_total(&numbers));
        } else if label[3..].parse::<u32>().is_ok() {
            each.push(busy_total(&numbers));
        }
    }
    Some(CpuTimes { all: all?, each })
}

/// The busy share between two readings (from zero when there is no earlier
/// reading), 0.0-1.0; 0 when no time passed.
fn share(before: Option<(u64, u64)>, now: (u64, u64)) -> f64 {
    let (b0, t0) = before.unwrap_or((0, 0));
    let busy = now.0.saturating_sub(b0);
    let total = now.1.saturating_sub(t0);
    if total == 0 {
        0.0
    } else {
        (busy as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// CPU usage between `before` (None: boot) and `now`, over `period_ms`.
pub fn cpu_usage(before: Option<&CpuTimes>, now: &CpuTimes, period_ms: u64) -> Cpu {
    Cpu {
        count: now.each.len() as u32,
        busy_fraction: share(before.map(|b| b.all), now.all),
        per_cpu_busy_fraction: now
            .each
            .iter()
            .enumerate()
            .map(|(i, n)| share(before.and_then(|b| b.each.get(i).copied()), *n))
            .collect(),
        period_ms,
    }
}

/// Parses /proc/net/dev: every interface with its byte and packet counters
/// (link state left empty). None when a line has fewer than 16 counters or
/// one that is not a number.
pub fn parse_net_dev(text: &str) -> Option<Vec<NetworkInterface>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| !name.contains('|'))
        .map(|(name, rest)| {
            let n: Vec<u64> = rest.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
            if n.len() < 16 {
                return None;
            }
            Some(NetworkInterface {
                name: name.trim().to_string(),
                rx_bytes: n[0],
                rx_packets: n[1],
                tx_bytes: n[8],
                tx_packets: n[9],
                up: false,
                operstate: String::new(),
            })
        })
        .collect()
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
        w("proc/stat", STAT_1);
        w("proc/net/dev", NET_DEV);
        w("sys/class/net/enp0s1/operstate", "up\n");
        w("sys/class/net/br0/operstate", "down\n");
        let host = ProcHost::new(dir.path());
        let s = host.status().unwrap();
        let cpu = s.cpu.unwrap();
        assert_eq!(cpu.count, 2);
        assert_eq!(cpu.period_ms, 42_000, "the first sample covers the uptime");
        assert!((cpu.busy_fraction - 0.2).abs() < 1e-9, "{cpu:?}");
        let names: Vec<_> = s
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i.up, i.operstate.as_str()))
            .collect();
        assert_eq!(
            names,
            [("enp0s1", true, "up"), ("br0", false, "down")],
            "loopback is left out"
        );
        assert_eq!(s.interfaces[0].rx_bytes, 5_000);
        w("proc/stat", STAT_2);
        let cpu = host.clone().status().unwrap().cpu.unwrap();
        // Between the two readings: 100 busy of 200 ticks; cpu0 all busy.
        assert!((cpu.busy_fraction - 0.5).abs() < 1e-9, "{cpu:?}");
        assert_eq!(cpu.per_cpu_busy_fraction, [1.0, 0.0]);
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

    const STAT_1: &str = "cpu  100 0 100 500 300 0 0 0 50 0\n\
                          cpu0 50 0 50 250 150 0 0 0 25 0\n\
                          cpu1 50 0 50 250 150 0 0 0 25 0\n\
                          intr 12345 1 2\nctxt 999\nbtime 1700000000\n";
    const STAT_2: &str = "cpu  150 0 150 550 350 0 0 0 50 0\n\
                          cpu0 100 0 100 250 150 0 0 0 25 0\n\
                          cpu1 50 0 50 300 200 0 0 0 25 0\n";
    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit\n \
        face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
        lo:  900 9 0 0 0 0 0 0 900 9 0 0 0 0 0 0\n\
        enp0s1: 5000 50 0 0 0 0 0 0 7000 70 0 0 0 0 0 0\n   \
        br0: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn parses_cpu_and_network_counters() {
        let a = parse_proc_stat(STAT_1).unwrap();
        assert_eq!(a.all, (200, 1000), "guest time is not counted twice");
        assert_eq!(a.each.len(), 2);
        let b = parse_proc_stat(STAT_2).unwrap();
        let c = cpu_usage(Some(&a), &b, 1000);
        assert_eq!((c.count, c.period_ms), (2, 1000));
        assert_eq!(c.busy_fraction, 0.5);
        assert_eq!(c.per_cpu_busy_fraction, [1.0, 0.0]);
        assert_eq!(cpu_usage(Some(&b), &b, 0).busy_fraction, 0.0, "no time passed");
        assert!(parse_proc_stat("intr 1 2\n").is_none());
        assert!(parse_proc_stat("cpu 1 x 3 4\n").is_none());
        let nets = parse_net_dev(NET_DEV).unwrap();
        assert_eq!(nets.len(), 3);
        let e = &nets[1];
        assert_eq!(
            (e.name.as_str(), e.rx_bytes, e.rx_packets, e.tx_bytes, e.tx_packets),
            ("enp0s1", 5000, 50, 7000, 70)
        );
        assert!(parse_net_dev("eth0: 1 2 3\n").is_none());
    }

    #[test]
    fn missing_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = ProcHost::new(dir.path()).status().unwrap_err().to_string();
        assert!(err.contains("os-release"), "{err}");
    }
}
