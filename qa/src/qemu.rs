//! Starting and stopping QEMU: overlays, firmware variables, free ports, the
//! serial and QMP sockets, and the guards that make sure no QEMU outlives the
//! harness (kill in `Drop`, `setpriv --pdeathsig KILL`, signal handler).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::serial::Console;

/// OVMF firmware code (read-only) and the variable store template.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The variable store each VM gets a private copy of.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const QEMU: &str = "qemu-system-x86_64";
/// The MAC address of the guest's NIC (QEMU's own default, made explicit so
/// that a machine config can match the NIC by it).
pub const NIC_MAC: &str = "52:54:00:12:34:56";

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Accel {
    /// Software emulation, multi-threaded (the default: KVM hangs here).
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

/// The serial of the virtio disk of a [`Boot::Usb`] VM: the installer
/// sees it as /dev/disk/by-id/virtio-DVDISK01.
pub const USB_TARGET_SERIAL: &str = "DVDISK01";

/// What the VM boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// OVMF -> GRUB from a raw GPT disk image (kept pristine by an overlay).
    Uefi { disk: PathBuf },
    /// `-kernel/-initrd` with a raw root disk (also behind an overlay).
    Direct {
        disk: PathBuf,
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
    /// OVMF's own network boot (PXE, no iPXE option ROM, as on bare metal)
    /// from the NIC first, then the disk if there is one (a blank disk for
    /// an install, kept behind an overlay too).
    Pxe { disk: Option<PathBuf> },
    /// OVMF booting a USB stick (`stick`, a raw image written to in place,
    /// on an xHCI controller) after the virtio disk (`disk`, behind an
    /// overlay, serial DVDISK01): a blank disk boots nothing, so the stick
    /// boots until something is installed on the disk.
    Usb { stick: PathBuf, disk: PathBuf },
}

/// Where the guest's NIC is plugged in.
#[derive(Debug, Clone)]
pub enum Nic {
    /// QEMU's user network, with the console and agent ports forwarded.
    User,
    /// A tap device already made in network namespace `netns` (QEMU runs
    /// in that namespace), with this MAC.
    Tap { netns: String, tap: String, mac: String },
}

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub boot: Boot,
    /// Holds the overlay, the firmware variables, sockets and logs.
    pub workdir: PathBuf,
    /// Where the serial console is logged.
    pub console_log: PathBuf,
    pub memory_mib: u32,
    pub accel: Accel,
    /// Host ports forwarded to guest 443 and 7443 (picked when `None`).
    pub console_port: Option<u16>,
    pub agent_port: Option<u16>,
    /// Leave QEMU running when the harness exits (own session, no pdeathsig).
    pub detach: bool,
    pub nic: Nic,
}

/// Finds `name` in PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Fails with an install hint when a host tool is missing.
pub fn require_tools(tools: &[(&str, &str)]) -> Result<()> {
    for (tool, package) in tools {
        if which(tool).is_none() {
            bail!("{tool} not found: run apt-get install {package}");
        }
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("Cannot bind a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// Live QEMU processes: (pid, QMP socket). The signal handler stops them.
static LIVE: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());
/// When set, the signal handler asks guests to power down before killing.
pub static GRACEFUL: AtomicBool = AtomicBool::new(false);

fn register(pid: u32, qmp: PathBuf) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push((pid, qmp));
}

fn unregister(pid: u32) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(p, _)| *p != pid);
}

