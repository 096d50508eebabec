//! `debvisor-qa lab`: one node in QEMU for a developer, in the foreground or
//! detached with its state in target/qa/lab/state.json.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use debvisor_api::config::ClientConfig;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::node::{self, NodeOpts, Paths};
use crate::qemu::{self, Accel};
use crate::{probes, qemu::GRACEFUL};

/// What a detached lab leaves behind for `lab down` and `lab status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabState {
    pub pid: u32,
    pub console_port: u16,
    pub agent_port: u16,
    pub fingerprint: String,
    pub admin_user: String,
    pub admin_password: Option<String>,
    /// The lab directory: overlay, sockets, console.log.
    pub workdir: PathBuf,
    /// Seconds since the Unix epoch when QEMU started.
    pub started_unix: u64,
}

impl LabState {
    pub fn load(path: &Path) -> Result<Option<LabState>> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .with_context(|| format!("Bad lab state {}: delete it if no lab runs", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("Cannot read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, path).with_context(|| format!("Cannot write {}", path.display()))
    }

    /// True when the pid still is this lab's QEMU (not a recycled pid).
    pub fn running(&self) -> bool {
        qemu::alive(self.pid) && qemu::is_our_qemu(self.pid, &self.workdir.join("serial.sock").display().to_string())
    }
}

/// Options of `lab up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Rebuild the image even if target/qa/image/disk.img exists.
    #[arg(long)]
    pub rebuild: bool,
    /// Leave the VM running and exit once it is ready.
    #[arg(long)]
    pub detach: bool,
    /// Host port for the console (guest 443); free port if omitted.
    #[arg(long)]
    pub console_port: Option<u16>,
    /// Host port for the agent (guest 7443); free port if omitted.
    #[arg(long)]
    pub agent_port: Option<u16>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    /// Seconds to wait for the node to become ready.
    #[arg(long, default_value_t = 600)]
    pub boot_timeout: u64,
}

fn state_path(paths: &Paths) -> PathBuf {
    paths.lab().join("state.json")
}

pub fn up(paths: &Paths, rt: &tokio::runtime::Runtime, accel: Accel, a: &UpArgs) -> Result<()> {
    let lab = paths.lab();
    std::fs::create_dir_all(&lab)?;
    if let Some(st) = LabState::load(&state_path(paths))? {
        if st.running() {
            bail!(
                "A lab is already running (pid {}): run `debvisor-qa lab down` first",
                st.pid
            );
        }
        std::fs::remove_file(state_path(paths))?;
    }
    let image = paths.image();
    if a.rebuild || !image.join("disk.img").exists() {
        node::build_image(paths, &image, None)?;
    }
    GRACEFUL.store(true, Ordering::SeqCst);
    let n = node::boot(
        rt,
        &NodeOpts {
            image: image.clone(),
            workdir: lab.clone(),
            console_log: lab.join("console.log"),
            memory_mib: a.memory,
            accel,
            console_port: a.console_port,
            agent_port: a.agent_port,
            detach: a.detach,
            boot_timeout: Duration::from_secs(a.boot_timeout),
            progress: true,
        },
    )?;
    let (user, password) = match &n.admin {
        Some((u, p)) => (u.clone(), Some(p.clone())),
        None => ("admin".to_string(), None),
    };
    println!(
        "DebVisor lab is ready ({} on {})",
        n.status.hostname, n.status.image_version
    );
    println!("  console      https://127.0.0.1:{}/", n.vm.console_port);
    println!("  agent        127.0.0.1:{} (gRPC over mutual TLS)", n.vm.agent_port);
    println!("  fingerprint  {}   (the console's certificate)", n.fingerprint);
    println!(
        "  client       {}   (the node's admin bundle, pointed at the forwarded port)",
        n.config.display()
    );
    println!(
        "  credentials  {user} / {}   (also root's password on the serial console)",
        password.as_deref().unwrap_or("(not printed: not a first boot)")
    );
    let stages: Vec<String> =
        n.vm.console
            .stages()
            .iter()
            .map(|(s, t)| format!("{s} {:.1} s", t.as_secs_f64()))
            .collect();
    println!("  boot times   {}", stages.join(", "));
    println!(
        "               agent answered at {:.1} s, console at {:.1} s",
        n.agent_at.as_secs_f64(),
        n.console_at.as_secs_f64()
    );
    println!("  console log  {}", lab.join("console.log").display());
    println!(
        "Try: DEBVISORCONFIG={} target/release/debvisorctl status",
        n.config.display()
    );
    if a.detach {
        let st = LabState {
            pid: n.vm.pid,
            console_port: n.vm.console_port,
            agent_port: n.vm.agent_port,
            fingerprint: n.fingerprint.clone(),
            admin_user: user,
            admin_password: password,
            workdir: n.vm.workdir.clone(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                .saturating_sub(n.vm.started.elapsed().as_secs()),
        };
        st.save(&state_path(paths))?;
        n.vm.release();
        println!(
            "  detached     pid {}; state in {}",
            st.pid,
            state_path(paths).display()
        );
        println!("Stop it with: debvisor-qa lab down");
        return Ok(());
    }
    println!("Stop it with Ctrl-C (the guest powers down; QEMU is killed after 30 s).");
    let mut vm = n.vm;
    while vm.running() {
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("QEMU exited.");
    Ok(())
}

pub fn down(paths: &Paths) -> Result<()> {
    let path = state_path(paths);
    let Some(st) = LabState::load(&path)? else {
        println!("No detached lab is running ({} does not exist).", path.display());
        return Ok(());
    };
    if st.running() {
        println!("Powering down pid {} ...", st.pid);
        let _ = qemu::qmp_powerdown(&st.workdir.join("qmp.sock"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline && qemu::alive(st.pid) {
            std::thread::sleep(Duration::from_millis(200));
        }
        if st.running() {
            kill(Pid::from_raw(st.pid as i32), Signal::SIGKILL)
                .with_context(|| format!("Cannot kill QEMU pid {}", st.pid))?;
            println!("Killed QEMU after the 30 s grace period.");
        }
    } else {
        println!(
            "QEMU pid {} is no longer running (or is not our QEMU); removing the state.",
            st.pid
        );
    }
    std::fs::remove_file(&path)?;
    let _ = std::fs::remove_file(st.workdir.join("overlay.qcow2"));
    // The node's PKI went with the overlay.
    let _ = std::fs::remove_file(st.workdir.join("debvisorconfig.toml"));
    println!("Lab stopped.");
    Ok(())
}

pub fn status(paths: &Paths, rt: &tokio::runtime::Runtime) -> Result<()> {
    let Some(st) = LabState::load(&state_path(paths))? else {
        println!("No detached lab (start one with `debvisor-qa lab up --detach`).");
        return Ok(());
    };
    if !st.running() {
        println!(
            "Stale lab state: QEMU pid {} is gone. Run `debvisor-qa lab down` to clean up.",
            st.pid
        );
        return Ok(());
    }
    println!("Lab running: QEMU pid {}", st.pid);
    println!("  console      https://127.0.0.1:{}/", st.console_port);
    println!("  agent        127.0.0.1:{}", st.agent_port);
    let config = paths.lab().join("debvisorconfig.toml");
    println!("  client       {}", config.display());
    println!("  fingerprint  {}", st.fingerprint);
    println!(
        "  credentials  {} / {}",
        st.admin_user,
        st.admin_password.as_deref().unwrap_or("(unknown)")
    );
    let (agent, console) = rt.block_on(async {
        let agent = async {
            let cfg = ClientConfig::load(&config)?;
            probes::agent_status(cfg.current()?).await
        };
        tokio::join!(agent, probes::console_healthz(st.console_port, &st.fingerprint))
    });
    match agent {
        Ok(s) => println!(
            "  agent        answers: {} {} slot {} up {:.0} s",
            s.hostname, s.image_version, s.booted_slot, s.uptime_seconds
        ),
        Err(e) => println!("  agent        does not answer: {e:#}"),
    }
    match console {
        Ok(()) => println!("  console      /healthz ok"),
        Err(e) => println!("  console      does not answer: {e:#}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_unknown_fields() {
        let dir = std::env::temp_dir().join(format!("qa-lab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let st = LabState {
            pid: 4242,
            console_port: 8443,
            agent_port: 9443,
            fingerprint: "ab".repeat(32),
            admin_user: "admin".into(),
            admin_password: Some("pw".into()),
            workdir: dir.clone(),
            started_unix: 1,
        };
        let p = dir.join("state.json");
        st.save(&p).unwrap();
        assert_eq!(LabState::load(&p).unwrap(), Some(st));
        std::fs::write(&p, r#"{"pid":1,"bogus":2}"#).unwrap();
        assert!(LabState::load(&p).is_err());
        assert_eq!(LabState::load(&dir.join("missing.json")).unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
