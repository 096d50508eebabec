//! Applying a machine config: write the files it renders to, idempotently
//! and atomically, and tell the live parts (the kernel host name,
//! networkd, timesyncd) through [`HostControl`].
//!
//! Only files that debvisor-init owns are touched: `10-debvisor-*` in
//! /etc/systemd/network, its timesyncd drop-in, /etc/hostname,
//! /etc/localtime, the admin hash, root's authorized_keys when the config
//! manages them, and role.toml.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use debvisor_api::machine::{ClusterConfig, MachineConfig, RoleConfig};
use debvisor_api::paths::{ADMIN_PASSWORD_HASH, STATE_DIR};
use serde::Serialize;

use super::render::{NETWORK_FILE_PREFIX, network_files, timesyncd_dropin};

/// Where networkd reads local network files.
pub const NETWORK_DIR: &str = "/etc/systemd/network";
/// The NTP drop-in.
pub const TIMESYNCD_DROPIN: &str = "/etc/systemd/timesyncd.conf.d/10-debvisor.conf";
/// The kernel's list of network links.
pub const SYS_CLASS_NET: &str = "/sys/class/net";
/// The time zone database.
pub const ZONEINFO_DIR: &str = "/usr/share/zoneinfo";
/// Root's SSH keys.
pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";
/// First line of an authorized_keys file written from the machine config;
/// only such a file is removed when the config drops its keys.
const AUTHORIZED_KEYS_HEADER: &str =
    "# Managed by debvisor-init from the machine config ([admin] ssh_authorized_keys).";
/// The timesyncd unit, restarted when its drop-in changes.
pub const TIMESYNCD_UNIT: &str = "systemd-timesyncd.service";

/// `role.toml` under the state directory: the role and cluster settings for
/// the agent.
pub fn role_file() -> String {
    format!("{STATE_DIR}/role.toml")
}

/// A boxed future, so that [`HostControl`] can be used as `&dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The live actions of applying a config; files are written by [`apply`]
/// itself.
pub trait HostControl: Send + Sync {
    /// Sets the kernel host name (the static one is /etc/hostname).
    fn set_hostname<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Makes systemd-networkd re-read its files (starting it if needed).
    fn reload_network(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Restarts a unit (queues the job).
    fn restart_unit<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// What an apply changed, in order; empty when the node already matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// One entry per change, e.g. `network: 10-debvisor-vlan100.netdev written`.
    pub changes: Vec<String>,
}

impl ApplyReport {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The time zone is not in the zone database.
    #[error("node.timezone = {zone:?}: no such zone in {}; use a name from `timedatectl list-timezones`", dir.display())]
    UnknownTimezone {
        /// The zone.
        zone: String,
        /// The database looked in.
        dir: PathBuf,
    },
    /// A file could not be written or removed.
    #[error("Cannot {action} {}", path.display())]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A live action failed.
    #[error("Cannot {action}: {message}")]
    Host {
        /// The action.
        action: String,
        /// The service's answer.
        message: String,
    },
}

/// `abs` (an absolute path) inside `root`.
pub fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError {
    let path = path.to_path_buf();
    move |source| ApplyError::Io { action, path, source }
}

fn host(action: impl Into<String>) -> impl FnOnce(String) -> ApplyError {
    let action = action.into();
    move |message| ApplyError::Host { action, message }
}

/// Applies `cfg` to the system under `root` ("/" in production). Writes a
/// file only when its content differs and calls `host` only for what
/// changed, so a second apply of the same config reports no changes.
pub async fn apply(cfg: &MachineConfig, root: &Path, host_ctl: &dyn HostControl) -> Result<ApplyReport, ApplyError> {
    // Checks that need the system, before anything is changed.
    if let Some(zone) = &cfg.node.timezone {
        let dir = under(root, ZONEINFO_DIR);
        if !dir.join(zone).is_file() {
            return Err(ApplyError::UnknownTimezone {
                zone: zone.clone(),
                dir,
            });
        }
    }
    let mut report = ApplyReport::default();

    // Network. When networkd cannot be told, the files written now are
    // taken back so that the next apply writes them again and retries.
    let net_dir = under(root, NETWORK_DIR);
    let mut net_changed = false;
    let mut written = Vec::new();
    let wanted = network_files(cfg.network.as_ref(), &physical_macs(&under(root, SYS_CLASS_NET)));
    for f in &wanted {
        let path = net_dir.join(&f.name);
        if write_if_changed(&path, f.contents.as_bytes(), 0o644)? {
            report.changes.push(format!("network: {} written", f.name));
            written.push(path);
            net_changed = true;
        }
    }
    if let Ok(entries) = std::fs::read_dir(&net_dir) {
        let mut stale: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(NETWORK_FILE_PREFIX) && !wanted.iter().any(|f| &f.name == n))
            .collect();
        stale.sort();
        for name in stale {
            let path = net_dir.join(&name);
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            report.changes.push(format!("network: {name} removed"));
            net_changed = true;
        }
    }
    if net_changed && let Err(e) = host_ctl.reload_network().await {
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        return Err(host("reload systemd-networkd")(e));
    }