/// True while /proc/PID exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Installs the SIGINT/SIGTERM handler: stops every live QEMU (ACPI power
/// down with a grace period when [`GRACEFUL`] is set, a second signal kills
/// at once) and exits.
pub fn install_signal_handler(rt: &tokio::runtime::Runtime) {
    rt.spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        eprintln!("\nInterrupted: stopping QEMU");
        let vms: Vec<_> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let graceful = GRACEFUL.load(Ordering::SeqCst);
        std::thread::spawn(move || {
            if graceful {
                for (_, qmp) in &vms {
                    let _ = qmp_powerdown(qmp);
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline && vms.iter().any(|(p, _)| alive(*p)) {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            for (pid, _) in &vms {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
            std::process::exit(130);
        });
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        for (pid, _) in &LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        std::process::exit(130);
    });
}

type SpawnReq = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns children from one long-lived thread, so that `--pdeathsig` (which
/// fires when the *thread* that forked the child exits) only fires when the
/// whole harness goes away.
fn spawn_from_keeper(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnReq>>> = OnceLock::new();
    let tx = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnReq>();
        std::thread::Builder::new()
            .name("qemu-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the qemu keeper thread");
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, rtx))
        .map_err(|_| std::io::Error::other("qemu keeper thread is gone"))?;
    rrx.recv()
        .map_err(|_| std::io::Error::other("qemu keeper thread is gone"))?
}

/// Creates a qcow2 overlay over a raw base image (which stays untouched).
pub fn create_overlay(base: &Path, overlay: &Path, size: Option<&str>) -> Result<()> {
    require_tools(&[("qemu-img", "qemu-utils")])?;
    let base = base
        .canonicalize()
        .with_context(|| format!("Disk image {} not found: build it first", base.display()))?;
    let _ = std::fs::remove_file(overlay);
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(overlay);
    if let Some(size) = size {
        cmd.arg(size);
    }
    let out = cmd.output().context("Cannot run qemu-img")?;
    if !out.status.success() {
        bail!(
            "qemu-img create failed for {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A running VM. Dropping it kills QEMU unless it was started detached and
/// [`Vm::release`] was called.
pub struct Vm {
    child: Option<Child>,
    pub pid: u32,
    pub console: Console,
    pub console_port: u16,
    pub agent_port: u16,
    pub workdir: PathBuf,
    pub started: Instant,
    keep: bool,
    /// QEMU's arguments, for [`Vm::power_cycle`].
    args: Vec<String>,
    /// What QEMU runs under (`ip netns exec NS`), or nothing.
    prefix: Vec<String>,
    detach: bool,
}

impl Vm {
    /// Prepares the overlay and firmware variables, starts QEMU, and connects
    /// to its serial console (QEMU waits for that before it runs the guest).
    pub fn start(spec: &VmSpec) -> Result<Vm> {
        Vm::start_with_drives(spec, &[])
    }

    /// [`Vm::start`] with more disks: each raw image in `extra_drives` is
    /// attached read-only as a further virtio disk (`/dev/vdb`, ...), e.g. a
    /// config medium.
    pub fn start_with_drives(spec: &VmSpec, extra_drives: &[PathBuf]) -> Result<Vm> {
        require_tools(&[(QEMU, "qemu-system-x86"), ("setpriv", "util-linux")])?;
        let wd = &spec.workdir;
        std::fs::create_dir_all(wd).with_context(|| format!("Cannot create {}", wd.display()))?;
        let wd = wd.canonicalize()?;
        let console_port = match spec.console_port {
            Some(p) => p,
            None => free_port()?,
        };
        let agent_port = match spec.agent_port {
            Some(p) => p,
            None => free_port()?,
        };
        let overlay = wd.join("overlay.qcow2");
        let serial = wd.join("serial.sock");
        let qmp = wd.join("qmp.sock");

        let mut args: Vec<String> = vec![
            "-name".into(),
            "debvisor-qa".into(),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            match spec.accel {
                Accel::Tcg => "tcg,thread=multi".into(),
                Accel::Kvm => "kvm".into(),
            },
            "-smp".into(),
            "2".into(),
            "-m".into(),
            spec.memory_mib.to_string(),
        ];
        let mut disk_image = None;
        match &spec.boot {
            Boot::Uefi { .. } | Boot::Pxe { .. } | Boot::Usb { .. } => {
                if !Path::new(OVMF_CODE).exists() {
                    bail!("{OVMF_CODE} not found: run apt-get install ovmf");
                }
                if let Boot::Uefi { disk } | Boot::Pxe { disk: Some(disk) } | Boot::Usb { disk, .. } = &spec.boot {
                    // The node image grows to an 8 GiB disk; a blank disk
                    // for an installer keeps the size the test gave it.
                    let size = matches!(spec.boot, Boot::Uefi { .. }).then_some("8G");
                    create_overlay(disk, &overlay, size)?;
                    disk_image = Some(disk);
                }
                let vars = wd.join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars).with_context(|| format!("Cannot copy {OVMF_VARS}"))?;
                args.extend([
                    "-drive".into(),
                    format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
                    "-drive".into(),
                    format!("if=pflash,format=raw,file={}", vars.display()),
                ]);
            }
            Boot::Direct {
                disk,
                kernel,
                initrd,
                append,
            } => {
                create_overlay(disk, &overlay, None)?;
                disk_image = Some(disk);
                args.extend([
                    "-kernel".into(),
                    kernel.display().to_string(),
                    "-initrd".into(),
                    initrd.display().to_string(),
                    "-append".into(),
                    append.clone(),
                ]);
            }
        }
        if matches!(spec.boot, Boot::Pxe { .. }) {
            // The NIC boots first (bootindex 1), then this disk.
            if disk_image.is_some() {
                args.extend([
                    "-drive".into(),
                    format!("file={},if=none,id=d0,format=qcow2", overlay.display()),
                    "-device".into(),
                    "virtio-blk-pci,drive=d0,bootindex=2".into(),
                ]);
            }
        } else if let Boot::Usb { stick, .. } = &spec.boot {
            let stick = stick
                .canonicalize()
                .with_context(|| format!("USB stick image {} not found", stick.display()))?;
            args.extend([
                "-drive".into(),
                format!("file={},if=none,id=d0,format=qcow2", overlay.display()),
                "-device".into(),
                format!("virtio-blk-pci,drive=d0,bootindex=1,serial={USB_TARGET_SERIAL}"),
                "-device".into(),
                "qemu-xhci,id=xhci".into(),
                "-drive".into(),
                format!("file={},if=none,id=usb0,format=raw", stick.display()),
                "-device".into(),
                "usb-storage,bus=xhci.0,drive=usb0,removable=on,bootindex=2".into(),
            ]);
        } else {
            args.extend([
                "-drive".into(),
                format!("file={},if=virtio,format=qcow2", overlay.display()),
            ]);
        }
        for d in extra_drives {
            let d = d
                .canonicalize()
                .with_context(|| format!("Extra disk image {} not found", d.display()))?;
            args.extend([
                "-drive".into(),
                format!("file={},if=virtio,format=raw,readonly=on", d.display()),
            ]);
        }
        let mut prefix = Vec::new();
        match &spec.nic {
            Nic::User => args.extend([
                "-netdev".into(),
                format!(
                    "user,id=n0,hostfwd=tcp:127.0.0.1:{console_port}-:{},hostfwd=tcp:127.0.0.1:{agent_port}-:{}",
                    debvisor_api::paths::CONSOLE_HTTPS_PORT,
                    debvisor_api::paths::AGENT_TLS_PORT
                ),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={NIC_MAC}"),
            ]),
            Nic::Tap { netns, tap, mac } => {
                prefix = ["ip", "netns", "exec", netns].map(String::from).to_vec();
                args.extend([
                    "-netdev".into(),
                    format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                    "-device".into(),
                    format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1,romfile="),
                    // No IPv6 PXE attempt first (it waits out its timeouts).
                    "-fw_cfg".into(),
                    "name=opt/org.tianocore/IPv6PXESupport,string=no".into(),
                ]);
            }
        }
        if matches!(spec.boot, Boot::Pxe { .. }) && matches!(spec.nic, Nic::User) {
            bail!("a PXE boot needs a tap NIC on the provisioner's network");
        }
        args.extend([
            "-display".into(),
            "none".into(),
            "-vga".into(),
            "none".into(),
            "-chardev".into(),
            format!("socket,id=ser0,path={},server=on,wait=on", serial.display()),
            "-serial".into(),
            "chardev:ser0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
            "-monitor".into(),
            "none".into(),
        ]);

        let (child, pid, console, started) = launch(&prefix, &args, spec.detach, &wd, &spec.console_log)?;
        Ok(Vm {
            child: Some(child),
            pid,
            console,
            console_port,
            agent_port,
            workdir: wd,
            started,
            keep: false,
            args,
            prefix,
            detach: spec.detach,
        })
    }

    /// Cuts the power and turns it back on: kills QEMU at once (no
    /// shutdown, no flush by the guest) and starts it again with the same
    /// disk overlay, firmware variables and forwarded ports, as a machine
    /// whose power failed. The serial console is logged to `console_log`
    /// from then on; `started` restarts.
    pub fn power_cycle(&mut self, console_log: &Path) -> Result<()> {
        self.kill();
        let (child, pid, console, started) = launch(&self.prefix, &self.args, self.detach, &self.workdir, console_log)?;
        self.child = Some(child);
        self.pid = pid;
        self.console = console;
        self.started = started;
        Ok(())
    }

    /// Bytes the guest has written to its disks since QEMU started (QMP
    /// `query-blockstats`, summed over the drives; the firmware's variable
    /// store, a pflash drive, is not a disk).
    pub fn disk_written(&self) -> Result<u64> {
        let stats = qmp_execute(&self.workdir.join("qmp.sock"), "query-blockstats")?;
        let drives = stats.as_array().context("query-blockstats returned no list")?;
        Ok(drives
            .iter()
            .filter(|d| !d["device"].as_str().is_some_and(|n| n.starts_with("pflash")))
            .filter_map(|d| d.pointer("/stats/wr_bytes").and_then(serde_json::Value::as_u64))
            .sum())
    }

    /// True while QEMU runs.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => alive(self.pid),
        }
    }

    /// Kills QEMU at once and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        unregister(self.pid);
    }

    /// Leaves a detached QEMU running: Drop will no longer kill it.
    pub fn release(mut self) {
        unregister(self.pid);
        // The Child handle is dropped without killing; setsid made it
        // independent of this process.
        self.child = None;
        self.keep = true;
    }
}

