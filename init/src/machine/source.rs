//! Where the machine config comes from, in order: the kernel command line
//! (`debvisor.config=URL`), a config medium labelled `DEBVISORCFG`, the
//! copy on the data partition. The first that exists wins. An invalid
//! config (or one that cannot be fetched) never bricks the node: the error
//! is kept and the node runs on the last good config, or on the defaults.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use debvisor_api::machine::MachineConfig;
use debvisor_api::paths::{CONFIG_MEDIUM_LABEL, MACHINE_CONFIG, MACHINE_CONFIG_LAST_GOOD};

use super::apply::{ApplyReport, HostControl, apply, write_atomic};
use crate::console::marker;

/// The kernel command line parameter naming the config URL.
pub const CMDLINE_KEY: &str = "debvisor.config";
/// The file read at the root of a config medium.
pub const MEDIUM_FILE: &str = "machine.toml";
/// Where an installer (PXE or USB) leaves the machine config it was given,
/// on the data partition it formatted: read on the first boot from disk when
/// no URL or medium is given, kept as the data partition's copy, then removed.
pub const INSTALLER_HANDOVER: &str = "/data/install/machine.toml";
/// The largest config accepted from any source.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Where the config in effect came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `debvisor.config=URL` on the kernel command line.
    CommandLine(String),
    /// `machine.toml` on a config medium (the device or directory).
    Medium(PathBuf),
    /// The config an installer left on the data partition for the first
    /// boot from disk ([`INSTALLER_HANDOVER`]); adopted once, then removed.
    Installer(PathBuf),
    /// The copy on the data partition.
    DataPartition(PathBuf),
    /// The last config that was valid and applied (after an error).
    LastGood(PathBuf),
    /// Built-in safe defaults.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::CommandLine(url) => write!(f, "{CMDLINE_KEY}={url}"),
            Source::Medium(p) => write!(f, "config medium {}", p.display()),
            Source::Installer(p) => write!(f, "installer's config {}", p.display()),
            Source::DataPartition(p) => write!(f, "{}", p.display()),
            Source::LastGood(p) => write!(f, "last good config {}", p.display()),
            Source::Default => f.write_str("built-in defaults"),
        }
    }
}

/// Where a config medium is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Medium {
    /// A block device, mounted read-only on `mount_dir` while it is read.
    Device {
        /// e.g. /dev/disk/by-label/DEBVISORCFG.
        device: PathBuf,
        /// A private, empty directory.
        mount_dir: PathBuf,
    },
    /// A directory that is already mounted (e.g. an installer medium).
    Directory(PathBuf),
}

/// How a URL is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first, for connection errors, timeouts and 5xx.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

/// The locations [`load`] reads and writes; [`SourcePaths::production`]
/// on a node, temporary directories in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePaths {
    /// The config medium.
    pub medium: Medium,
    /// The installer's hand-over ([`INSTALLER_HANDOVER`]).
    pub handover: PathBuf,
    /// The copy on the data partition ([`MACHINE_CONFIG`]).
    pub machine_config: PathBuf,
    /// The last good copy ([`MACHINE_CONFIG_LAST_GOOD`]).
    pub last_good: PathBuf,
    /// URL fetching.
    pub fetch: FetchPolicy,
}

impl SourcePaths {
    /// The node's paths.
    pub fn production() -> Self {
        Self {
            medium: Medium::Device {
                device: PathBuf::from(format!("/dev/disk/by-label/{CONFIG_MEDIUM_LABEL}")),
                mount_dir: PathBuf::from("/run/debvisor/config-medium"),
            },
            handover: PathBuf::from(INSTALLER_HANDOVER),
            machine_config: PathBuf::from(MACHINE_CONFIG),
            last_good: PathBuf::from(MACHINE_CONFIG_LAST_GOOD),
            fetch: FetchPolicy::default(),
        }
    }
}

/// The config in effect and how it was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The config to apply.
    pub config: MachineConfig,
    /// Where it came from.
    pub source: Source,
    /// Why the first source's config is not in effect, naming that source.
    pub error: Option<String>,
    /// [`MachineConfig::digest`] of `config`.
    pub digest: String,
}

