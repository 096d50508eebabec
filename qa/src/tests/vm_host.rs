//! VMs on this host with a real libvirtd and QEMU (TCG): the agent
//! (simulated host facilities) forwards to a real `debvisor-vmd`, which
//! drives libvirtd; the guest is the tiny kernel + busybox ISO that
//! [`crate::tiny_guest`] assembles from Debian's packages.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use debvisor_api::config::ClientConfig;

use super::Ctx;
use super::host::{Output, audit_records, run};
use crate::host_agent::{self, AgentOpts, HostAgent};
use crate::libvirtd::Libvirtd;
use crate::tiny_guest;

/// The storage pool the test defines (and removes).
const POOL: &str = "dvqa-console";
/// Where that pool keeps its files (a place libvirt's QEMU user may read).
const POOL_DIR: &str = "/var/lib/libvirt/images/dvqa-console";
const VM: &str = "tiny-1";

/// A pool of libvirtd, undefined with its directory when dropped.
struct Pool {
    uri: String,
}

impl Pool {
    fn create(uri: &str, iso: &Path) -> Result<Pool> {
        let pool = Pool { uri: uri.to_string() };
        pool.remove();
        std::fs::create_dir_all(POOL_DIR).with_context(|| format!("Cannot create {POOL_DIR}"))?;
        std::fs::copy(iso, Path::new(POOL_DIR).join("tiny.iso"))
            .with_context(|| format!("Cannot copy {} into {POOL_DIR}", iso.display()))?;
        pool.virsh(&["pool-define-as", POOL, "dir", "--target", POOL_DIR])?;
        pool.virsh(&["pool-start", POOL])?;
        Ok(pool)
    }

