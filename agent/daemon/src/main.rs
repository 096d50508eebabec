//! `debvisor-agent`: the node agent daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use debvisor_agent::config::{self, AgentConfig};
use debvisor_agent::fakes::{FakeHost, SimHealth};
use debvisor_agent::health_service::InitForwarder;
use debvisor_agent::host::ProcHost;
use debvisor_agent::server::{self, Backends, ServeConfig, TlsListen};
use debvisor_agent::vm_service::Vmd;
use debvisor_api::paths;
use debvisor_audit::AuditLog;
use debvisor_systemd::fakes::{FakeJournal, FakeUnits};
use debvisor_systemd::{JournalCtl, SystemdUnits};
use debvisor_telemetry::Metrics;

/// The DebVisor node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Agent configuration (TOML); a missing file means the defaults.
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Unix socket for the local API.
    #[arg(long, default_value = paths::AGENT_SOCKET)]
    socket: PathBuf,
    /// TCP address for gRPC over mutual TLS.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 0], paths::AGENT_TLS_PORT)))]
    listen: SocketAddr,
    /// Server certificate (PEM).
    #[arg(long, default_value = paths::SERVER_CERT)]
    tls_cert: PathBuf,
    /// Server key (PEM).
    #[arg(long, default_value = paths::SERVER_KEY)]
    tls_key: PathBuf,
    /// The CA that client certificates must chain to (PEM).
    #[arg(long, default_value = paths::CA_CERT)]
    tls_client_ca: PathBuf,
    /// debvisor-init's socket, where the node's health checks are read
    /// (ignored with --sim).
    #[arg(long, default_value = paths::INIT_SOCKET)]
    init_socket: PathBuf,
    /// Serve only the Unix socket.
    #[arg(long)]
    no_tcp: bool,
    /// The audit database, overriding the config's `[audit] path`. In
    /// simulation mode the log is kept in memory unless this is given.
    #[arg(long)]
    audit_db: Option<PathBuf>,
    /// Simulation mode: a fake host, units, journal and health checks,
    /// labelled as such in every status answer and check result.
    #[arg(long)]
    sim: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let cfg = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("debvisor-agent: {e}");
            std::process::exit(2);
        }
    };
    // Traces go to an OTLP collector only when the config names one.
    let (otel, _otel_guard) = match debvisor_telemetry::otel_layer::<tracing_subscriber::Registry>(&cfg.otel) {
        Ok(Some((layer, guard))) => (Some(layer), Some(guard)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("debvisor-agent: {e}");
            std::process::exit(2);
        }
    };
    debvisor_api::daemon::init_logging_with(otel);
    if let Err(e) = run(args, cfg).await {
        tracing::error!("{e:#}");
        eprintln!("debvisor-agent: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args, cfg: AgentConfig) -> anyhow::Result<()> {
    // A required service: systemd restarts it within a second of a crash,
    // so what stands between exec and READY is kept short. Opening the
    // audit log, reaching systemd and binding (with the TLS material) run
    // side by side; the audit chain is verified after READY.
    let serve_cfg = ServeConfig {
        socket: args.socket.clone(),
        tls: (!args.no_tcp).then_some(TlsListen {
            addr: args.listen,
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            client_ca: args.tls_client_ca.clone(),
        }),
        metrics: cfg.metrics.listen,
    };
    let open_audit = async {
        match (&args.audit_db, args.sim) {
            (Some(path), _) => AuditLog::open(path).await,
            (None, true) => AuditLog::open_in_memory().await,
            (None, false) => AuditLog::open(&cfg.audit.path).await,
        }
        .context("Cannot open the audit log")
    };
    let connect_units = async {
        if args.sim {
            return Ok(None);
        }
        SystemdUnits::connect()
            .await
            .map(Some)
            .context("Cannot reach systemd over D-Bus")
    };
    let (audit, systemd, bound) = tokio::try_join!(open_audit, connect_units, server::bind(&serve_cfg))?;

    let provision = match &cfg.provision {
        Some(path) => Some(start_provisioner(path).await?),
        None => None,
    };
    // The VM daemon is reached on first use (it may start later); a
    // simulated agent's is a `debvisor-vmd --sim`.
    let vm = Vmd::new(&cfg.vm.socket);
    let backends = match systemd {
        None => {
            tracing::warn!("SIMULATION MODE: answers come from a fake host, units, journal and health checks");
            let journal = Arc::new(FakeJournal::new());
            Backends {
                host: Arc::new(FakeHost::new("sim-node")),
                units: Arc::new(FakeUnits::new().with_journal(journal.clone())),
                journal,
                audit: audit.clone(),
                health: Arc::new(SimHealth::new()),
                provision: provision.clone(),
                vm: Some(vm.clone()),
            }
        }
        Some(units) => Backends {
            host: Arc::new(ProcHost::new("/")),
            units: Arc::new(units),
            journal: Arc::new(JournalCtl::new()),
            audit: audit.clone(),
            health: Arc::new(InitForwarder::new(&args.init_socket)),
            provision: provision.clone(),
            vm: Some(vm.clone()),
        },
    };
    tracing::info!(
        socket = %args.socket.display(),
        tcp = ?bound.tcp_addr(),
        metrics = ?bound.metrics_addr(),
        "agent listening"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tokio::spawn(async move {
        match audit.verify().await {
            Ok(r) => match &r.problem {
                None => tracing::info!(records = r.records, head = r.head_seq, "audit chain intact"),
                Some(p) => tracing::error!(records = r.records, "AUDIT CHAIN BROKEN: {p}; the log is kept as it is"),
            },
            Err(e) => tracing::error!("Cannot verify the audit chain: {e}"),
        }
    });
    server::serve(
        bound,
        backends,
        cfg,
        Metrics::new(),
        debvisor_api::daemon::shutdown_signal(),
    )
    .await
}

/// Opens the PXE provisioner of the config at `path` and runs it in the
/// background; the agent keeps serving (its provision API included) if a
/// network of it fails later, and says so in the journal.
async fn start_provisioner(path: &std::path::Path) -> anyhow::Result<debvisor_provision::Provisioner> {
    let cfg = debvisor_provision::Config::from_file(path)
        .with_context(|| format!("The provisioner config {} (agent.toml `provision`)", path.display()))?;
    let metrics = Arc::new(debvisor_provision::Metrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let p = debvisor_provision::Provisioner::open(cfg, metrics)
        .await
        .context("Cannot open the provisioner's state")?;
    let run = p.clone();
    tokio::spawn(async move {
        if let Err(e) = run.run(Some(Arc::new(registry))).await {
            tracing::error!("The PXE provisioner stopped: {e:#}");
        }
    });
    tracing::info!(config = %path.display(), "PXE provisioner running");
    Ok(p)
}
