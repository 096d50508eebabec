//! `debvisor-agent`: the node agent daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use debvisor_agent::fakes::FakeHost;
use debvisor_agent::host::{HostFacts, ProcHost};
use debvisor_agent::server::{self, ServeConfig, TlsListen};
use debvisor_api::paths;

/// The DebVisor node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Unix socket for the local API.
    #[arg(long, default_value = paths::AGENT_SOCKET)]
    socket: PathBuf,
    /// TCP address for gRPC over TLS.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 0], paths::AGENT_TLS_PORT)))]
    listen: SocketAddr,
    /// Server certificate (PEM).
    #[arg(long, default_value = paths::SERVER_CERT)]
    tls_cert: PathBuf,
    /// Server key (PEM).
    #[arg(long, default_value = paths::SERVER_KEY)]
    tls_key: PathBuf,
    /// Serve only the Unix socket.
    #[arg(long)]
    no_tcp: bool,
    /// Simulation mode: a fake host, labelled as such in every answer.
    #[arg(long)]
    sim: bool,
}

#[tokio::main]
async fn main() {
    debvisor_api::daemon::init_logging();
    if let Err(e) = run(Args::parse()).await {
        tracing::error!("{e:#}");
        eprintln!("debvisor-agent: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let host: Arc<dyn HostFacts> = if args.sim {
        tracing::warn!("SIMULATION MODE: answers come from a fake host");
        Arc::new(FakeHost::new("sim-node"))
    } else {
        Arc::new(ProcHost::new("/"))
    };
    let cfg = ServeConfig {
        socket: args.socket.clone(),
        tls: (!args.no_tcp).then_some(TlsListen {
            addr: args.listen,
            cert: args.tls_cert,
            key: args.tls_key,
        }),
    };
    let bound = server::bind(&cfg).await?;
    tracing::info!(socket = %args.socket.display(), tcp = ?bound.tcp_addr(), "agent listening");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    server::serve(bound, host, debvisor_api::daemon::shutdown_signal()).await
}
