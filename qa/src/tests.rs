//! `debvisor-qa test`: system tests. Each boots its own fresh overlay of the
//! image, acts like a user, and asserts what it sees. Console logs are kept
//! under target/qa/artifacts/<test>/console.log.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::node::{self, Node, NodeOpts, Paths};
use crate::probes;
use crate::qemu::Accel;
use crate::serial::SerialGuest;

/// What every test gets.
pub struct Ctx<'a> {
    pub rt: &'a tokio::runtime::Runtime,
    pub image: PathBuf,
    pub version: String,
    pub dir: PathBuf,
    pub accel: Accel,
    pub boot_timeout: Duration,
    pub memory_mib: u32,
}

impl Ctx<'_> {
    /// Boots a fresh node for this test.
    fn boot(&self) -> Result<Node> {
        node::boot(
            self.rt,
            &NodeOpts {
                image: self.image.clone(),
                workdir: self.dir.clone(),
                console_log: self.dir.join("console.log"),
                memory_mib: self.memory_mib,
                accel: self.accel,
                console_port: None,
                agent_port: None,
                detach: false,
                boot_timeout: self.boot_timeout,
                progress: false,
            },
        )
    }
}

type TestFn = fn(&Ctx) -> Result<()>;

/// Every system test: name, what it checks, the test.
pub const TESTS: &[(&str, &str, TestFn)] = &[
    (
        "boots_to_ready",
        "the node prints its fingerprint, admin password and ready",
        boots_to_ready,
    ),
    (
        "console_login_https",
        "admin logs in to the console over HTTPS",
        console_login_https,
    ),
    (
        "agent_status_tls",
        "GetStatus over TLS reports the image truthfully",
        agent_status_tls,
    ),
    ("root_read_only", "the root file system is read-only", root_read_only),
    (
        "persistence_across_reboot",
        "/etc and /var survive a reboot",
        persistence_across_reboot,
    ),
];

fn admin(n: &Node) -> Result<(String, String)> {
    n.admin
        .clone()
        .context("The first boot printed no `DEBVISOR: admin-password` line")
}

fn boots_to_ready(ctx: &Ctx) -> Result<()> {
    let n = ctx.boot()?;
    let (user, pw) = admin(&n)?;
    ensure!(user == "admin", "The admin user is {user:?}, expected \"admin\"");
    ensure!(!pw.is_empty(), "The admin password is empty");
    ensure!(n.fingerprint.len() == 64, "Bad fingerprint {}", n.fingerprint);
    Ok(())
}

fn console_login_https(ctx: &Ctx) -> Result<()> {
    let n = ctx.boot()?;
    let (user, pw) = admin(&n)?;
    let page = ctx
        .rt
        .block_on(probes::console_login(n.vm.console_port, &n.fingerprint, &user, &pw))?;
    ensure!(
        page.contains(&n.status.hostname),
        "The status page does not show the hostname {:?} that GetStatus reports",
        n.status.hostname
    );
    // A wrong password must not log in.
    let bad = ctx.rt.block_on(probes::console_login(
        n.vm.console_port,
        &n.fingerprint,
        &user,
        "wrong-password",
    ));
    ensure!(bad.is_err(), "The console accepted a wrong password");
    Ok(())
}

fn agent_status_tls(ctx: &Ctx) -> Result<()> {
    let n = ctx.boot()?;
    let s = &n.status;
    ensure!(!s.hostname.is_empty(), "Empty hostname");
    ensure!(
        s.image_version == ctx.version,
        "image_version {:?} differs from manifest.json's {:?}",
        s.image_version,
        ctx.version
    );
    ensure!(
        s.booted_slot == "A",
        "booted_slot is {:?}, expected \"A\"",
        s.booted_slot
    );
    ensure!(s.uptime_seconds > 0.0, "uptime_seconds is {}", s.uptime_seconds);
    let mem = s.memory.as_ref().map(|m| m.total_bytes).unwrap_or(0);
    ensure!(mem > 0, "memory.total_bytes is 0");
    ensure!(!s.simulated, "The agent runs in simulation mode");
    let root = s
        .disks
        .iter()
        .find(|d| d.name == "root")
        .with_context(|| format!("No root disk in {:?}", s.disks))?;
    ensure!(root.read_only, "The root disk is not reported read-only: {root:?}");
    ensure!(
        s.disks.iter().any(|d| d.name == "data" && d.total_bytes > 0),
        "No data disk in {:?}",
        s.disks
    );
    Ok(())
}

