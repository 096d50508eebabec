//! A DebVisor node under test: where things live, building the image with
//! debvisor-image, and booting a node until its services answer from the host.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use debvisor_api::config::{ADMIN_BUNDLE, ClientConfig, Context};
use debvisor_api::node::v1::GetStatusResponse;

use crate::probes;
use crate::qemu::{Accel, Boot, Nic, Vm, VmSpec};
use crate::serial::{BootInfo, SerialGuest};

/// Locations of the workspace and the harness's output.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    /// The workspace root: `DEBVISOR_ROOT`, else the nearest parent of the
    /// current directory with a `[workspace]` Cargo.toml, else where this
    /// crate was compiled.
    pub fn discover() -> Paths {
        if let Some(r) = std::env::var_os("DEBVISOR_ROOT") {
            return Paths { root: r.into() };
        }
        if let Ok(cwd) = std::env::current_dir() {
            for dir in cwd.ancestors() {
                let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
                if toml.contains("[workspace]") && dir.join("qa").is_dir() {
                    return Paths { root: dir.into() };
                }
            }
        }
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        Paths {
            root: here.parent().unwrap_or(here).into(),
        }
    }
    pub fn qa(&self) -> PathBuf {
        self.root.join("target/qa")
    }
    pub fn image(&self) -> PathBuf {
        self.qa().join("image")
    }
    pub fn lab(&self) -> PathBuf {
        self.qa().join("lab")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.qa().join("artifacts")
    }
    pub fn bench(&self) -> PathBuf {
        self.qa().join("bench")
    }
    pub fn cache(&self) -> PathBuf {
        self.root.join("target/debvisor-cache")
    }
}

/// Builds the node image into `out` with debvisor-image (release build),
/// passing its progress display through. `cache` overrides the builder's
/// cache directory. Returns the wall time of the image build alone.
pub fn build_image(paths: &Paths, out: &Path, cache: Option<&Path>) -> Result<Duration> {
    let opts = ImageOptions {
        cache: cache.map(Path::to_path_buf),
        ..ImageOptions::default()
    };
    build_image_with(paths, out, &opts)
}

/// Options of an image build beyond the recipe (see image/README.md).
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// The builder's cache directory (default: target/debvisor-cache).
    pub cache: Option<PathBuf>,
    /// Recipe file (default: recipes/node.toml).
    pub recipe: Option<PathBuf>,
    /// Test variant: image version instead of the recipe's (`--version`).
    pub version: Option<String>,
    /// Test variant: files written into the image, (absolute path, one line of text) (`--mark-file`).
    pub mark_files: Vec<(String, String)>,
    /// Test variant: units masked in addition to the recipe's (`--mask`).
    pub mask: Vec<String>,
    /// Use the workspace binaries already in target/release (`--no-cargo`).
    pub no_cargo: bool,
}

