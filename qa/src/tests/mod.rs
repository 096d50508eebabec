//! `debvisor-qa test`: system tests. A VM test boots its own fresh overlay
//! of the image, acts like a user, and asserts what it sees; a host test
//! runs the release binaries on this machine (no VM). Logs are kept under
//! target/qa/artifacts/<test>/.

mod api;
mod boot;
mod config;
mod console_browser;
mod console_node;
mod host;
mod installed;
mod jobs;
mod pxe;
mod supervisor;
mod update;
mod usb;
mod vm_host;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::host_agent;
use crate::node::{self, Node, NodeOpts, Paths};
use crate::qemu::Accel;

/// What every test gets.
pub struct Ctx<'a> {
    pub rt: &'a tokio::runtime::Runtime,
    pub paths: &'a Paths,
    /// The image (VM tests only).
    pub image: PathBuf,
    /// Its manifest version (VM tests only).
    pub version: String,
    /// This test's artifacts directory.
    pub dir: PathBuf,
    pub accel: Accel,
    pub boot_timeout: Duration,
    pub memory_mib: u32,
    /// The node that [`Kind::SharedVm`] tests share.
    shared: &'a Mutex<Option<Node>>,
}

/// The node of the [`Kind::SharedVm`] tests, held for one test.
pub struct SharedNode<'a>(MutexGuard<'a, Option<Node>>);

impl std::ops::Deref for SharedNode<'_> {
    type Target = Node;

    fn deref(&self) -> &Node {
        self.0.as_ref().expect("booted by Ctx::shared_node")
    }
}

impl Ctx<'_> {
    /// Boots a fresh node for this test.
    fn boot(&self) -> Result<Node> {
        self.boot_with_drives(&[])
    }

    /// The node the [`Kind::SharedVm`] tests share: booted fresh by the
    /// first of them (its serial log in that test's artifacts), dropped
    /// after the last. These tests only read the node or change what none
    /// of the others looks at; the ones that reboot it run last.
    fn shared_node(&self) -> Result<SharedNode<'_>> {
        let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(self.boot_in(&self.dir, &[])?);
        } else {
            let _ = std::fs::write(
                self.dir.join("shared-boot.txt"),
                "This test ran on the node booted by the first test of kind shared-vm; its console.log is there.\n",
            );
        }
        Ok(SharedNode(g))
    }

    /// Boots a fresh node with extra read-only raw disks (a config medium).
    fn boot_with_drives(&self, drives: &[PathBuf]) -> Result<Node> {
        self.boot_in(&self.dir, drives)
    }

    fn boot_in(&self, dir: &std::path::Path, drives: &[PathBuf]) -> Result<Node> {
        node::boot_with_drives(
            self.rt,
            &NodeOpts {
                image: self.image.clone(),
                workdir: dir.to_path_buf(),
                console_log: dir.join("console.log"),
                memory_mib: self.memory_mib,
                accel: self.accel,
                console_port: None,
                agent_port: None,
                detach: false,
                boot_timeout: self.boot_timeout,
                progress: false,
            },
            drives,
        )
    }
}

/// Timeout of one serial shell command.
pub const CMD: Duration = Duration::from_secs(60);

/// Where a test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Boots the image in QEMU.
    Vm,
    /// Runs on one node shared with the neighbouring tests of this kind
    /// (booted once: each boot costs about a minute under TCG). The ones
    /// that reboot it come last.
    SharedVm,
    /// Runs release binaries on this host; needs no image.
    Host,
}

/// The packages whose release binaries the host tests run.
const HOST_BINARIES: &[&str] = &["debvisor-agent", "debvisorctl", "debvisor-webui"];

type TestFn = fn(&Ctx) -> Result<()>;

/// One system test.
pub struct Test {
    pub name: &'static str,
    pub what: &'static str,
    pub kind: Kind,
    pub run: TestFn,
}

