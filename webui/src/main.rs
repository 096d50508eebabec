//! `debvisor-webui`: the node's local web console.
//!
//! Binds the HTTPS listener and the plain-HTTP redirector, tells systemd it
//! is ready, and serves until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use debvisor_api::paths;
use debvisor_webui::agent::GrpcNodeSource;
use debvisor_webui::auth::store::Store;
use debvisor_webui::auth::{AdminCredential, Clock, SystemClock};
use debvisor_webui::redirect::redirect_router;
use debvisor_webui::tls::{bind_with_fallback, serve_https, server_config};
use debvisor_webui::{AppState, router};

/// The DebVisor node console (HTTPS).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address of the HTTPS listener. The IPv6 wildcard falls back to
    /// 0.0.0.0 on hosts without IPv6.
    #[arg(long, default_value = "[::]:443")]
    listen: SocketAddr,
    /// Address of the plain-HTTP listener that redirects to HTTPS.
    #[arg(long, default_value = "[::]:80")]
    http_listen: SocketAddr,
    /// Server certificate chain (PEM).
    #[arg(long, default_value = paths::SERVER_CERT)]
    tls_cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, default_value = paths::SERVER_KEY)]
    tls_key: PathBuf,
    /// The agent's Unix socket.
    #[arg(long, default_value = paths::AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// The admin password hash (argon2id PHC string) the supervisor writes:
    /// the user "admin" is created from it whenever the console database has
    /// no user of that name.
    #[arg(long, default_value = paths::ADMIN_PASSWORD_HASH)]
    admin_hash: PathBuf,
    /// The console database (SQLite: users and sessions); its directory
    /// must exist and be writable (systemd's StateDirectory=). Not next to
    /// the admin credential: that directory stays root's.
    #[arg(long, default_value = "/var/lib/debvisor/console/db/console.db")]
    db: PathBuf,
    /// Seconds a session may go unused before it ends (10 to 43200; kiosks
    /// and tests shorten it).
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(10..=43_200))]
    idle_timeout: u64,
    /// Fault switch: while this file exists, /healthz answers 503 and the
    /// supervisor sees the console as failing (for tests of remediation).
    #[arg(long, default_value = debvisor_webui::handlers::HEALTHZ_FAULT_FILE)]
    healthz_fault_file: PathBuf,
    /// Seconds between the live VM list's CPU samples (1 to 86400; its
    /// states follow libvirt's events whatever this is).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    vm_sample_secs: u64,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tls = server_config(&cli.tls_cert, &cli.tls_key)?;
    let https = bind_with_fallback(cli.listen)
        .await
        .with_context(|| format!("Cannot listen for HTTPS on {}", cli.listen))?;
    let http = bind_with_fallback(cli.http_listen)
        .await
        .with_context(|| format!("Cannot listen for HTTP on {}", cli.http_listen))?;
    let https_addr = https.local_addr().context("Cannot read the HTTPS listener's address")?;
    let http_addr = http.local_addr().context("Cannot read the HTTP listener's address")?;

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Store::open(&cli.db, clock.clone())
        .await?
        .with_idle_timeout(std::time::Duration::from_secs(cli.idle_timeout));
    if !AdminCredential::new(&cli.admin_hash).bootstrap(&store).await? {
        tracing::warn!(
            hash = %cli.admin_hash.display(),
            "no admin user yet and no admin password hash: sign-in is unavailable until the supervisor writes it"
        );
    }
    let state = AppState::with_store(
        Arc::new(GrpcNodeSource::new(&cli.agent_socket)),
        &cli.admin_hash,
        clock,
        store,
    )
    .with_healthz_fault_file(&cli.healthz_fault_file)
    .with_vm_sample(std::time::Duration::from_secs(cli.vm_sample_secs));
    // The dashboard's history starts now, not at the first visit.
    debvisor_webui::live::spawn(&state);
    let app = router(state);
    let redirector = axum::serve(http, redirect_router(https_addr.port()));

    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "not notifying systemd");
    }
    tracing::info!(
        https = %https_addr,
        http = %http_addr,
        agent = %cli.agent_socket.display(),
        db = %cli.db.display(),
        "console ready"
    );

    tokio::select! {
        () = serve_https(https, tls, app) => anyhow::bail!("The HTTPS listener stopped"),
        r = redirector => {
            r.context("The HTTP redirect listener failed")?;
            anyhow::bail!("The HTTP redirect listener stopped")
        }
        () = debvisor_api::daemon::shutdown_signal() => {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    debvisor_api::daemon::init_logging();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            tracing::error!("{}", chain.join(": "));
            std::process::ExitCode::FAILURE
        }
    }
}
