//! A `debvisor-agent` run on the host for benchmarks and host-side tests: a
//! throwaway PKI made with debvisor-init's library (node CA, server
//! certificate, client certificates), an agent config, the process on
//! 127.0.0.1 with mTLS (killed on drop), and client contexts for it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use debvisor_api::config::{ClientConfig, Context};
use debvisor_init::pki::Pki;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::node::Paths;
use crate::qemu::free_port;

/// Days a test client certificate is valid.
const CLIENT_DAYS: u32 = 2;

/// Builds the workspace's release binaries with cargo, for `packages` (a
/// no-op when they are up to date). Always the whole workspace: cargo
/// unifies dependency features over the packages it builds, so building a
/// subset would compile the dependency tree again with other features (and
/// the next whole-workspace build, or `cargo test --release`, once more).
pub fn build_binaries(paths: &Paths, packages: &[&str]) -> Result<()> {
    eprintln!("Building the workspace (release) for {}", packages.join(", "));
    let status = Command::new("cargo")
        .args(["build", "--release", "--locked", "--workspace"])
        .current_dir(&paths.root)
        .status()
        .context("Cannot run cargo: install Rust (rustup) or put cargo on PATH")?;
    if !status.success() {
        bail!(
            "cargo build --release --locked --workspace failed (needed for {})",
            packages.join(", ")
        );
    }
    Ok(())
}

/// The path of a release binary, which must exist.
pub fn release_binary(paths: &Paths, name: &str, package: &str) -> Result<PathBuf> {
    let p = paths.root.join("target/release").join(name);
    if !p.is_file() {
        bail!(
            "{} not found: run cargo build --release --locked --workspace (it is built by {package})",
            p.display()
        );
    }
    Ok(p)
}

/// A node PKI in a directory: CA, server certificate, client bundles.
pub struct TestPki {
    pki: Pki,
    pub dir: PathBuf,
}