/// Every system test, host tests first (they take seconds, a boot ~40 s).
pub const TESTS: &[Test] = &[
    Test {
        name: "agent_sim_clients",
        what: "a simulated agent over mTLS: Python grpcio by reflection, debvisorctl, a foreign CA refused",
        kind: Kind::Host,
        run: host::agent_sim_clients,
    },
    Test {
        name: "console_browser",
        what: "the console with a simulated agent in headless Chromium: sign-in, pages, restart audited, no CSP violation, sign-out; then with JavaScript off: forms, confirmation, audit, users",
        kind: Kind::Host,
        run: console_browser::console_browser,
    },
    Test {
        name: "vm_console_host",
        what: "a tiny guest under a real libvirtd and QEMU on this host: created and started through the agent and debvisor-vmd, its serial console answers debvisorctl vm console, poweroff ends the session, delete; all audited",
        kind: Kind::Host,
        run: vm_host::vm_console_host,
    },
    Test {
        name: "vm_console_browser",
        what: "the tiny guest's serial console in headless Chromium: the VM page's link, xterm.js over the console's WebSocket to the agent and a real debvisor-vmd and libvirtd; the shell answers, poweroff closes the page's console, no CSP violation",
        kind: Kind::Host,
        run: vm_host::vm_console_browser,
    },
    Test {
        name: "boots_to_ready",
        what: "the node prints its fingerprint, admin password and ready",
        kind: Kind::SharedVm,
        run: boot::boots_to_ready,
    },
    Test {
        name: "console_login_https",
        what: "admin logs in to the console over HTTPS",
        kind: Kind::SharedVm,
        run: boot::console_login_https,
    },
    Test {
        name: "agent_status_mtls",
        what: "GetStatus over mTLS with the node's admin bundle reports the image truthfully",
        kind: Kind::SharedVm,
        run: boot::agent_status_mtls,
    },
    Test {
        name: "root_read_only",
        what: "the root file system is read-only",
        kind: Kind::SharedVm,
        run: boot::root_read_only,
    },
    Test {
        name: "vm_daemon",
        what: "debvisor-vmd runs beside the agent, which forwards VM calls to it",
        kind: Kind::SharedVm,
        run: boot::vm_daemon,
    },
    Test {
        name: "units_via_api",
        what: "start, restart, logs and enable of a unit over mTLS, audited as admin",
        kind: Kind::SharedVm,
        run: api::units_via_api,
    },
    Test {
        name: "console_node_browser",
        what: "the console of a booted node in headless Chromium: sign-in, live dashboard, a real restart audited, health, sign-out",
        kind: Kind::SharedVm,
        run: console_node::console_node_browser,
    },
    Test {
        name: "reboot_via_api",
        what: "node.Reboot over mTLS reboots the node and is in the audit log; /etc, /var and machine-id survive the reboot",
        kind: Kind::SharedVm,
        run: api::reboot_via_api,
    },
    Test {
        name: "supervisor_recovery",
        what: "kill -9 of the agent 10 times: back with a new MainPID and answering; supervisor RSS and idle CPU",
        kind: Kind::Vm,
        run: supervisor::supervisor_recovery,
    },
    Test {
        name: "supervisor_remediation",
        what: "a console failing its health check is restarted, then escalated: DEGRADED, webhooks, audit",
        kind: Kind::Vm,
        run: supervisor::supervisor_remediation,
    },
    Test {
        name: "config_static_vlan",
        what: "a config medium with a static address and VLAN 100 is applied; the node stays reachable",
        kind: Kind::Vm,
        run: config::config_static_vlan,
    },
    Test {
        name: "config_invalid",
        what: "a config medium with VLAN id 5000 is refused on the console; the node stays reachable",
        kind: Kind::Vm,
        run: config::config_invalid,
    },
    Test {
        name: "pxe_live",
        what: "a diskless VM boots live through OVMF PXE, iPXE and the provisioner run by the agent: root image into RAM, sha256 checked, per-MAC host name; debvisorctl provision shows the machine, its profile and its reserved lease",
        kind: Kind::Vm,
        run: pxe::pxe_live,
    },
    Test {
        name: "pxe_proxy",
        what: "proxyDHCP beside dnsmasq as the site's DHCP server: a diskless VM boots live to ready with dnsmasq's address; the provisioner leased nothing",
        kind: Kind::Vm,
        run: pxe::pxe_proxy,
    },
    Test {
        name: "pxe_install",
        what: "a VM with a blank disk installs through PXE to the only empty disk (image start streamed, read back, backup GPT moved to the disk's end), reboots from it and comes up with its per-MAC host name",
        kind: Kind::Vm,
        run: pxe::pxe_install,
    },
    Test {
        name: "usb_install",
        what: "installer.iso written raw to a USB stick: with no config it lists the disks and writes nothing unconfirmed; with machine.toml naming the disk on the stick it installs unattended to the blank virtio disk and the node reboots from slot A to ready with the config's host name",
        kind: Kind::Vm,
        run: usb::usb_install,
    },
    Test {
        name: "update_ab",
        what: "RAUC A/B: v1 -> v2 into slot B with a power cut in the download; a flipped-byte and a foreign bundle refused; power cuts mid-write and late in writing slot A; v3 fails its boot gate and the node falls back to v2",
        kind: Kind::Vm,
        run: update::update_ab,
    },
];

