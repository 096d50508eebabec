//! The console on this host: the release `debvisor-agent --sim` on a Unix
//! socket (the harness's user is the console's user, so the agent records
//! `console:USER`) and the release `debvisor-webui` on 127.0.0.1 with a
//! throwaway PKI and an admin password made as a node's first boot makes it
//! (argon2id with the production parameters). Used by the `console_browser`
//! test and by `bench console`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::host_agent::{TestPki, release_binary};
use crate::node::Paths;

/// How long the daemons may take to listen.
const START: Duration = Duration::from_secs(30);

/// A daemon started by the harness, killed when dropped.
pub struct Daemon {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(
        name: &'static str,
        bin: &Path,
        env: &[(String, String)],
        args: &[String],
        log: PathBuf,
    ) -> Result<Daemon> {
        let child = crate::host_agent::spawn_logged(bin, args, env, &log)?;
        Ok(Daemon {
            name,
            child: Some(child),
            log,
        })
    }

    /// The process id (setpriv execs the daemon, so it is the daemon's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails with the log when the daemon has exited.
    pub fn check(&mut self) -> Result<()> {
        if let Some(c) = &mut self.child
            && let Some(status) = c.try_wait()?
        {
            bail!(
                "{} exited ({status}); its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits until `ready` holds, failing early if the daemon exits.
    fn wait(&mut self, what: &str, ready: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + START;
        while !ready() {
            self.check()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not {what} within {} s; its log:\n{}",
                    self.name,
                    START.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The name of the user this process runs as (the agent trusts the
/// console's user to name the end user).
fn user_name() -> Result<String> {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .context("Cannot look up this process's user")?
        .with_context(|| format!("uid {uid} has no user name"))?;
    Ok(user.name)
}

/// How the console's agent runs, beyond the defaults.
#[derive(Debug, Default, Clone)]
pub struct AgentSetup {
    /// Top-level agent.toml lines (e.g. `provision = "FILE"`).
    pub config: String,
    /// The VM daemon's vmd.toml for a real libvirt; `None`: the test
    /// driver (`--sim`).
    pub vmd_config: Option<String>,
}

/// The simulated agent and the console in front of it, both killed on drop.
pub struct ConsoleHost {
    /// `debvisor-vmd --sim`: the agent's VMs, on libvirt's test driver.
    pub vmd: Daemon,
    /// `debvisor-agent --sim`.
    pub agent: Daemon,
    /// `debvisor-webui`.
    pub webui: Daemon,
    /// The console's HTTPS address on 127.0.0.1.
    pub https: SocketAddr,
    /// The admin's password.
    pub password: String,
    /// The agent's Unix socket.
    pub agent_socket: PathBuf,
    /// The PKI whose server certificate the console presents.
    pub pki: TestPki,
}

/// The `Environment=` settings of the node's unit `unit` (from the image's
/// overlay), so that a daemon on the host runs as it does on a node.
pub fn unit_environment(paths: &Paths, unit: &str) -> Result<Vec<(String, String)>> {
    let file = paths
        .root
        .join("recipes/overlay/node/usr/lib/systemd/system")
        .join(unit);
    let text = std::fs::read_to_string(&file).with_context(|| format!("Cannot read {}", file.display()))?;
    Ok(parse_environment(&text))
}

/// The `KEY=VALUE` pairs of a unit's `Environment=` lines (one pair per
/// line, no quoting: what our units use).
fn parse_environment(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

impl ConsoleHost {
    /// Starts both daemons with their files in `dir` (which must exist) and
    /// waits until the console listens for HTTPS.
    pub fn start(paths: &Paths, dir: &Path) -> Result<ConsoleHost> {
        Self::start_with(paths, dir, &[], &AgentSetup::default())
    }

    /// Like [`ConsoleHost::start`], with more flags for the console (for
    /// example a short `--idle-timeout`) and the agent set up as `agent_setup`
    /// says.
    pub fn start_with(
        paths: &Paths,
        dir: &Path,
        webui_flags: &[String],
        agent_setup: &AgentSetup,
    ) -> Result<ConsoleHost> {
        let agent_bin = release_binary(paths, "debvisor-agent", "debvisor-agent")?;
        let vmd_bin = release_binary(paths, "debvisor-vmd", "debvisor-vmd")?;
        let webui_bin = release_binary(paths, "debvisor-webui", "debvisor-webui")?;
        let pki = TestPki::create(&dir.join("pki"))?;
        let hash = dir.join("admin.argon2");
        let password = debvisor_init::credentials::ensure_admin(&hash, false)
            .context("Cannot make the admin credential")?
            .context("The admin credential already existed")?;

        let socket = dir.join("agent.sock");
        let vmd_socket = dir.join("vmd.sock");
        let metrics = SocketAddr::from(([127, 0, 0, 1], crate::qemu::free_port()?));
        let agent_cfg = dir.join("agent.toml");
        std::fs::write(
            &agent_cfg,
            format!(
                "console_user = \"{}\"\n{}\n[metrics]\nlisten = \"{metrics}\"\n\n[vm]\nsocket = \"{}\"\n",
                user_name()?,
                agent_setup.config,
                vmd_socket.display()
            ),
        )?;
        let s = |p: &Path| p.display().to_string();
        let mut vmd_args = vec![
            "--config".into(),
            s(&dir.join("vmd.toml")),
            "--socket".into(),
            s(&vmd_socket),
        ];
        match &agent_setup.vmd_config {
            Some(c) => std::fs::write(dir.join("vmd.toml"), c)?,
            None => vmd_args.push("--sim".into()),
        }
        // The simulated agent's VMs: libvirt's test driver, behind its own
        // VM daemon as on a node.
        let mut vmd = Daemon::start(
            "debvisor-vmd",
            &vmd_bin,
            &unit_environment(paths, "debvisor-vmd.service")?,
            &vmd_args,
            dir.join("vmd.log"),
        )?;
        vmd.wait("listen on its socket", || {
            std::os::unix::net::UnixStream::connect(&vmd_socket).is_ok()
        })?;
        let mut agent = Daemon::start(
            "debvisor-agent",
            &agent_bin,
            &unit_environment(paths, "debvisor-agent.service")?,
            &[
                "--sim".into(),
                "--no-tcp".into(),
                "--config".into(),
                s(&agent_cfg),
                "--socket".into(),
                s(&socket),
            ],
            dir.join("agent.log"),
        )?;
        agent.wait("listen on its socket", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })?;

        let https = SocketAddr::from(([127, 0, 0, 1], crate::qemu::free_port()?));
        let http = SocketAddr::from(([127, 0, 0, 1], crate::qemu::free_port()?));
        let mut webui = Daemon::start(
            "debvisor-webui",
            &webui_bin,
            &unit_environment(paths, "debvisor-webui.service")?,
            &[
                "--listen".into(),
                https.to_string(),
                "--http-listen".into(),
                http.to_string(),
                "--tls-cert".into(),
                s(&pki.server_cert()),
                "--tls-key".into(),
                s(&pki.server_key()),
                "--agent-socket".into(),
                s(&socket),
                "--admin-hash".into(),
                s(&hash),
                "--db".into(),
                s(&dir.join("console.db")),
                "--healthz-fault-file".into(),
                s(&dir.join("healthz-fault")),
            ]
            .into_iter()
            .chain(webui_flags.iter().cloned())
            .collect::<Vec<String>>(),
            dir.join("webui.log"),
        )?;
        webui.wait("listen for HTTPS", || std::net::TcpStream::connect(https).is_ok())?;
        Ok(ConsoleHost {
            vmd,
            agent,
            webui,
            https,
            password,
            agent_socket: socket,
            pki,
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("https://{}", self.https)
    }

    /// Fails with a daemon's log when either has exited.
    pub fn check(&mut self) -> Result<()> {
        self.vmd.check()?;
        self.agent.check()?;
        self.webui.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_lines_of_a_unit() {
        let unit = "[Service]\n# Environment=NOT=this\nEnvironment=GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304\nExecStart=/x\n";
        assert_eq!(
            parse_environment(unit),
            [(
                "GLIBC_TUNABLES".to_string(),
                "glibc.malloc.mmap_threshold=4194304".to_string()
            )]
        );
    }
}
