//! `debvisor-init`: the supervisor beside PID 1.
//!
//! On every boot it makes sure the node's PKI and admin credential exist
//! (creating them on first boot), starts the supervised units through
//! systemd's D-Bus API and keeps them started from its signals, runs the
//! health checks with remediation, decides the boot gate, serves
//! `debvisor.health.v1` on its socket and metrics on 127.0.0.1:9465, and
//! reports readiness on the serial console. `debvisor-init check` runs the
//! checks once and prints a table.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use debvisor_api::health::v1::Severity;
use debvisor_api::machine::MachineConfig;
use debvisor_api::paths;
use debvisor_init::health::checks::node_checks;
use debvisor_init::health::metrics::HealthMetrics;
use debvisor_init::health::{Check, ConfigState, Health, Settings, Status, engine, run_once, server};
use debvisor_init::manager::DbusManager;
use debvisor_init::supervise::{Supervisor, supervised_set};
use debvisor_init::{alerts, console, credentials, gate, health, machine, pki, probe};
use debvisor_systemd::{SystemdUnits, Units};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The DebVisor supervisor.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// How long the agent and the console get to answer after start before
    /// `boot-failed` is written to the serial console.
    #[arg(long, default_value = "180", value_name = "SECONDS")]
    ready_timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every health check once and print a table; exits 1 when a
    /// required check fails.
    Check,
}

