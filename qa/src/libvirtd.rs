//! A libvirt daemon for the system tests that drive QEMU through libvirt.
//!
//! The host's daemon when one answers on `qemu:///system` (a systemd host
//! with libvirt-daemon-system); otherwise `virtlogd` and `libvirtd` started
//! here and stopped on drop, their logs in the test's work directory.
//!
//! Ours runs in a private mount namespace where /dev/kvm is a character
//! device node (of /dev/null) with mode 000. KVM hangs Linux guests on the
//! development machines (/work/shared/FACTS.md), and libvirt probes QEMU with
//! KVM when QEMU's user may open /dev/kvm: ~47 s per define with the real
//! node. /dev/null itself is not enough: libvirt finds it usable, sees that
//! its cached QEMU capabilities lack KVM and probes again on every define
//! (~24 s under TCG). With a node QEMU's user (libvirt-qemu) cannot open,
//! libvirtd is up in ~0.3 s (~9 s the first time, while it fills its
//! capabilities cache), a define takes ~20 ms and domains of type `qemu` run
//! under TCG. A device node and not a plain file, because libvirt carries
//! the mounts under /dev into each QEMU's private /dev and fails to with a
//! file. The namespace also hides autostarted networks, so our daemon makes
//! no bridge, firewall rules or dnsmasq on the host: the tests use no
//! libvirt network.
//!
//! No `unsafe` (the workspace forbids it), so no `pre_exec`: util-linux makes
//! the namespace. `unshare` makes it around a `sleep` that holds it while
//! `nsenter` runs `mount` in it and then execs `libvirtd` there.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cfgdisk::run;
use crate::qemu::require_tools;

/// The connection URI of the system QEMU driver.
pub const URI: &str = "qemu:///system";
const LIBVIRTD: &str = "/usr/sbin/libvirtd";
const KVM: &str = "/dev/kvm";
const VIRTLOGD: &str = "/usr/sbin/virtlogd";
/// virtlogd's socket: QEMU's output goes through it (`stdio_handler = "logd"`).
const VIRTLOGD_SOCK: &str = "/run/libvirt/virtlogd-sock";
/// Networks libvirtd starts by itself; hidden from ours.
const NET_AUTOSTART: &str = "/etc/libvirt/qemu/networks/autostart";
/// How long one `virsh version` may take.
const PROBE: Duration = Duration::from_secs(5);
/// How long our libvirtd may take to answer.
const START: Duration = Duration::from_secs(30);

/// A libvirt daemon answering on [`URI`]: the host's, or one started by
/// [`Libvirtd::ensure`] and stopped (with the domains still running on it)
/// on drop.
pub struct Libvirtd {
    owner: Option<Owner>,
}

/// The thread that started our daemons and stops them when told to. They
/// run under `setpriv --pdeathsig KILL`, which fires when the *thread* that
/// spawned them ends: a thread of their own lives exactly as long as they
/// should (and dies with the harness).
struct Owner {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
    log: PathBuf,
}

impl Libvirtd {
    /// The host's daemon when `virsh -c qemu:///system version` answers
    /// within 5 s, otherwise virtlogd and libvirtd started here, their logs
    /// in `work` (created if needed).
    pub fn ensure(work: &Path) -> Result<Libvirtd> {
        require_tools(&[
            ("virsh", "libvirt-clients"),
            ("timeout", "coreutils"),
            ("setpriv", "util-linux"),
            ("unshare", "util-linux"),
            ("nsenter", "util-linux"),
            ("mknod", "coreutils"),
        ])?;
        if virsh(&["version"]).is_ok() {
            return Ok(Libvirtd { owner: None });
        }
        if !Path::new(LIBVIRTD).is_file() {
            bail!("{LIBVIRTD} not found: install libvirt-daemon-system (qa/setup-host.sh)");
        }
        if !nix::unistd::geteuid().is_root() {
            bail!("No libvirtd answers on {URI}, and starting one needs root");
        }
        std::fs::create_dir_all(work).with_context(|| format!("Cannot create {}", work.display()))?;
        let log = work.join("libvirtd.log");
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let work = work.to_owned();
        let thread = std::thread::Builder::new()
            .name("libvirtd-owner".into())
            .spawn(move || {
                let mut daemons = Daemons::default();
                let started = daemons.start(&work);
                let ok = started.is_ok();
                let _ = ready_tx.send(started);
                if ok {
                    // Until told to stop, or the Libvirtd is gone.
                    let _ = stop_rx.recv();
                }
            })
            .context("Cannot spawn the libvirtd owner thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Libvirtd {
                owner: Some(Owner {
                    stop,
                    thread: Some(thread),
                    log,
                }),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                bail!("The libvirtd owner thread ended without a word")
            }
        }
    }

    /// The URI to connect to.
    pub fn uri(&self) -> &str {
        URI
    }

    /// The log of the libvirtd started here, `None` for the host's daemon.
    pub fn log(&self) -> Option<&Path> {
        self.owner.as_ref().map(|o| o.log.as_path())
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let Some(owner) = &mut self.owner else {
            return;
        };
        // libvirtd leaves running QEMUs alone when it stops: ours must not
        // outlive the test.
        if let Ok(names) = virsh(&["list", "--name"]) {
            for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
                let _ = virsh(&["destroy", name]);
            }
        }
        let _ = owner.stop.send(());
        if let Some(t) = owner.thread.take() {
            let _ = t.join();
        }
    }
}

