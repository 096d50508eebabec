//! `debvisorctl`: talk to a DebVisor node agent from a shell.
//!
//! Locally it uses the agent's Unix socket; remotely `--endpoint HOST:PORT`
//! with `--fingerprint` (the node's certificate fingerprint, printed on its
//! serial console at first boot).

use clap::{Parser, Subcommand};
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use debvisor_api::node::v1::{GetStatusRequest, GetStatusResponse};
use debvisor_api::{client, paths};
use tonic::transport::Channel;

/// Manage a DebVisor node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The agent's Unix socket (local use).
    #[arg(long, default_value = paths::AGENT_SOCKET, global = true)]
    socket: String,
    /// Remote agent HOST:PORT (TLS); needs --fingerprint.
    #[arg(long, env = "DEBVISOR_ENDPOINT", global = true, requires = "fingerprint")]
    endpoint: Option<String>,
    /// SHA-256 fingerprint of the node's server certificate.
    #[arg(long, env = "DEBVISOR_FINGERPRINT", global = true)]
    fingerprint: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the node's identity, slot and resource figures.
    Status,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("debvisorctl: {e:#}");
        std::process::exit(1);
    }
}

async fn channel(cli: &Cli) -> anyhow::Result<Channel> {
    Ok(match (&cli.endpoint, &cli.fingerprint) {
        (Some(ep), Some(fp)) => client::connect_tls_pinned(ep, client::parse_fingerprint(fp)?).await?,
        _ => client::connect_unix(&cli.socket).await?,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ch = channel(&cli).await?;
    match cli.cmd {
        Cmd::Status => {
            let s = NodeServiceClient::new(ch)
                .get_status(GetStatusRequest {})
                .await?
                .into_inner();
            print!("{}", render_status(&s));
        }
    }
    Ok(())
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

fn render_status(s: &GetStatusResponse) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14} {v}\n"));
    if s.simulated {
        line("MODE", "SIMULATION (fake host)".into());
    }
    line("HOSTNAME", s.hostname.clone());
    line("IMAGE", format!("{} {}", s.image_id, s.image_version));
    line(
        "BOOTED SLOT",
        if s.booted_slot.is_empty() {
            "-".into()
        } else {
            s.booted_slot.clone()
        },
    );
    line("KERNEL", s.kernel.clone());
    let up = s.uptime_seconds as u64;
    line(
        "UPTIME",
        format!("{}d {}h {}m {}s", up / 86400, up / 3600 % 24, up / 60 % 60, up % 60),
    );
    if let Some(l) = &s.load {
        line("LOAD", format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen));
    }
    if let Some(m) = &s.memory {
        line(
            "MEMORY",
            format!("{} used of {}", gib(m.used_bytes), gib(m.total_bytes)),
        );
    }
    for d in &s.disks {
        let ro = if d.read_only { " (read-only)" } else { "" };
        line(
            &format!("DISK {}", d.name.to_uppercase()),
            format!(
                "{} used of {} on {}{ro}",
                gib(d.used_bytes),
                gib(d.total_bytes),
                d.mount_point
            ),
        );
    }
    line("AGENT", s.agent_version.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_names_every_figure() {
        let s = GetStatusResponse {
            hostname: "n1".into(),
            booted_slot: "A".into(),
            uptime_seconds: 90061.0,
            simulated: true,
            ..Default::default()
        };
        let t = render_status(&s);
        assert!(t.contains("SIMULATION"));
        assert!(t.contains("HOSTNAME       n1"));
        assert!(t.contains("1d 1h 1m 1s"), "{t}");
    }
}