#[tokio::main]
async fn main() {
    debvisor_api::daemon::init_logging();
    let args = Args::parse();
    match args.command {
        Some(Command::Check) => {
            let (settings, config) = config_in_effect();
            std::process::exit(check(&settings, config).await)
        }
        None => {
            if let Err(e) = run(args).await {
                tracing::error!("{e:#}");
                console::marker("boot-failed", &format!("{e:#}"));
                std::process::exit(1);
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The settings and state of the machine config in effect: the last good
/// one that `debvisor-init` applied, else the defaults (`debvisor-init
/// check` neither fetches nor applies a config).
fn config_in_effect() -> (Settings, ConfigState) {
    let cfg = [paths::MACHINE_CONFIG_LAST_GOOD, paths::MACHINE_CONFIG]
        .iter()
        .find_map(|p| MachineConfig::from_toml(&std::fs::read_to_string(p).ok()?).ok());
    match cfg {
        Some(c) => {
            let state = ConfigState {
                digest: c.digest(),
                error: String::new(),
            };
            (Settings::from(&c), state)
        }
        None => (Settings::default(), ConfigState::default()),
    }
}

/// Loads and applies the machine config (falling back to the last good one
/// or to safe defaults, never failing); returns its settings and state.
async fn apply_machine_config(cmdline: &str) -> (Settings, ConfigState) {
    let host = match machine::DbusHost::connect().await {
        Ok(h) => h,
        Err(e) => {
            let error = format!("Cannot apply the machine config: cannot connect to the system bus: {e}");
            console::marker("config-error", &error);
            let (settings, state) = config_in_effect();
            return (settings, ConfigState { error, ..state });
        }
    };
    let outcome = machine::load_and_apply(cmdline, &machine::SourcePaths::production(), Path::new("/"), &host).await;
    let state = ConfigState {
        digest: outcome.loaded.digest.clone(),
        error: outcome.error.clone().unwrap_or_default(),
    };
    (Settings::from(&outcome.loaded.config), state)
}

fn status(text: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(text)]);
}

/// `debvisor-init check`: runs the checks of `settings` (the `config` check
/// reporting `config`) once, concurrently,
/// each with its timeout; prints CHECK, KIND, REQUIRED, STATUS, MESSAGE and
/// TIME; returns 1 when a required check fails, 0 otherwise.
async fn check(settings: &Settings, config: ConfigState) -> i32 {
    let hostname = hostname();
    let (_config_tx, config_rx) = watch::channel(config);
    let (checks, unreachable) = match SystemdUnits::connect().await {
        Ok(u) => {
            let units: Arc<dyn Units> = Arc::new(u);
            let supervised = supervised_set(units.as_ref(), &settings.supervise).await;
            (
                node_checks(&settings.health, units, &supervised, &hostname, config_rx),
                None,
            )
        }
        Err(e) => {
            // Without systemd the service checks cannot run: they fail.
            let units: Arc<dyn Units> = Arc::new(debvisor_systemd::fakes::FakeUnits::new());
            let all = node_checks(&settings.health, units, &settings.supervise, &hostname, config_rx);
            (all, Some(format!("cannot connect to systemd over D-Bus: {e}")))
        }
    };
    let timeout = settings.health.timeout();
    let runs = futures_util::future::join_all(checks.iter().map(|c| async {
        match &unreachable {
            Some(e) if c.kind() == "service" => (debvisor_init::health::Outcome::fail(e.clone()), 0, Duration::ZERO),
            _ => run_once(c.as_ref(), timeout).await,
        }
    }))
    .await;
    let mut rows = vec![["CHECK", "KIND", "REQUIRED", "STATUS", "MESSAGE", "TIME"].map(String::from)];
    let mut code = 0;
    for (c, (outcome, _, took)) in checks.iter().zip(runs) {
        if c.required() && outcome.status == Status::Fail {
            code = 1;
        }
        let status = match outcome.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        rows.push([
            c.name().to_string(),
            c.kind().to_string(),
            if c.required() { "yes" } else { "no" }.to_string(),
            status.to_string(),
            outcome.message,
            format!("{} ms", took.as_millis()),
        ]);
    }
    print!("{}", table(&rows));
    code
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[[String; 6]]) -> String {
    let mut widths = [0usize; 6];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn run(args: Args) -> anyhow::Result<()> {
    // The machine config first: it names the host (which the PKI uses on a
    // first boot), the network, and the supervisor's own settings. An
    // invalid config never stops the supervisor: the node runs on the last
    // good config or safe defaults and reports the error. It is applied at
    // start and again on SIGHUP (`systemctl reload debvisor-init`).
    status("Applying the machine config");
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (settings, config_state) = apply_machine_config(&cmdline).await;
    let config_error = config_state.error.clone();
    let (config_tx, config_rx) = watch::channel(config_state);
    let hostname = hostname();

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

    let units: Arc<dyn Units> = Arc::new(
        SystemdUnits::connect()
            .await
            .context("Cannot connect to systemd over D-Bus")?,
    );
    let manager = Arc::new(
        DbusManager::connect()
            .await
            .context("Cannot connect to systemd over D-Bus")?,
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    spawn_watchdog();

    let metrics = debvisor_telemetry::Metrics::new();
    let health_metrics = HealthMetrics::register(&metrics);

    status("Starting the supervised units");
    let supervised = supervised_set(units.as_ref(), &settings.supervise).await;
    tracing::info!(units = ?supervised, "supervising");
    let supervisor = Supervisor::new(units.clone(), manager, supervised.clone(), Some(health_metrics.clone()));
    tokio::spawn(supervisor.run());

    let checks: Vec<Arc<dyn Check>> = node_checks(
        &settings.health,
        units.clone(),
        &supervised,
        &hostname,
        config_rx.clone(),
    );
    let gate_deadline = settings.gate_deadline();
    let health = Arc::new(Health::new(
        &checks,
        settings.health.interval(),
        settings.health.timeout(),
        settings.health.history,
        engine::now_unix_ms() + i64::try_from(gate_deadline.as_millis()).unwrap_or(i64::MAX),
        Some(health_metrics),
    ));
    tokio::spawn(follow_config(health.clone(), config_rx));
    let alerts = alerts::Alerts::spawn(
        hostname.clone(),
        settings.webhooks.clone(),
        Some(alerts::audit_path(alerts::AGENT_CONFIG)),
        Some(health.clone()),
        Duration::from_secs(1),
    );
    let _scheduler = health::spawn_scheduler(
        health.clone(),
        checks,
        settings.health.interval(),
        settings.health.timeout(),
    );
    tokio::spawn(health::remediation::run(
        health.clone(),
        units.clone(),
        alerts.clone(),
        settings.health.clone(),
    ));
    if !config_error.is_empty() {
        alerts.raise(Severity::Warning, "config", "config-invalid", &config_error);
    }
    let slot = gate::booted_slot(&cmdline);
    let since_boot = gate::uptime(&std::fs::read_to_string("/proc/uptime").unwrap_or_default()).unwrap_or_default();
    let gate_state = Some(gate::GATE_STATE.into());
    let reload_alerts = alerts.clone();
    let gate_actions = gate::SlotActions {
        rauc: Arc::new(debvisor_rauc::LazyRauc::default()),
        units: units.clone(),
        alerts: alerts.clone(),
        attempts: 10,
        retry_delay: Duration::from_secs(3),
    };
    let gate_health = health.clone();
    tokio::spawn(async move {
        let verdict = gate::run(gate_health, alerts, gate_deadline, since_boot, slot.clone(), gate_state).await;
        gate::act(&verdict, &slot, &gate_actions, Some(gate::GATE_ACTIONS.as_ref())).await;
    });

    let rx = health.subscribe();
    tokio::spawn(async move {
        let socket = std::path::Path::new(paths::INIT_SOCKET);
        if let Err(e) = server::serve_unix(socket, rx, std::future::pending()).await {
            tracing::error!("{e:#}");
        }
    });
    match tokio::net::TcpListener::bind(paths::INIT_METRICS).await {
        Ok(listener) => {
            tokio::spawn(async move {
                if let Err(e) = debvisor_telemetry::serve_metrics(listener, metrics, std::future::pending()).await {
                    tracing::error!("Metrics endpoint failed: {e}");
                }
            });
        }
        Err(e) => tracing::error!("Cannot bind the metrics endpoint {}: {e}", paths::INIT_METRICS),
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
    // `systemctl reload debvisor-init` (SIGHUP) applies the machine config
    // again from its sources: a changed config takes effect without a
    // reboot, an unchanged one changes nothing.
    let mut hangup = signal(SignalKind::hangup()).context("Cannot install the SIGHUP handler")?;
    let shutdown = debvisor_api::daemon::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => {
                status("Re-applying the machine config");
                let (new_settings, state) = apply_machine_config(&cmdline).await;
                if !state.error.is_empty() {
                    reload_alerts.raise(Severity::Warning, "config", "config-invalid", &state.error);
                }
                if new_settings != settings {
                    tracing::warn!(
                        "the new machine config changes the supervisor's own settings (health, alerts, boot, \
                         services); they take effect at the next start of debvisor-init"
                    );
                }
                config_tx.send_replace(state);
                status("Ready: machine config re-applied");
            }
        }
    }
    Ok(())
}

/// Copies the machine config's state into the health state.
async fn follow_config(health: Arc<Health>, mut rx: watch::Receiver<ConfigState>) {
    loop {
        health.set_config(&rx.borrow_and_update().clone());
        if rx.changed().await.is_err() {
            return;
        }
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn table_columns_line_up() {
        let rows = [
            ["CHECK", "KIND", "REQUIRED", "STATUS", "MESSAGE", "TIME"].map(String::from),
            ["dns", "dns", "no", "PASS", "ok", "3 ms"].map(String::from),
        ];
        assert_eq!(
            super::table(&rows),
            "CHECK  KIND  REQUIRED  STATUS  MESSAGE  TIME\ndns    dns   no        PASS    ok       3 ms\n"
        );
    }
}