const CMD: Duration = Duration::from_secs(60);

fn root_read_only(ctx: &Ctx) -> Result<()> {
    let n = ctx.boot()?;
    let (_, pw) = admin(&n)?;
    let mut g = SerialGuest::login(&n.vm.console, "root", &pw, Duration::from_secs(120))?;
    let (rc, out) = g.exec("touch /usr/x 2>&1", CMD)?;
    ensure!(rc != 0, "touch /usr/x succeeded on the root file system");
    ensure!(
        out.contains("Read-only file system"),
        "touch /usr/x failed without \"Read-only file system\": {out}"
    );
    let (_, opts) = g.exec("findmnt -n -o OPTIONS /", CMD)?;
    ensure!(opts.trim().split(',').any(|o| o == "ro"), "/ is not mounted ro: {opts}");
    Ok(())
}

fn token() -> String {
    let mut b = [0u8; 8];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if filled.is_err() {
        b = (std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64).to_le_bytes();
    }
    hex::encode(b)
}

fn persistence_across_reboot(ctx: &Ctx) -> Result<()> {
    let n = ctx.boot()?;
    let (_, pw) = admin(&n)?;
    let tok = token();
    let con = &n.vm.console;
    let machine_id = {
        let mut g = SerialGuest::login(con, "root", &pw, Duration::from_secs(120))?;
        let (rc, out) = g.exec(
            &format!("echo {tok} > /etc/qa-token && echo {tok} > /var/lib/qa-token && sync"),
            CMD,
        )?;
        ensure!(rc == 0, "Writing the token files failed: {out}");
        let (_, id) = g.exec("cat /etc/machine-id", CMD)?;
        let from = con.offset();
        g.send_line("systemctl reboot")?;
        (id.trim().to_string(), from)
    };
    let (id_before, from) = machine_id;
    let second = node::wait_node(ctx.rt, &n.vm, from, ctx.boot_timeout)
        .map_err(|e| node::with_tail(e.context("The node did not come back after reboot"), &n.vm))?;
    ensure!(
        second.0.admin.is_none(),
        "The second boot printed the admin password again (it must only appear at first boot)"
    );
    let mut g = SerialGuest::login(con, "root", &pw, Duration::from_secs(120))
        .context("Logging in after the reboot with the first boot's password failed")?;
    for f in ["/etc/qa-token", "/var/lib/qa-token"] {
        let (rc, out) = g.exec(&format!("cat {f}"), CMD)?;
        ensure!(rc == 0 && out.trim() == tok, "{f} lost its token {tok}: {out}");
    }
    let (_, id_after) = g.exec("cat /etc/machine-id", CMD)?;
    ensure!(
        id_after.trim() == id_before,
        "/etc/machine-id changed across the reboot: {id_before} -> {}",
        id_after.trim()
    );
    Ok(())
}

/// Options of `test`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// Tests to run (all when none is given).
    pub names: Vec<String>,
    /// Use this image directory instead of building target/qa/image.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Do not build the image; use target/qa/image as it is.
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
}

/// Runs the selected tests; returns true when none failed.
pub fn run(paths: &Paths, rt: &tokio::runtime::Runtime, accel: Accel, a: &TestArgs) -> Result<bool> {
    if a.list {
        for (name, what, _) in TESTS {
            println!("{name:<28} {what}");
        }
        return Ok(true);
    }
    for name in &a.names {
        if !TESTS.iter().any(|(n, _, _)| n == name) {
            bail!("No test called {name:?}: see `debvisor-qa test --list`");
        }
    }
    let image = match &a.image {
        Some(i) => i.clone(),
        None => {
            let i = paths.image();
            if !a.no_build {
                node::build_image(paths, &i, None)?;
            }
            i
        }
    };
    let version = node::manifest_version(&image)?;
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|(n, _, _)| a.names.is_empty() || a.names.iter().any(|x| x == n))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, _, f) in selected {
        let dir = paths.artifacts().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ctx = Ctx {
            rt,
            image: image.clone(),
            version: version.clone(),
            dir: dir.clone(),
            accel,
            boot_timeout: Duration::from_secs(a.boot_timeout),
            memory_mib: a.memory,
        };
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
                println!(
                    "FAIL {name} ({secs:.1} s)\n{msg}\n  console log: {}",
                    dir.join("console.log").display()
                );
                let _ = std::fs::write(dir.join("result.txt"), format!("FAIL {secs:.1} s\n{msg}\n"));
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}