impl ImageOptions {
    /// A test variant of the node recipe: another version, a marker file
    /// `/etc/debvisor-marker` holding `marker`, and `mask`ed units. It reuses
    /// the cached base root file system of the node image.
    pub fn variant(version: &str, marker: &str, mask: &[&str]) -> Self {
        Self {
            version: Some(version.to_owned()),
            mark_files: vec![("/etc/debvisor-marker".to_owned(), marker.to_owned())],
            mask: mask.iter().map(|u| (*u).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// The builder's arguments after `build --recipe R --out DIR`.
    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        if let Some(c) = &self.cache {
            a.extend(["--cache".into(), c.into()]);
        }
        if let Some(v) = &self.version {
            a.extend(["--version".into(), v.into()]);
        }
        for (path, text) in &self.mark_files {
            a.extend(["--mark-file".into(), format!("{path}={text}").into()]);
        }
        for unit in &self.mask {
            a.extend(["--mask".into(), unit.into()]);
        }
        if self.no_cargo {
            a.push("--no-cargo".into());
        }
        a
    }
}

/// Builds an image into `out` with `opts` (see [`build_image`]); `out` then
/// holds disk.img, slot.img, update.raucb and manifest.json.
pub fn build_image_with(paths: &Paths, out: &Path, opts: &ImageOptions) -> Result<Duration> {
    crate::host_agent::build_binaries(paths, &["debvisor-image"])
        .context("fix the build, or pass --image DIR / --no-build")?;
    let builder = paths.root.join("target/release/debvisor-image");
    let recipe = opts
        .recipe
        .clone()
        .unwrap_or_else(|| paths.root.join("recipes/node.toml"));
    std::fs::create_dir_all(out)?;
    let mut cmd = Command::new(&builder);
    cmd.arg("build").arg("--recipe").arg(&recipe).arg("--out").arg(out);
    cmd.args(opts.args());
    cmd.current_dir(&paths.root);
    eprintln!("Building the image: {cmd:?}");
    let t = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("Cannot run {}", builder.display()))?;
    if !status.success() {
        bail!("The image build failed ({status}); see its output above");
    }
    for file in ["disk.img", "update.raucb"] {
        let path = out.join(file);
        if !path.exists() {
            bail!("The image builder finished but {} is missing", path.display());
        }
    }
    Ok(t.elapsed())
}

/// The update bundle of an image built by [`build_image_with`].
pub fn bundle_path(image: &Path) -> PathBuf {
    image.join("update.raucb")
}

/// The image version recorded in manifest.json.
pub fn manifest_version(image: &Path) -> Result<String> {
    let path = image.join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("Cannot read {}: build the image first", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("Bad JSON in {}", path.display()))?;
    v.get("version")
        .or_else(|| v.pointer("/image/version"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no \"version\"", path.display()))
}

/// How to boot one node.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    pub image: PathBuf,
    pub workdir: PathBuf,
    pub console_log: PathBuf,
    pub memory_mib: u32,
    pub accel: Accel,
    pub console_port: Option<u16>,
    pub agent_port: Option<u16>,
    pub detach: bool,
    pub boot_timeout: Duration,
    pub progress: bool,
}

/// A booted node whose console and agent answered from the host.
pub struct Node {
    pub vm: Vm,
    pub boot: BootInfo,
    pub fingerprint: String,
    /// Admin user and password from the first boot.
    pub admin: Option<(String, String)>,
    /// The node's admin client bundle, its endpoint rewritten to the
    /// forwarded agent port: mTLS as "admin".
    pub client: Context,
    /// Where that bundle was saved (a `debvisorctl --config` file).
    pub config: PathBuf,
    /// When the agent first answered GetStatus over mTLS, since QEMU start.
    pub agent_at: Duration,
    /// When the console first answered /healthz over HTTPS.
    pub console_at: Duration,
    pub status: GetStatusResponse,
}

impl Node {
    /// The first boot's admin password, which is also root's on the serial
    /// console.
    pub fn password(&self) -> Result<String> {
        self.admin
            .as_ref()
            .map(|(_, pw)| pw.clone())
            .context("The first boot printed no `DEBVISOR: admin-password` line")
    }
}