/// The value of `debvisor.config=` on `cmdline` (the last one wins).
pub fn cmdline_url(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(CMDLINE_KEY)?.strip_prefix('='))
        .next_back()
        .filter(|u| !u.is_empty())
}

/// Finds, reads and validates the machine config (see the module doc). A
/// valid config from the command line or a medium is also copied to the
/// data partition.
pub async fn load(cmdline: &str, paths: &SourcePaths) -> Loaded {
    let first = if let Some(url) = cmdline_url(cmdline) {
        Some((Source::CommandLine(url.to_string()), fetch(url, &paths.fetch).await))
    } else if let Some((source, text)) = read_medium(&paths.medium).await {
        Some((source, text))
    } else if paths.handover.exists() {
        Some((Source::Installer(paths.handover.clone()), read(&paths.handover)))
    } else if paths.machine_config.exists() {
        Some((
            Source::DataPartition(paths.machine_config.clone()),
            read(&paths.machine_config),
        ))
    } else {
        None
    };
    let Some((source, text)) = first else {
        return loaded(MachineConfig::default(), Source::Default, None);
    };
    let parsed = text.and_then(|t| MachineConfig::from_toml(&t).map(|c| (c, t)).map_err(|e| e.to_string()));
    match parsed {
        Ok((config, text)) => {
            if !matches!(source, Source::DataPartition(_))
                && let Err(e) = write_atomic(&paths.machine_config, text.as_bytes(), 0o600)
            {
                tracing::warn!("Cannot keep the machine config from {source}: {e}");
            } else if let Source::Installer(p) = &source
                && let Err(e) = std::fs::remove_file(p)
            {
                tracing::warn!("Cannot remove {}: {e}", p.display());
            }
            loaded(config, source, None)
        }
        Err(e) => fallback(paths, format!("machine config from {source}: {e}")),
    }
}

fn loaded(config: MachineConfig, source: Source, error: Option<String>) -> Loaded {
    let digest = config.digest();
    Loaded {
        config,
        source,
        error,
        digest,
    }
}

/// The last good config if it is there and valid, else the defaults.
fn fallback(paths: &SourcePaths, error: String) -> Loaded {
    let last_good = read(&paths.last_good).and_then(|t| MachineConfig::from_toml(&t).map_err(|e| e.to_string()));
    match last_good {
        Ok(config) => loaded(config, Source::LastGood(paths.last_good.clone()), Some(error)),
        Err(_) => loaded(MachineConfig::default(), Source::Default, Some(error)),
    }
}

fn read(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text_of(bytes)
}

fn text_of(bytes: Vec<u8>) -> Result<String, String> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "{} bytes; a machine config is at most {MAX_CONFIG_BYTES}",
            bytes.len()
        ));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// `machine.toml` from the medium; `None` when there is no medium or it
/// carries no machine.toml.
async fn read_medium(medium: &Medium) -> Option<(Source, Result<String, String>)> {
    match medium {
        Medium::Directory(dir) => {
            let file = dir.join(MEDIUM_FILE);
            file.exists().then(|| (Source::Medium(file.clone()), read(&file)))
        }
        Medium::Device { device, mount_dir } => {
            if !device.exists() {
                return None;
            }
            let source = Source::Medium(device.clone());
            if let Err(e) = mount_ro(device, mount_dir).await {
                return Some((source, Err(e)));
            }
            let file = mount_dir.join(MEDIUM_FILE);
            let text = file.exists().then(|| read(&file));
            if let Err(e) = run("umount", &[mount_dir.as_os_str()]).await {
                tracing::warn!("Cannot unmount the config medium: {e}");
            }
            if text.is_none() {
                tracing::warn!("Config medium {} has no {MEDIUM_FILE} at its root", device.display());
            }
            text.map(|t| (source, t))
        }
    }
}

async fn mount_ro(device: &Path, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let args = [
        "-o".as_ref(),
        "ro,nodev,nosuid,noexec".as_ref(),
        "-t".as_ref(),
        "vfat,iso9660,ext4".as_ref(),
        device.as_os_str(),
        dir.as_os_str(),
    ];
    run("mount", &args).await
}

async fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Fetches `url` (http, https or file).
pub async fn fetch(url: &str, policy: &FetchPolicy) -> Result<String, String> {
    if let Some(path) = url.strip_prefix("file://") {
        return read(Path::new(path));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("unsupported URL scheme: use http://, https:// or file://".to_string());
    }
    // reqwest is built without a crypto provider: use ring, as the rest of
    // DebVisor does. Fails harmlessly when one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(policy.timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut attempt = 0;
    loop {
        let result = fetch_once(&client, url).await;
        match result {
            Ok(text) => return Ok(text),
            Err((err, retryable)) if !retryable || attempt >= policy.retries => {
                return Err(if attempt == 0 {
                    err
                } else {
                    format!("{err} (after {} attempts)", attempt + 1)
                });
            }
            Err((err, _)) => {
                let wait = policy.backoff.saturating_mul(1 << attempt.min(16));
                tracing::warn!("Fetching the machine config from {url}: {err}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

/// One GET; the error says whether another attempt may help.
async fn fetch_once(client: &reqwest::Client, url: &str) -> Result<String, (String, bool)> {
    let describe = |e: reqwest::Error| {
        let what = if e.is_timeout() { "timed out" } else { "failed" };
        let mut msg = format!("GET {what}: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        (msg, true)
    };
    let resp = client.get(url).send().await.map_err(describe)?;
    let status = resp.status();
    if !status.is_success() {
        let retryable = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
        return Err((format!("HTTP {status}"), retryable));
    }
    if resp.content_length().is_some_and(|n| n > MAX_CONFIG_BYTES as u64) {
        return Err((format!("body larger than {MAX_CONFIG_BYTES} bytes"), false));
    }
    let bytes = resp.bytes().await.map_err(describe)?;
    text_of(bytes.to_vec()).map_err(|e| (e, false))
}

/// What [`load_and_apply`] did.
#[derive(Debug)]
pub struct Outcome {
    /// The config in effect (after any fallback).
    pub loaded: Loaded,
    /// What applying it changed; `None` when not even the defaults could be
    /// applied.
    pub report: Option<ApplyReport>,
    /// The error shown on the console and dashboard, if any.
    pub error: Option<String>,
    /// The serial console markers written, in order, as (what, details).
    pub markers: Vec<(&'static str, String)>,
}

/// Loads the config, applies it and records it as the last good one; on an
/// error applies the last good config (or the defaults) instead. Writes
/// marker lines on the serial console: `config-error <message>` for each
/// error, then `config-applied <digest>` when the config from the first
/// source is in effect, or `config-fallback <digest> <source>` when the node
/// runs on the last good config or the defaults instead.
pub async fn load_and_apply(cmdline: &str, paths: &SourcePaths, root: &Path, host: &dyn HostControl) -> Outcome {
    let mut markers = Vec::new();
    let mut loaded = load(cmdline, paths).await;
    if let Some(e) = &loaded.error {
        markers.push(("config-error", one_line(e)));
    }
    let report = loop {
        match apply(&loaded.config, root, host).await {
            Ok(report) => break Some(report),
            Err(e) => {
                let msg = format!("machine config from {}: {e}", loaded.source);
                markers.push(("config-error", one_line(&msg)));
                let error = Some(loaded.error.take().unwrap_or(msg));
                loaded = match loaded.source {
                    Source::CommandLine(_) | Source::Medium(_) | Source::Installer(_) | Source::DataPartition(_) => {
                        Loaded {
                            error,
                            ..fallback(paths, String::new())
                        }
                    }
                    Source::LastGood(_) => Loaded {
                        error,
                        ..self::loaded(MachineConfig::default(), Source::Default, None)
                    },
                    Source::Default => {
                        loaded.error = error;
                        break None;
                    }
                };
            }
        }
    };
    if report.is_some() {
        if loaded.error.is_none() {
            if loaded.source != Source::Default
                && let Err(e) = write_atomic(&paths.last_good, loaded.config.to_toml().as_bytes(), 0o600)
            {
                tracing::warn!("Cannot record the last good machine config: {e}");
            }
            markers.push(("config-applied", loaded.digest.clone()));
        } else {
            markers.push(("config-fallback", format!("{} {}", loaded.digest, loaded.source)));
        }
    }
    for (what, details) in &markers {
        marker(what, details);
    }
    let error = loaded.error.clone();
    Outcome {
        loaded,
        report,
        error,
        markers,
    }
}

/// A message on one line, for a console marker.
pub fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