/// Starts QEMU with `args` in `wd` (which holds its sockets and qemu.log),
/// under `prefix` (e.g. `ip netns exec NS`, which execs QEMU in place), and
/// connects to its serial socket, logging the console to `console_log`.
fn launch(
    prefix: &[String],
    args: &[String],
    detach: bool,
    wd: &Path,
    console_log: &Path,
) -> Result<(Child, u32, Console, Instant)> {
    let serial = wd.join("serial.sock");
    let qmp = wd.join("qmp.sock");
    let _ = std::fs::remove_file(&serial);
    let _ = std::fs::remove_file(&qmp);
    let log = File::create(wd.join("qemu.log"))?;
    let started = Instant::now();
    let mut child = if detach {
        // Own session: no pdeathsig, no terminal signals.
        let mut cmd = Command::new("setsid");
        cmd.args(prefix).arg(QEMU).args(args);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        cmd.spawn().context("Cannot start setsid qemu-system-x86_64")?
    } else {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .args(prefix)
            .arg(QEMU)
            .args(args);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        cmd.process_group(0);
        spawn_from_keeper(cmd).context("Cannot start setpriv qemu-system-x86_64")?
    };
    let pid = child.id();
    register(pid, qmp);

    // Connect to the serial socket; QEMU holds the guest until we do.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&serial) {
            break s;
        }
        if let Ok(Some(status)) = child.try_wait() {
            unregister(pid);
            let log = std::fs::read_to_string(wd.join("qemu.log")).unwrap_or_default();
            let hint = if log.contains("host forwarding") {
                "\nA forwarded port is taken: pick other --console-port/--agent-port, or omit them"
            } else {
                ""
            };
            bail!("QEMU exited at start ({status}): {}{hint}", log.trim());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            unregister(pid);
            bail!("QEMU did not open its serial socket {} within 30 s", serial.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let console = Console::start(stream, console_log, started)?;
    Ok((child, pid, console, started))
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.kill();
        let _ = std::fs::remove_file(self.workdir.join("overlay.qcow2"));
    }
}