/// Shows the latest boot stage on one line while a boot is awaited.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: String, stages: impl Fn() -> (Vec<&'static str>, Duration) + Send + 'static) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let tty = std::io::stderr().is_terminal();
        let thread = std::thread::spawn(move || {
            let mut last = String::new();
            while !s.load(Ordering::SeqCst) {
                let (seen, t) = stages();
                let stage = seen.last().copied().unwrap_or("starting");
                if tty {
                    eprint!("\r\x1b[K{label}: {stage:<12} {:>6.1} s", t.as_secs_f64());
                } else if stage != last {
                    eprintln!("{label}: {stage} at {:.1} s", t.as_secs_f64());
                }
                last = stage.to_string();
                std::thread::sleep(Duration::from_millis(250));
            }
            if tty {
                eprint!("\r\x1b[K");
            }
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Formats a failed boot: the error chain, then the last 40 console lines.
/// QEMU's own messages, when it printed any, are added too.
pub fn with_tail(e: anyhow::Error, vm: &Vm) -> anyhow::Error {
    let qemu_log: String = std::fs::read_to_string(vm.workdir.join("qemu.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("QEMU waiting for connection"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut qemu = String::new();
    if !qemu_log.trim().is_empty() {
        qemu = format!("\nQEMU said: {}", qemu_log.trim());
        if qemu_log.contains("host forwarding") {
            qemu.push_str("\nA forwarded port is taken: pick other --console-port/--agent-port, or omit them");
        }
    }
    anyhow::anyhow!(
        "{e:#}{qemu}\nLast 40 console lines:\n{}\n(the whole log is under {})",
        vm.console.tail(40),
        vm.workdir.display()
    )
}

/// Boots a node and waits for `DEBVISOR: ready`, then for the agent and the
/// console to answer from the host.
pub fn boot(rt: &tokio::runtime::Runtime, o: &NodeOpts) -> Result<Node> {
    boot_with_drives(rt, o, &[])
}

/// [`boot`] with extra read-only raw disks attached after the system disk
/// (e.g. a DEBVISORCFG config medium).
pub fn boot_with_drives(rt: &tokio::runtime::Runtime, o: &NodeOpts, extra_drives: &[PathBuf]) -> Result<Node> {
    let disk = o.image.join("disk.img");
    if !disk.exists() {
        bail!(
            "{} not found: build the image (drop --no-build) or pass --image DIR",
            disk.display()
        );
    }
    let vm = Vm::start_with_drives(
        &VmSpec {
            boot: Boot::Uefi { disk },
            workdir: o.workdir.clone(),
            console_log: o.console_log.clone(),
            memory_mib: o.memory_mib,
            accel: o.accel,
            console_port: o.console_port,
            agent_port: o.agent_port,
            detach: o.detach,
            nic: Nic::User,
        },
        extra_drives,
    )?;
    let progress = o.progress.then(|| {
        let con = vm.console.stages_handle();
        Progress::start("Booting".into(), con)
    });
    let config = o.workdir.join("debvisorconfig.toml");
    let res = wait_node(rt, &vm, 0, o.boot_timeout, None, &config);
    drop(progress);
    match res {
        Ok(w) => Ok(Node {
            admin: w.boot.admin.clone(),
            vm,
            boot: w.boot,
            fingerprint: w.fingerprint,
            client: w.client,
            config,
            agent_at: w.agent_at,
            console_at: w.console_at,
            status: w.status,
        }),
        Err(e) => Err(with_tail(e, &vm)),
    }
}

/// What one boot showed once the node answered.
pub struct Waited {
    pub boot: BootInfo,
    pub fingerprint: String,
    /// The admin bundle pointed at the forwarded agent port.
    pub client: Context,
    pub agent_at: Duration,
    pub console_at: Duration,
    pub status: GetStatusResponse,
}

/// Fetches the node's admin client bundle over the serial shell (as root,
/// whose password is the admin password), points it at the forwarded agent
/// port and saves it to `save_to` (mode 0600).
pub fn fetch_client_config(vm: &Vm, password: &str, save_to: &Path) -> Result<Context> {
    let mut g = SerialGuest::login(&vm.console, "root", password, Duration::from_secs(120))?;
    // Hex survives the serial line and the terminal untouched.
    let (rc, out) = g.exec(&format!("od -An -v -tx1 {ADMIN_BUNDLE}"), Duration::from_secs(60))?;
    g.logout()?;
    if rc != 0 {
        bail!("Cannot read {ADMIN_BUNDLE} on the node: {}", out.trim());
    }
    let mut cfg = parse_bundle_hex(&out)?;
    let endpoint = format!("127.0.0.1:{}", vm.agent_port);
    let name = cfg.context.clone();
    let ctx = cfg
        .contexts
        .get_mut(&name)
        .with_context(|| format!("{ADMIN_BUNDLE} names a context {name:?} it does not define"))?;
    // The node lists its own addresses, or none when it had no address yet
    // at first boot; from the host only the forwarded port reaches it.
    ctx.endpoints = vec![endpoint];
    let ctx = ctx.clone();
    cfg.validate()
        .with_context(|| format!("{ADMIN_BUNDLE} is not usable"))?;
    cfg.save(save_to)?;
    Ok(ctx)
}

/// Parses the `od -An -v -tx1` dump of a client bundle (not validated: its
/// endpoints are replaced first).
pub fn parse_bundle_hex(dump: &str) -> Result<ClientConfig> {
    let digits: String = dump.split_whitespace().collect();
    let raw = hex::decode(&digits).context("The bundle dump is not hex: the serial console mangled it")?;
    let text = String::from_utf8(raw).context("The admin bundle is not UTF-8")?;
    toml::from_str(&text).with_context(|| format!("{ADMIN_BUNDLE} is not a client bundle"))
}

/// Waits for ready from console offset `from`, fetches the admin bundle
/// over the serial shell (saved to `config`), then probes the agent over
/// mTLS and the console over HTTPS with the pinned fingerprint. `password`
/// is root's; the first boot prints it, later boots need it given.
pub fn wait_node(
    rt: &tokio::runtime::Runtime,
    vm: &Vm,
    from: usize,
    timeout: Duration,
    password: Option<&str>,
    config: &Path,
) -> Result<Waited> {
    let t0 = Instant::now();
    let info = vm.console.wait_ready(from, timeout)?;
    let fp = info
        .fingerprint
        .clone()
        .context("The guest printed ready without a `DEBVISOR: tls-fingerprint` line")?;
    let left = timeout.saturating_sub(t0.elapsed()).max(Duration::from_secs(60));
    let (started, port, pin) = (vm.started, vm.console_port, fp.clone());
    let console = rt.spawn(async move {
        probes::retry("The console (/healthz over HTTPS)", started, left, || {
            probes::console_healthz(port, &pin)
        })
        .await
    });
    let password = match (password, &info.admin) {
        (Some(p), _) => p.to_string(),
        (None, Some((_, p))) => p.clone(),
        (None, None) => bail!("No admin password: the boot printed none and none was given"),
    };
    let client = fetch_client_config(vm, &password, config).context("Fetching the admin client bundle failed")?;
    let (status, agent_at) = rt.block_on(probes::retry(
        "The agent (GetStatus over mTLS)",
        vm.started,
        left,
        || probes::agent_status(&client),
    ))?;
    let ((), console_at) = rt.block_on(console)??;
    Ok(Waited {
        boot: info,
        fingerprint: fp,
        client,
        agent_at,
        console_at,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_options_become_builder_flags() {
        let mut o = ImageOptions::variant("0.1.2", "v3", &["debvisor-agent.service"]);
        o.no_cargo = true;
        let args: Vec<String> = o.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--version",
                "0.1.2",
                "--mark-file",
                "/etc/debvisor-marker=v3",
                "--mask",
                "debvisor-agent.service",
                "--no-cargo"
            ]
        );
        assert!(ImageOptions::default().args().is_empty());
    }

    #[test]
    fn bundle_dump_parses() {
        let dir = tempfile::tempdir().unwrap();
        let pki = debvisor_init::pki::Pki::new(dir.path());
        pki.ensure_with("n1", &["192.0.2.7".parse().unwrap()]).unwrap();
        let raw = std::fs::read(pki.admin_bundle_path()).unwrap();
        // As `od -An -v -tx1` prints it: 16 bytes a line, a leading space each.
        let dump: String = raw
            .chunks(16)
            .map(|c| c.iter().map(|b| format!(" {b:02x}")).collect::<String>() + "\n")
            .collect();
        let cfg = parse_bundle_hex(&dump).unwrap();
        assert_eq!(cfg.current().unwrap().endpoints, ["192.0.2.7:7443"]);
        assert!(parse_bundle_hex(" 7a 7a\n").is_err());
        assert!(parse_bundle_hex("login: oops").is_err());
    }
}