impl TestPki {
    /// Creates the CA, the server certificate and the admin bundle in
    /// `dir`, as a node's first boot does.
    pub fn create(dir: &Path) -> Result<TestPki> {
        let pki = Pki::new(dir);
        pki.ensure_with("qa-host", &[IpAddr::from([127, 0, 0, 1])])
            .with_context(|| format!("Cannot create a PKI in {}", dir.display()))?;
        Ok(TestPki {
            pki,
            dir: dir.to_path_buf(),
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// Issues a client certificate whose common name is `name` and returns
    /// a context for `endpoint` that presents it.
    pub fn client(&self, name: &str, endpoint: SocketAddr) -> Result<Context> {
        let bundle = self
            .pki
            .issue_client(name, CLIENT_DAYS)
            .with_context(|| format!("Cannot issue a client certificate for {name}"))?;
        at_endpoint(bundle, endpoint)
    }

    /// The admin bundle the PKI wrote (`clients/admin.toml`), pointed at
    /// `endpoint`.
    pub fn admin(&self, endpoint: SocketAddr) -> Result<Context> {
        let bundle = ClientConfig::load(self.pki.admin_bundle_path())?;
        at_endpoint(bundle, endpoint)
    }
}

fn at_endpoint(mut bundle: ClientConfig, endpoint: SocketAddr) -> Result<Context> {
    let ctx = bundle
        .contexts
        .remove(&bundle.context)
        .context("The client bundle has no current context")?;
    Ok(Context {
        endpoints: vec![endpoint.to_string()],
        ..ctx
    })
}

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentOpts {
    /// `--sim`: a fake host, fake units and journal.
    pub sim: bool,
    /// Requests per second and burst per client identity.
    pub rate_limit: (f64, u32),
    /// The D-Bus address given to the agent as the system bus (a
    /// [`UserManager`]'s) instead of the host's.
    pub system_bus: Option<String>,
    /// With `sim`: the simulated VM daemon's vmd.toml (for example a
    /// `test://` host of many VMs); empty means `test:///default`.
    pub vmd_config: String,
    /// With `sim`: the VM daemon uses the libvirt its config names (a
    /// real libvirtd), not the test driver.
    pub real_vmd: bool,
}

/// Runs the user manager in a private mount namespace whose /run/systemd
/// says "this system runs systemd"; dbus.socket gives it a bus in
/// $XDG_RUNTIME_DIR/bus.
const USER_MANAGER: &str = "mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/system \
                            && exec /lib/systemd/systemd --user --log-target=console";

/// A systemd manager for the agent on a host whose PID 1 is not systemd
/// (a container, this development machine): `systemd --user` on its own bus,
/// with no units of its own, in a private mount namespace, so the real
/// (non-simulated) agent can start. Stopped (SIGTERM) on drop.
pub struct UserManager {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl UserManager {
    /// True when the host does not run systemd as its system manager.
    pub fn needed() -> bool {
        !Path::new("/run/systemd/system").is_dir()
    }

    /// Starts the manager and waits until it answers on its bus.
    pub async fn start() -> Result<UserManager> {
        for (tool, package) in [("unshare", "util-linux"), ("dbus-daemon", "dbus")] {
            if crate::qemu::which(tool).is_none() {
                bail!("{tool} not found: run apt-get install {package}");
            }
        }
        if !Path::new("/lib/systemd/systemd").exists() {
            bail!("/lib/systemd/systemd not found: run apt-get install systemd dbus-user-session");
        }
        std::fs::create_dir_all("/run/systemd").context("Cannot create /run/systemd to mount over")?;
        let dir = tempfile::Builder::new().prefix("debvisor-qa-systemd-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("run"))?;
        std::fs::create_dir_all(dir.path().join("config"))?;
        let log = std::fs::File::create(dir.path().join("manager.log"))?;
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "unshare", "-m", "--propagation", "private"])
            .args(["/bin/sh", "-c", USER_MANAGER])
            .env("XDG_RUNTIME_DIR", dir.path().join("run"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("HOME", dir.path())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("Cannot start systemd --user (setpriv and unshare come with util-linux)")?;
        let mut m = UserManager {
            child: Some(child),
            dir,
        };
        let address = m.bus_address();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = &mut m.child
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(m.dir.path().join("manager.log")).unwrap_or_default();
                bail!("systemd --user exited ({status}): {}", log.trim());
            }
            if ping_systemd(&address).await.is_ok() {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                bail!("systemd --user did not answer on {address} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The manager's bus, as a D-Bus address.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("run/bus").display())
    }
}

async fn ping_systemd(address: &str) -> Result<()> {
    let conn = zbus::connection::Builder::address(address).build().await?;
    conn.call_method(
        Some("org.freedesktop.systemd1"),
        "/org/freedesktop/systemd1",
        Some("org.freedesktop.DBus.Peer"),
        "Ping",
        &(),
    )
    .await?;
    Ok(())
}

impl Drop for UserManager {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Duration::from_secs(5));
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
pub(crate) fn stop_child(mut c: Child, grace: Duration) {
    if matches!(c.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(c.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// A running agent (and, when simulated, its VM daemon on the test
/// driver); killed when dropped.
pub struct HostAgent {
    child: Option<Child>,
    vmd: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub pki: TestPki,
}

impl HostAgent {
    /// Creates a PKI and config in `dir` and starts `agent` on a free port
    /// of 127.0.0.1. Call [`HostAgent::wait_healthy`] before using it.
    pub fn start(agent: &Path, dir: &Path, o: &AgentOpts) -> Result<HostAgent> {
        std::fs::create_dir_all(dir).with_context(|| format!("Cannot create {}", dir.display()))?;
        let pki = TestPki::create(&dir.join("pki"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let audit_db = dir.join("audit.db");
        let socket = dir.join("agent.sock");
        let log = dir.join("agent.log");
        let config = dir.join("agent.toml");
        let vmd_socket = dir.join("vmd.sock");
        let (per_second, burst) = o.rate_limit;
        std::fs::write(
            &config,
            format!(
                "[rate_limit]\nper_second = {per_second:.1}\nburst = {burst}\n\n[metrics]\nlisten = \"{metrics}\"\n\n[audit]\npath = \"{}\"\n\n[vm]\nsocket = \"{}\"\n",
                audit_db.display(),
                vmd_socket.display()
            ),
        )?;
        let vmd = if o.sim {
            let vmd_config = dir.join("vmd.toml");
            std::fs::write(&vmd_config, &o.vmd_config)?;
            let bin = agent.with_file_name("debvisor-vmd");
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "--config".as_ref(),
                vmd_config.as_os_str(),
                "--socket".as_ref(),
                vmd_socket.as_os_str(),
            ];
            if !o.real_vmd {
                args.push("--sim".as_ref());
            }
            Some(spawn_logged(&bin, &args, &[], &dir.join("vmd.log"))?)
        } else {
            None
        };
        let _ = std::fs::remove_file(&socket);
        let logf = std::fs::File::create(&log).with_context(|| format!("Cannot create {}", log.display()))?;
        let mut cmd = Command::new("setpriv");
        // The agent dies with this process even if it is killed outright.
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(agent);
        cmd.arg("--config").arg(&config);
        cmd.arg("--socket").arg(&socket);
        cmd.arg("--listen").arg(addr.to_string());
        cmd.arg("--tls-cert").arg(pki.server_cert());
        cmd.arg("--tls-key").arg(pki.server_key());
        cmd.arg("--tls-client-ca").arg(pki.ca());
        cmd.arg("--audit-db").arg(&audit_db);
        if o.sim {
            cmd.arg("--sim");
        }
        if let Some(bus) = &o.system_bus {
            cmd.env("DBUS_SYSTEM_BUS_ADDRESS", bus);
        }
        cmd.env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = cmd
            .spawn()
            .with_context(|| format!("Cannot start {} (setpriv comes with util-linux)", agent.display()))?;
        Ok(HostAgent {
            pid: child.id(),
            child: Some(child),
            vmd,
            addr,
            log,
            pki,
        })
    }

    /// A client context with its own certificate, common name `name`.
    pub fn client(&self, name: &str) -> Result<Context> {
        self.pki.client(name, self.addr)
    }

    /// The admin bundle's context (common name "admin").
    pub fn admin(&self) -> Result<Context> {
        self.pki.admin(self.addr)
    }

    /// The last `n` lines the agent logged.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Fails with the agent's log when it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(c) = &mut self.child
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!(
                "debvisor-agent exited ({status}); its log ({}):\n{}",
                self.log.display(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Waits until grpc.health.v1 reports SERVING over mTLS with `ctx`.
    pub async fn wait_healthy(&mut self, ctx: &Context, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let err = match health(ctx).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(err.context(format!(
                    "debvisor-agent did not answer health within {} s; its log:\n{}",
                    timeout.as_secs(),
                    self.log_tail(30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the agent and its VM daemon (SIGTERM, then SIGKILL after
    /// 5 s) and reaps them.
    pub fn stop(&mut self) {
        for c in [self.child.take(), self.vmd.take()].into_iter().flatten() {
            stop_child(c, Duration::from_secs(5));
        }
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `bin` with `args` and `env`, its output in `log`; it dies with
/// this process.
pub(crate) fn spawn_logged(
    bin: &Path,
    args: &[impl AsRef<std::ffi::OsStr>],
    env: &[(String, String)],
    log: &Path,
) -> Result<Child> {
    let logf = std::fs::File::create(log).with_context(|| format!("Cannot create {}", log.display()))?;
    Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("Cannot start {} (setpriv comes with util-linux)", bin.display()))
}

/// One health check (service "") over mTLS.
pub async fn health(ctx: &Context) -> Result<()> {
    let ch = tokio::time::timeout(Duration::from_secs(5), debvisor_api::tls::connect_mtls(ctx))
        .await
        .context("Connecting timed out")??;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }),
    )
    .await
    .context("Health check timed out")??;
    let status = r.into_inner().status;
    if status != ServingStatus::Serving as i32 {
        bail!("Health answered {:?}", ServingStatus::try_from(status));
    }
    Ok(())
}