/// Sends `system_powerdown` over a QMP socket.
pub fn qmp_powerdown(qmp: &Path) -> Result<()> {
    qmp_execute(qmp, "system_powerdown").map(|_| ())
}

/// Runs one QMP command (no arguments) and returns its `return` value.
pub fn qmp_execute(qmp: &Path, command: &str) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(qmp).with_context(|| format!("Cannot connect to QMP at {}", qmp.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let answer = |r: &mut BufReader<UnixStream>| -> Result<serde_json::Value> {
        // Events may come before the answer.
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                bail!("QMP at {} closed the connection", qmp.display());
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("QMP sent no JSON: {line:?}"))?;
            if let Some(e) = v.get("error") {
                bail!("QMP refused {command}: {e}");
            }
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
        }
    };
    let mut greeting = String::new();
    r.read_line(&mut greeting)?;
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    answer(&mut r)?;
    w.write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())?;
    answer(&mut r)
}

/// True when /proc/PID/cmdline is a qemu-system-x86_64 using `marker` (a
/// path of the VM's work directory): the pid was not recycled.
pub fn is_our_qemu(pid: u32, marker: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) => {
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first().is_some_and(|a| a.ends_with(QEMU)) && args.iter().any(|a| a.contains(marker))
        }
        Err(_) => false,
    }
}