    // NTP.
    let dropin = under(root, TIMESYNCD_DROPIN);
    let (ntp_changed, ntp_written) = match timesyncd_dropin(&cfg.node.ntp) {
        Some(text) => {
            let w = write_if_changed(&dropin, text.as_bytes(), 0o644)?;
            (w, w)
        }
        None => (remove_if_present(&dropin)?, false),
    };
    if ntp_changed {
        report.changes.push("ntp".to_string());
        if let Err(e) = host_ctl.restart_unit(TIMESYNCD_UNIT).await {
            if ntp_written {
                let _ = std::fs::remove_file(&dropin);
            }
            return Err(host(format!("restart {TIMESYNCD_UNIT}"))(e));
        }
    }

    // Host name: the kernel's first, then /etc/hostname, so that a failed
    // call is retried by the next apply.
    if let Some(name) = &cfg.node.hostname {
        let path = under(root, "/etc/hostname");
        let line = format!("{name}\n");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(line.as_str()) {
            report.changes.push("hostname".to_string());
            host_ctl.set_hostname(name).await.map_err(host("set the host name"))?;
            write_if_changed(&path, line.as_bytes(), 0o644)?;
        }
    }

    // Time zone: /etc/localtime -> ../usr/share/zoneinfo/<zone>, which is
    // all timedated would do; glibc and systemd pick the change up.
    if let Some(zone) = &cfg.node.timezone {
        let link = under(root, "/etc/localtime");
        let target = PathBuf::from(format!("..{ZONEINFO_DIR}/{zone}"));
        if std::fs::read_link(&link).ok().as_ref() != Some(&target) {
            report.changes.push("timezone".to_string());
            symlink_atomic(&target, &link)?;
        }
    }

    // Admin credential and SSH keys.
    if let Some(hash) = &cfg.admin.password_hash
        && write_if_changed(&under(root, ADMIN_PASSWORD_HASH), hash.as_bytes(), 0o600)?
    {
        report.changes.push("admin password".to_string());
    }
    let keys_path = under(root, AUTHORIZED_KEYS);
    if cfg.admin.ssh_authorized_keys.is_empty() {
        let ours = std::fs::read_to_string(&keys_path).is_ok_and(|t| t.starts_with(AUTHORIZED_KEYS_HEADER));
        if ours && remove_if_present(&keys_path)? {
            report.changes.push("ssh keys removed".to_string());
        }
    } else {
        let dir = keys_path.parent().expect("authorized_keys has a parent");
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("set the mode of", dir))?;
        let text = format!(
            "{AUTHORIZED_KEYS_HEADER}\n{}\n",
            cfg.admin.ssh_authorized_keys.join("\n")
        );
        if write_if_changed(&keys_path, text.as_bytes(), 0o600)? {
            report.changes.push("ssh keys".to_string());
        }
    }

    // Role and cluster settings, for the agent.
    #[derive(Serialize)]
    struct Role<'a> {
        role: &'a RoleConfig,
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster: Option<&'a ClusterConfig>,
    }
    let role = toml::to_string(&Role {
        role: &cfg.role,
        cluster: cfg.cluster.as_ref(),
    })
    .expect("role settings serialise");
    let role_path = under(root, &role_file());
    if write_if_changed(&role_path, role.as_bytes(), 0o600)? {
        report.changes.push(format!("role: {}", cfg.role.kind.as_str()));
    }
    Ok(report)
}

