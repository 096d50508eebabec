//! `debvisor-provision`: the PXE provisioner on its own, for labs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use debvisor_provision::profiles::{Group, Profile};
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
    /// Create or replace a profile from a TOML file (name, mode, image,
    /// kernel_args, config, install_disk).
    PutProfile {
        /// The provisioner config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The profile (TOML).
        file: PathBuf,
    },
    /// Create or replace a group from a TOML file (name, profile, selector).
    PutGroup {
        /// The provisioner config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The group (TOML).
        file: PathBuf,
    },
    /// List the machines seen, one per line: MAC, client, architecture,
    /// profile, UUID, installed, last seen (Unix time).
    Machines {
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
        Cmd::PutProfile { config, file } => {
            let p: Profile = read_toml(&file)?;
            open_store(&config).await?.put_profile(&p).await?;
            println!("profile {} stored", p.name);
            Ok(())
        }
        Cmd::PutGroup { config, file } => {
            let g: Group = read_toml(&file)?;
            open_store(&config).await?.put_group(&g).await?;
            println!("group {} stored (profile {})", g.name, g.profile);
            Ok(())
        }
        Cmd::Machines { config } => {
            for m in open_store(&config).await?.machines().await? {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    m.mac,
                    m.client,
                    opt(m.arch.map(|a| a.to_string())),
                    opt(m.profile),
                    opt(m.uuid),
                    if m.installed { "installed" } else { "-" },
                    m.last_seen
                );
            }
            Ok(())
        }
        Cmd::Leases { config } => {
            for l in open_store(&config).await?.leases().await? {
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

async fn open_store(config: &std::path::Path) -> anyhow::Result<debvisor_provision::store::Store> {
    let cfg = Config::from_file(config)?;
    Ok(debvisor_provision::store::Store::open(&cfg.state_dir.join(debvisor_provision::server::LEASE_DB)).await?)
}

fn read_toml<T: serde::de::DeserializeOwned>(file: &std::path::Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(file).with_context(|| format!("Cannot read {}", file.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid definition", file.display()))
}