/// Tests being built: run only when named (`debvisor-qa test NAME`), not
/// part of the suite until they pass.
pub const WIP: &[Test] = &[];

/// What the PXE tests run on this host, built as one set (the packages
/// qa/test.sh builds, so one feature set and no rebuild).
pub const PXE_BINARIES: &[&str] = &[
    "debvisor-qa",
    "debvisor-image",
    "debvisor-provision",
    "debvisor-agent",
    "debvisorctl",
];

/// Options of `test`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// Tests to run (all when none is given).
    pub names: Vec<String>,
    /// Use this image directory instead of building target/qa/image.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Build nothing: use target/qa/image and the release binaries as they
    /// are.
    #[arg(long)]
    pub no_build: bool,
    /// List the tests and exit.
    #[arg(long)]
    pub list: bool,
    /// Seconds each boot may take to reach ready.
    #[arg(long, default_value_t = 300)]
    pub boot_timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    /// Run up to this many VM tests at once, each group in its own process
    /// (the tests sharing a node form one group); their output is printed
    /// whole as each group ends.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

/// Options of `bench update`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpdateBenchArgs {
    /// Build nothing: use target/qa/image and the release binaries as they
    /// are (the variants are still built when missing).
    #[arg(long)]
    pub no_build: bool,
    /// Seconds each boot may take to reach ready.
    #[arg(long, default_value_t = 300)]
    pub boot_timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
}

/// How a benchmark boots nodes.
#[derive(Debug, Clone, Copy)]
pub struct BenchBoot {
    pub accel: Accel,
    /// Seconds each boot may take to reach ready.
    pub boot_timeout: u64,
    /// Guest memory in MiB.
    pub memory: u32,
}

/// A [`Ctx`] for a benchmark that boots nodes from target/qa/image, with
/// fresh artifacts under target/qa/artifacts/`name`.
fn bench_ctx<'a>(
    paths: &'a Paths,
    rt: &'a tokio::runtime::Runtime,
    boot: BenchBoot,
    name: &str,
    shared: &'a Mutex<Option<Node>>,
) -> Result<Ctx<'a>> {
    let image = paths.image();
    let dir = paths.artifacts().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(Ctx {
        rt,
        paths,
        version: node::manifest_version(&image)?,
        image,
        dir,
        accel: boot.accel,
        boot_timeout: Duration::from_secs(boot.boot_timeout),
        memory_mib: boot.memory,
        shared,
    })
}

/// `bench update`: see [`update::bench`].
pub fn bench_update(paths: &Paths, rt: &tokio::runtime::Runtime, accel: Accel, a: &UpdateBenchArgs) -> Result<()> {
    if !a.no_build {
        node::build_image(paths, &paths.image(), None)?;
    }
    let shared: Mutex<Option<Node>> = Mutex::new(None);
    let boot = BenchBoot {
        accel,
        boot_timeout: a.boot_timeout,
        memory: a.memory,
    };
    let ctx = bench_ctx(paths, rt, boot, "bench_update", &shared)?;
    update::bench(&ctx, &paths.bench().join("update.json"))
}

/// `bench dhcp`'s boot figures: runs `pxe_live` and `pxe_install` as the
/// suite does (building the image and the provisioner first unless
/// `no_build`) and returns each one's seconds from QEMU start to ready.
pub fn pxe_ready_times(
    paths: &Paths,
    rt: &tokio::runtime::Runtime,
    boot: BenchBoot,
    no_build: bool,
) -> Result<Vec<(&'static str, f64)>> {
    if !no_build {
        node::build_image(paths, &paths.image(), None)?;
        host_agent::build_binaries(paths, PXE_BINARIES)?;
    }
    let shared: Mutex<Option<Node>> = Mutex::new(None);
    let mut times = Vec::new();
    for (name, f) in [("pxe_live", pxe::pxe_live as TestFn), ("pxe_install", pxe::pxe_install)] {
        let ctx = bench_ctx(paths, rt, boot, &format!("bench_{name}"), &shared)?;
        eprintln!("bench: {name} (logs in {})", ctx.dir.display());
        f(&ctx).with_context(|| format!("{name} failed: see {}", ctx.dir.display()))?;
        times.push((name, installed::ready_secs(&ctx.dir)?));
    }
    Ok(times)
}