/// MAC address (lowercase) -> kernel name of each physical link in
/// `sys_class_net` (those with a `device`; VLANs and bonds share their
/// parent's MAC and have none).
pub fn physical_macs(sys_class_net: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(sys_class_net) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let dir = e.ok()?.path();
            if !dir.join("device").exists() {
                return None;
            }
            let mac = std::fs::read_to_string(dir.join("address"))
                .ok()?
                .trim()
                .to_ascii_lowercase();
            Some((mac, dir.file_name()?.to_str()?.to_string()))
        })
        .collect()
}

/// Writes `contents` to `path` (creating its directory) unless it already
/// holds exactly that with `mode`; returns whether it wrote.
pub fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> Result<bool, ApplyError> {
    let same_content = std::fs::read(path).is_ok_and(|old| old == contents);
    let same_mode = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
    if same_content && same_mode {
        return Ok(false);
    }
    write_atomic(path, contents, mode)?;
    Ok(true)
}

fn remove_if_present(path: &Path) -> Result<bool, ApplyError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove", path)(e)),
    }
}

/// A name for a temporary file beside `path`.
fn temp_beside(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Writes `contents` to a temporary file in `path`'s directory with `mode`,
/// syncs it and renames it over `path`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), ApplyError> {
    let dir = path.parent().expect("absolute path");
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = temp_beside(path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io("write", path))
}

fn symlink_atomic(target: &Path, link: &Path) -> Result<(), ApplyError> {
    let dir = link.parent().expect("absolute path");
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = temp_beside(link);
    std::os::unix::fs::symlink(target, &tmp).map_err(io("create a symlink at", &tmp))?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("replace", link)(e)
    })
}

#[zbus::proxy(
    interface = "org.freedesktop.network1.Manager",
    default_service = "org.freedesktop.network1",
    default_path = "/org/freedesktop/network1"
)]
trait Network1 {
    fn reload(&self) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Systemd1 {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<zbus::OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<zbus::OwnedObjectPath>;
}

/// The live [`HostControl`]: the kernel host name, and over the system bus
/// networkd and systemd.
#[derive(Clone)]
pub struct DbusHost {
    conn: zbus::Connection,
}

impl DbusHost {
    /// Connects to the system bus.
    pub async fn connect() -> zbus::Result<Self> {
        Ok(Self {
            conn: zbus::Connection::system().await?,
        })
    }

    /// Uses an existing connection (e.g. a test bus).
    pub fn with_connection(conn: zbus::Connection) -> Self {
        Self { conn }
    }
}

impl HostControl for DbusHost {
    /// sethostname(2) directly: hostnamed is bus-activated and sandboxed,
    /// and activating it while the node boots under TCG timed out (25 s);
    /// it would only make the same call and write /etc/hostname, which
    /// [`apply`] writes itself.
    fn set_hostname<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { nix::unistd::sethostname(name).map_err(|e| format!("sethostname({name}): {e}")) })
    }

    fn reload_network(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let reloaded = match Network1Proxy::new(&self.conn).await {
                Ok(p) => p.reload().await,
                Err(e) => Err(e),
            };
            if let Err(reload) = reloaded {
                // networkd is not running (or not reachable): starting it
                // reads the files anyway.
                let sd = Systemd1Proxy::new(&self.conn).await.map_err(|e| e.to_string())?;
                sd.start_unit("systemd-networkd.service", "replace")
                    .await
                    .map_err(|e| {
                        format!("Reload failed ({reload}) and starting systemd-networkd.service failed: {e}")
                    })?;
            }
            Ok(())
        })
    }

    fn restart_unit<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let sd = Systemd1Proxy::new(&self.conn).await.map_err(|e| e.to_string())?;
            sd.restart_unit(unit, "replace")
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
