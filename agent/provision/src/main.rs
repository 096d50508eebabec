//! `debvisor-provision`: the PXE provisioner on its own, for labs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use debvisor_provision::{Config, Metrics, Provisioner};

#[derive(Parser)]
#[command(
    version,
    about = "DebVisor PXE provisioner: DHCP or proxyDHCP, TFTP, leases in SQLite"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the networks of the config until stopped.
    Serve {
        /// The provisioner config (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config and print what it serves.
    Check {
        /// The provisioner config (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the stored leases, one per line: MAC, address, expiry (Unix time), host name.
    Leases {
        /// The provisioner config (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("debvisor-provision: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve { config } => {
            let cfg = Config::from_file(&config)?;
            let metrics = Arc::new(Metrics::default());
            let mut registry = prometheus_client::registry::Registry::default();
            metrics.register(&mut registry);
            let p = Provisioner::open(cfg, metrics).await?;
            tokio::select! {
                r = p.run(Some(Arc::new(registry))) => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        Cmd::Check { config } => {
            let cfg = Config::from_file(&config)?;
            for n in &cfg.networks {
                let range = n.range.map_or("-".to_string(), |[a, b]| format!("{a}-{b}"));
                println!(
                    "{}\t{}/{}\t{:?}\t{range}",
                    n.interface, n.address.addr, n.address.prefix, n.mode
                );
            }
            println!(
                "{} reservation(s); TFTP root {}",
                cfg.reservations.len(),
                cfg.tftp.root.display()
            );
            Ok(())
        }
        Cmd::Leases { config } => {
            let cfg = Config::from_file(&config)?;
            let store =
                debvisor_provision::store::Store::open(&cfg.state_dir.join(debvisor_provision::server::LEASE_DB))
                    .await?;
            for l in store.leases().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    l.mac,
                    l.ip,
                    l.expires,
                    l.hostname.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
    }
}