    fn virsh(&self, args: &[&str]) -> Result<String> {
        let o = Command::new("virsh")
            .args(["-c", &self.uri])
            .args(args)
            .output()
            .context("Cannot run virsh (libvirt-clients)")?;
        ensure!(
            o.status.success(),
            "virsh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Removes the VM (if a failed run left it), the pool and its files.
    fn remove(&self) {
        for args in [
            &["destroy", VM][..],
            &["undefine", VM],
            &["pool-destroy", POOL],
            &["pool-undefine", POOL],
        ] {
            let _ = self.virsh(args);
        }
        let _ = std::fs::remove_dir_all(POOL_DIR);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `debvisorctl vm console` as a child with piped input; its output
/// collected by a thread.
struct Session {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Session {
    fn open(ctl: &Path, config: &Path) -> Result<Session> {
        let mut child = Command::new(ctl)
            .arg("--config")
            .arg(config)
            .args(["vm", "console", VM])
            .env_remove("DEBVISORCONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("Cannot run debvisorctl vm console")?;
        let out = Arc::new(Mutex::new(Vec::new()));
        for r in [
            child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>),
            child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut r = r;
                let mut b = [0u8; 4096];
                while let Ok(n) = r.read(&mut b) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&b[..n]);
                }
            });
        }
        Ok(Session { child, out })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    fn type_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("the console's input is closed")?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Types `line` every few seconds until the output holds `want`
    /// (input typed before the guest's shell runs is lost).
    fn until(&mut self, line: &str, want: &str, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut typed = None::<Instant>;
        while start.elapsed() < limit {
            if self.text().contains(want) {
                return Ok(start.elapsed());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!("vm console exited ({st}) before {want:?}; it printed: {}", self.text());
            }
            if typed.is_none_or(|t| t.elapsed() > Duration::from_secs(3)) {
                self.type_line(line)?;
                typed = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "no {want:?} from the guest within {} s; the console printed: {}",
            limit.as_secs(),
            self.text()
        )
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn vm_console_host(ctx: &Ctx) -> Result<()> {
    let iso = tiny_guest::iso(&ctx.paths.cache()).context("Building the tiny guest's ISO")?;
    let lvd = Libvirtd::ensure(&ctx.dir.join("libvirtd"))?;
    let pool = Pool::create(lvd.uri(), &iso)?;
    let agent_bin = host_agent::release_binary(ctx.paths, "debvisor-agent", "debvisor-agent")?;
    host_agent::release_binary(ctx.paths, "debvisor-vmd", "debvisor-vmd")?;
    let ctl = host_agent::release_binary(ctx.paths, "debvisorctl", "debvisorctl")?;
    let mut agent = HostAgent::start(
        &agent_bin,
        &ctx.dir.join("agent"),
        &AgentOpts {
            sim: true,
            rate_limit: (200.0, 400),
            system_bus: None,
            vmd_config: format!("uri = \"{}\"\npool = \"{POOL}\"\ndomain_type = \"qemu\"\n", lvd.uri()),
            real_vmd: true,
        },
    )?;
    let admin = agent.admin()?;
    ctx.rt.block_on(agent.wait_healthy(&admin, Duration::from_secs(30)))?;
    let config = ctx.dir.join("debvisorconfig.toml");
    ClientConfig::single("host", admin).save(&config)?;

    let res = console_session(ctx, &ctl, &config);
    let logs = format!(
        "\nagent log ({}):\n{}\nvmd log: {}; libvirtd log: {}",
        agent.log.display(),
        agent.log_tail(20),
        ctx.dir.join("agent/vmd.log").display(),
        lvd.log().map_or("the host's".into(), |p| p.display().to_string())
    );
    drop(agent);
    drop(pool);
    drop(lvd);
    res.map_err(|e| anyhow::anyhow!("{e:#}{logs}"))
}

fn console_session(ctx: &Ctx, ctl: &Path, config: &PathBuf) -> Result<()> {
    let ctl_run = |label: &str, args: &[&str]| -> Result<Output> {
        let mut c = Command::new(ctl);
        c.arg("--config").arg(config).args(args).env_remove("DEBVISORCONFIG");
        run(&mut c, label, &ctx.dir)?.ok(&format!("debvisorctl {}", args.join(" ")))
    };
    ctl_run(
        "create",
        &[
            "vm",
            "create",
            VM,
            "--vcpus",
            "1",
            "--memory",
            "128",
            "--disk",
            "iso:tiny.iso",
            "--boot",
            "cdrom",
        ],
    )?;
    let t = Instant::now();
    ctl_run("start", &["vm", "start", VM])?;
    eprintln!("  create and start: {:.1} s", t.elapsed().as_secs_f64());

    let banner = display_banner(ctl, config)?;
    ensure!(
        banner.starts_with("RFB 003."),
        "the display forwarded by debvisorctl vm display did not greet as VNC: {banner:?}"
    );
    eprintln!("  vm display: the VM's VNC server greets with {:?}", banner.trim());

    let mut s = Session::open(ctl, config)?;
    let took = s.until("echo $((6*7))answer", "42answer", Duration::from_secs(120))?;
    eprintln!(
        "  the guest answered through the console after {:.1} s",
        took.as_secs_f64()
    );
    ensure!(
        s.text().contains(tiny_guest::PROMPT),
        "no shell prompt {:?} on the console: {}",
        tiny_guest::PROMPT,
        s.text()
    );
    s.type_line("poweroff -f")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = s.child.try_wait()? {
            break st;
        }
        ensure!(
            Instant::now() < deadline,
            "vm console did not end within 60 s of poweroff; it printed: {}",
            s.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(status.success(), "vm console exited with {status}: {}", s.text());
    ensure!(
        s.text().contains("console of tiny-1 closed"),
        "vm console did not say the console closed: {}",
        s.text()
    );
    let show = ctl_run("show", &["--json", "vm", "show", VM])?;
    let v: serde_json::Value = serde_json::from_str(show.stdout.trim()).context("vm show --json")?;
    ensure!(
        v["summary"]["state_text"] == "shutoff",
        "after poweroff the VM is {}",
        v["summary"]["state_text"]
    );
    ctl_run("delete", &["vm", "delete", VM])?;

    let q = ctl_run("audit", &["audit", "query", "--json"])?;
    let actions: Vec<String> = audit_records(&q.stdout)?
        .iter()
        .filter(|r| r["target"] == format!("vm:{VM}") && r["ok"] == true)
        .filter_map(|r| r["action"].as_str().map(str::to_string))
        .collect();
    for want in ["vm.create", "vm.start", "vm.console", "vm.delete"] {
        ensure!(
            actions.iter().any(|a| a == want),
            "no successful {want} on vm:{VM} in the audit: {actions:?}"
        );
    }
    Ok(())
}

/// Runs `debvisorctl vm display` on a free local port, connects to it as a
/// VNC viewer would and answers the server's greeting (the RFB version).
fn display_banner(ctl: &Path, config: &Path) -> Result<String> {
    let mut child = Command::new(ctl)
        .arg("--config")
        .arg(config)
        .args(["vm", "display", VM, "--listen", "127.0.0.1:0"])
        .env_remove("DEBVISORCONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("Cannot run debvisorctl vm display")?;
    let res = (|| {
        let mut err = std::io::BufReader::new(child.stderr.take().context("no stderr")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut err, &mut line)?;
        let port = line
            .strip_prefix(&format!("The display of {VM} is on 127.0.0.1:"))
            .and_then(|r| r.split(':').next())
            .with_context(|| format!("vm display printed {line:?}"))?
            .to_string();
        let mut viewer = std::net::TcpStream::connect(format!("127.0.0.1:{port}"))?;
        viewer.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut banner = [0u8; 12];
        viewer
            .read_exact(&mut banner)
            .context("no greeting from the display within 30 s")?;
        Ok(String::from_utf8_lossy(&banner).into_owned())
    })();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = child.wait();
    res
}

/// The same tiny guest's serial console in headless Chromium: the console
/// page's xterm.js, its WebSocket, the agent and a real debvisor-vmd.
pub(super) fn vm_console_browser(ctx: &Ctx) -> Result<()> {
    use crate::console_host::{AgentSetup, ConsoleHost};

    let iso = tiny_guest::iso(&ctx.paths.cache()).context("Building the tiny guest's ISO")?;
    let lvd = Libvirtd::ensure(&ctx.dir.join("libvirtd"))?;
    let pool = Pool::create(lvd.uri(), &iso)?;
    let setup = AgentSetup {
        config: String::new(),
        vmd_config: Some(format!(
            "uri = \"{}\"\npool = \"{POOL}\"\ndomain_type = \"qemu\"\n",
            lvd.uri()
        )),
    };
    let mut host = ConsoleHost::start_with(ctx.paths, &ctx.dir, &[], &setup)?;
    let ctl = host_agent::release_binary(ctx.paths, "debvisorctl", "debvisorctl")?;
    let ctl_run = |label: &str, args: &[&str]| -> Result<Output> {
        let mut c = Command::new(&ctl);
        c.arg("--socket").arg(&host.agent_socket).args(args);
        run(&mut c, label, &ctx.dir)?.ok(&format!("debvisorctl {}", args.join(" ")))
    };
    ctl_run(
        "create",
        &[
            "vm",
            "create",
            VM,
            "--vcpus",
            "1",
            "--memory",
            "128",
            "--disk",
            "iso:tiny.iso",
            "--boot",
            "cdrom",
        ],
    )?;
    ctl_run("start", &["vm", "start", VM])?;
    let res = ctx.rt.block_on(browser_console(ctx, &host));
    let _ = ctl_run("stop", &["vm", "stop", VM]);
    let _ = ctl_run("delete", &["vm", "delete", VM]);
    let checked = host.check();
    drop(host);
    drop(pool);
    drop(lvd);
    res.and(checked)
}

async fn browser_console(ctx: &Ctx<'_>, host: &crate::console_host::ConsoleHost) -> Result<()> {
    use super::console_browser::{Web, sign_in};
    use crate::browser::{Browser, Scripts};

    let b = Browser::start_with(&ctx.dir, Some(&host.pki.server_cert()), Scripts::On).await?;
    let mut w = Web {
        b,
        base: host.base(),
        password: host.password.clone(),
        ctl: None,
    };
    let res = async {
        sign_in(&mut w).await?;
        // The VM's page links to its console while it runs.
        w.b.goto(&w.url(&format!("/vm/{VM}"))).await?;
        w.b.click("#vm-console").await?;
        w.b.wait_path(&format!("/vm/{VM}/console")).await?;
        w.b.wait_text("#console-status", "the console connected", |t| {
            t.starts_with("Connected")
        })
        .await?;
        let input = w.b.wait_css("#console .xterm-helper-textarea").await?;
        let start = Instant::now();
        let answered = loop {
            let rows = w.b.wait_css("#console .xterm-rows").await?.text().await?;
            // The echo's own line (the typed command shows as "echo
            // $((6*7))answer", a mangled one fails as "sh: ...").
            if rows.lines().any(|l| l.trim() == "42answer") {
                break start.elapsed();
            }
            ensure!(
                start.elapsed() < Duration::from_secs(120),
                "no answer from the guest's shell in the browser within 120 s; the terminal shows: {rows}"
            );
            // Typed before the guest's shell runs, input is lost: type again.
            // A lone Enter first gives a fresh prompt and the terminal the
            // focus.
            input.send_keys("\u{E007}").await?;
            tokio::time::sleep(Duration::from_millis(700)).await;
            input.send_keys("echo $((6*7))answer\u{E007}").await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
        };
        eprintln!(
            "  the guest answered in the browser's terminal after {:.1} s",
            answered.as_secs_f64()
        );
        w.b.screenshot("vm-console").await?;
        input.send_keys("poweroff -f\u{E007}").await?;
        let closed =
            w.b.wait_text_within(
                "#console-status",
                "the console closed when the VM stopped",
                Duration::from_secs(60),
                |t| t.starts_with("Console closed") && t.contains("VM stopped"),
            )
            .await?;
        eprintln!("  after poweroff the page says: {closed}");
        let csp = w.b.csp_violations().await?;
        ensure!(csp.is_empty(), "CSP violations on the console page: {csp:?}");
        Ok(())
    }
    .await;
    let _ = w.b.close().await;
    res
}