/// `virsh -c URI ARGS` with a time limit; its stdout.
fn virsh(args: &[&str]) -> Result<String> {
    run(Command::new("timeout")
        .args(["--kill-after=2", &PROBE.as_secs().to_string(), "virsh", "-c", URI])
        .args(args)
        .stdin(Stdio::null()))
}

/// The processes started here, stopped in reverse order on drop.
#[derive(Default)]
struct Daemons {
    children: Vec<(&'static str, Child)>,
}

impl Daemons {
    fn start(&mut self, work: &Path) -> Result<()> {
        if UnixStream::connect(VIRTLOGD_SOCK).is_err() {
            let log = work.join("virtlogd.log");
            self.spawn("virtlogd", &[VIRTLOGD], &log)?;
            let up = wait_for(Duration::from_secs(10), || {
                self.check_alive("virtlogd", &log)?;
                Ok(UnixStream::connect(VIRTLOGD_SOCK).is_ok())
            })?;
            if !up {
                bail!(
                    "virtlogd did not open {VIRTLOGD_SOCK} within 10 s; see {}",
                    log.display()
                );
            }
        }

        let ns_log = work.join("namespace.log");
        let holder = self.spawn(
            "namespace holder",
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sleep",
                "infinity",
            ],
            &ns_log,
        )?;
        // unshare execs sleep only once the namespace is made and private:
        // before that, nsenter would enter (and mount over) the host's.
        let made = wait_for(Duration::from_secs(5), || {
            self.check_alive("namespace holder", &ns_log)?;
            Ok(runs(holder, "sleep"))
        })?;
        if !made {
            bail!("unshare --mount did not exec sleep within 5 s");
        }
        let target = holder.to_string();
        let nsenter = ["nsenter", "--target", &target, "--mount", "--"];
        if Path::new(KVM).exists() {
            // Why a mode-000 node of /dev/null: see the module's comment.
            let hidden = work.join("kvm-hidden");
            let _ = std::fs::remove_file(&hidden);
            run(Command::new("mknod")
                .args(["-m", "000"])
                .arg(&hidden)
                .args(["c", "1", "3"]))?;
            run(Command::new(nsenter[0])
                .args(&nsenter[1..])
                .args(["mount", "--bind"])
                .arg(&hidden)
                .arg(KVM))?;
        }
        if Path::new(NET_AUTOSTART).is_dir() {
            run(Command::new(nsenter[0]).args(&nsenter[1..]).args([
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "mode=0755,size=64k",
                "tmpfs",
                NET_AUTOSTART,
            ]))?;
        }

        let log = work.join("libvirtd.log");
        let mut argv = nsenter.to_vec();
        argv.push(LIBVIRTD);
        let daemon = self.spawn("libvirtd", &argv, &log)?;
        let deadline = Instant::now() + START;
        let entered = wait_for(START, || {
            self.check_alive("libvirtd", &log)?;
            Ok(runs(daemon, "libvirtd"))
        })?;
        if !entered {
            bail!("nsenter did not exec libvirtd within {} s", START.as_secs());
        }
        // libvirtd holds the namespace now.
        self.stop("namespace holder");

        let mut last = String::new();
        let answers = wait_for(deadline.saturating_duration_since(Instant::now()), || {
            self.check_alive("libvirtd", &log)?;
            match virsh(&["version"]) {
                Ok(_) => Ok(true),
                Err(e) => {
                    last = format!("{e:#}");
                    Ok(false)
                }
            }
        })?;
        if !answers {
            bail!(
                "libvirtd did not answer on {URI} within {} s ({last}); see {}",
                START.as_secs(),
                log.display()
            );
        }
        Ok(())
    }

    /// Starts `argv` under `setpriv --pdeathsig KILL`, output to `log`;
    /// returns its pid.
    fn spawn(&mut self, name: &'static str, argv: &[&str], log: &Path) -> Result<u32> {
        let out = std::fs::File::create(log).with_context(|| format!("Cannot create {}", log.display()))?;
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("Cannot start {name}"))?;
        let pid = child.id();
        self.children.push((name, child));
        Ok(pid)
    }

    /// An error with the log's tail when `name` has exited.
    fn check_alive(&mut self, name: &str, log: &Path) -> Result<()> {
        let Some((_, child)) = self.children.iter_mut().find(|(n, _)| *n == name) else {
            bail!("{name} was not started");
        };
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            bail!("{name} exited ({status}); {}:\n{tail}", log.display());
        }
        Ok(())
    }

    /// SIGTERM, SIGKILL after 10 s; reaps.
    fn stop(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| *n == name) {
            let (_, child) = self.children.remove(i);
            crate::host_agent::stop_child(child, Duration::from_secs(10));
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        while let Some((_, child)) = self.children.pop() {
            crate::host_agent::stop_child(child, Duration::from_secs(10));
        }
    }
}

/// True when process `pid` runs the program `comm` (it has exec'd it).
fn runs(pid: u32, comm: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
}

/// Polls `ready` every 50 ms until it says yes (true) or fails, for at most
/// `limit` (false).
fn wait_for(limit: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if ready()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