/// Runs the selected tests; returns true when none failed.
pub fn run(paths: &Paths, rt: &tokio::runtime::Runtime, accel: Accel, a: &TestArgs) -> Result<bool> {
    if a.list {
        for t in TESTS.iter().chain(WIP) {
            let kind = match t.kind {
                Kind::Vm => "vm",
                Kind::SharedVm => "vm*",
                Kind::Host => "host",
            };
            let wip = if WIP.iter().any(|w| w.name == t.name) {
                " (being built: not in the suite yet)"
            } else {
                ""
            };
            println!("{:<28} {kind:<5} {}{wip}", t.name, t.what);
        }
        println!("vm* tests share one boot of the node");
        return Ok(true);
    }
    for name in &a.names {
        if !TESTS.iter().chain(WIP).any(|t| t.name == name) {
            bail!("No test called {name:?}: see `debvisor-qa test --list`");
        }
    }
    let selected: Vec<&Test> = if a.names.is_empty() {
        TESTS.iter().collect()
    } else {
        TESTS
            .iter()
            .chain(WIP)
            .filter(|t| a.names.iter().any(|x| x == t.name))
            .collect()
    };
    let has_vm = selected.iter().any(|t| t.kind != Kind::Host);
    let has_host = selected.iter().any(|t| t.kind == Kind::Host);
    let image = a.image.clone().unwrap_or_else(|| paths.image());
    let mut version = String::new();
    if has_vm {
        if a.image.is_none() && !a.no_build {
            // The image build also builds the release binaries.
            node::build_image(paths, &image, None)?;
        }
        version = node::manifest_version(&image)?;
    }
    if has_host && !a.no_build && (a.image.is_some() || !has_vm) {
        host_agent::build_binaries(paths, HOST_BINARIES)?;
    }
    if !a.no_build && selected.iter().any(|t| t.name.starts_with("pxe_")) {
        // The PXE tests run the provisioner on this host. Built with the
        // same packages as qa/test.sh builds (one feature set, no rebuild).
        host_agent::build_binaries(paths, PXE_BINARIES)?;
    }
    let groups = jobs::groups(&selected, LONGEST);
    let (passed, failed) = if a.jobs > 1 && groups.len() > 1 {
        let host: Vec<&Test> = selected.iter().copied().filter(|t| t.kind == Kind::Host).collect();
        let (hp, hf) = run_here(paths, rt, accel, a, &host, &image, &version)?;
        let (vp, vf) = jobs::run(paths, accel, a, &image, groups, a.jobs)?;
        (hp + vp, hf + vf)
    } else {
        run_here(paths, rt, accel, a, &selected, &image, &version)?
    };
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The VM tests that take longest (update_ab about 17 minutes, pxe_install
/// 5): with `--jobs`, they start first.
const LONGEST: &[&str] = &["update_ab", "pxe_install", "usb_install"];

/// Runs `selected` one after the other in this process; returns (passed,
/// failed).
fn run_here(
    paths: &Paths,
    rt: &tokio::runtime::Runtime,
    accel: Accel,
    a: &TestArgs,
    selected: &[&Test],
    image: &std::path::Path,
    version: &str,
) -> Result<(usize, usize)> {
    let (mut passed, mut failed) = (0, 0);
    let shared: Mutex<Option<Node>> = Mutex::new(None);
    for (i, test) in selected.iter().enumerate() {
        let name = test.name;
        let dir = paths.artifacts().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ctx = Ctx {
            rt,
            paths,
            image: image.to_path_buf(),
            version: version.to_string(),
            dir: dir.clone(),
            accel,
            boot_timeout: Duration::from_secs(a.boot_timeout),
            memory_mib: a.memory,
            shared: &shared,
        };
        let f = test.run;
        eprintln!("RUN  {name}");
        let t = Instant::now();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&ctx)));
        let secs = t.elapsed().as_secs_f64();
        let outcome = match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(p) => Err(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("PASS {name} ({secs:.1} s)");
                let _ = std::fs::write(dir.join("result.txt"), format!("PASS {secs:.1} s\n"));
            }
            Err(msg) => {
                failed += 1;
                let log = match test.kind {
                    Kind::Vm | Kind::SharedVm => format!("console log: {}", dir.join("console.log").display()),
                    Kind::Host => format!("logs: {}", dir.display()),
                };
                println!("FAIL {name} ({secs:.1} s)\n{msg}\n  {log}");
                let _ = std::fs::write(dir.join("result.txt"), format!("FAIL {secs:.1} s\n{msg}\n"));
            }
        }
        // The shared node goes down after the last test that shares it.
        if selected.get(i + 1).is_none_or(|next| next.kind != Kind::SharedVm) {
            *shared.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
    Ok((passed, failed))
}
