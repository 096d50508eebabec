//! `debvisor-init`: the supervisor beside PID 1.
//!
//! On every boot it makes sure the node's PKI and admin credential exist
//! (creating them on first boot), starts the agent and the console through
//! systemd's D-Bus API, waits until both answer, reports readiness on the
//! serial console, and keeps them running.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use debvisor_api::paths;
use debvisor_init::systemd::{self, Systemd};
use debvisor_init::{console, credentials, pki, probe};
use tokio_stream::StreamExt;

/// The DebVisor supervisor.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Units to start and keep running.
    #[arg(long = "unit", default_values = ["debvisor-agent.service", "debvisor-webui.service"])]
    units: Vec<String>,
    /// How long the agent and the console get to answer after start.
    #[arg(long, default_value = "180", value_name = "SECONDS")]
    ready_timeout: u64,
}

#[tokio::main]
async fn main() {
    debvisor_api::daemon::init_logging();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        tracing::error!("{e:#}");
        console::marker("boot-failed", &format!("{e:#}"));
        std::process::exit(1);
    }
}

fn status(text: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(text)]);
}

async fn run(args: Args) -> anyhow::Result<()> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();

    status("Preparing the node PKI");
    let pki = pki::Pki::new(paths::PKI_DIR).ensure(&hostname).context("Node PKI")?;
    if pki.created {
        tracing::info!("created the node CA and server certificate");
    }
    console::marker("tls-fingerprint", &pki.server_fingerprint);

    status("Preparing the admin credential");
    if let Some(password) = credentials::ensure_admin(paths::ADMIN_PASSWORD_HASH.as_ref(), true)? {
        tracing::info!("generated the admin password (shown on the serial console)");
        console::marker("admin-password", &format!("admin {password}"));
    }

    let systemd = Systemd::connect()
        .await
        .context("Cannot connect to systemd over D-Bus")?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    spawn_watchdog();

    status("Starting the agent and the console");
    for unit in &args.units {
        if let Err(e) = systemd.start_and_wait(unit).await {
            tracing::error!("{e:#}");
        }
    }
    let pin = debvisor_api::client::parse_fingerprint(&pki.server_fingerprint)?;
    let deadline = Duration::from_secs(args.ready_timeout);
    let ready = tokio::try_join!(
        probe::until_ok(deadline, || probe::agent(paths::AGENT_SOCKET)),
        probe::until_ok(deadline, || probe::console(paths::CONSOLE_HTTPS_PORT, pin)),
    );
    match ready {
        Ok(_) => {
            console::marker("ready", "");
            status("Ready: agent and console answer");
            tokio::spawn(fill_bundle_endpoints(hostname));
        }
        Err(e) => {
            console::marker("boot-failed", &format!("{e:#}"));
            status("Degraded: agent or console does not answer");
        }
    }

    supervise(&systemd, &args.units).await
}

/// The admin bundle is written before the network is up on a first boot, so
/// it may list no endpoint: add the node's addresses once it has some.
async fn fill_bundle_endpoints(hostname: String) {
    for _ in 0..60 {
        if !pki::local_addresses().is_empty() {
            match pki::Pki::new(paths::PKI_DIR).ensure(&hostname) {
                Ok(_) => tracing::info!("admin client bundle lists the node's addresses"),
                Err(e) => tracing::warn!("Cannot update the admin client bundle: {e:#}"),
            }
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tracing::warn!("the node has no address after 2 minutes; the admin client bundle lists no endpoint");
}

/// Starts again any supervised unit that stops, from systemd's signals.
async fn supervise(systemd: &Systemd, units: &[String]) -> anyhow::Result<()> {
    let mut changes = systemd::watch_units(systemd, units).await?;
    let shutdown = debvisor_api::daemon::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            change = changes.next() => {
                let Some(change) = change else { anyhow::bail!("systemd signal stream ended") };
                tracing::debug!(unit = %change.unit, state = %change.active_state, "unit state");
                if systemd::needs_start(&change.active_state) && !systemd.stopping().await {
                    tracing::warn!(unit = %change.unit, state = %change.active_state, "supervised unit stopped; starting it again");
                    let (s, unit) = (systemd.clone(), change.unit.clone());
                    tokio::spawn(async move {
                        if let Err(e) = s.start_and_wait(&unit).await {
                            tracing::error!("{e:#}");
                        }
                    });
                }
            }
        }
    }
}

/// Pings systemd's watchdog at half its interval, from the runtime that does
/// the supervision: if the runtime stalls, systemd restarts us.
fn spawn_watchdog() {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(usec / 2));
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}
