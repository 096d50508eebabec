//! `debvisor-vmd`: the VM daemon (see the library's documentation).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use debvisor_api::paths;
use debvisor_vmd::VmBackend;
use debvisor_vmd::config::VmdConfig;

/// The DebVisor VM daemon: debvisor.vm.v1 over libvirt, for the agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration (TOML); a missing file means the defaults.
    #[arg(long, default_value = paths::VMD_CONFIG)]
    config: PathBuf,
    /// The Unix socket to serve on (root only).
    #[arg(long, default_value = paths::VMD_SOCKET)]
    socket: PathBuf,
    /// Use libvirt's test driver (`test:///default`, or the `test://` host
    /// the config names) instead of a real hypervisor.
    #[arg(long)]
    sim: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    debvisor_api::daemon::init_logging();
    let args = Args::parse();
    let cfg = VmdConfig::load(&args.config)?;
    let opts = cfg.options(args.sim);
    if args.sim {
        tracing::warn!(uri = %opts.uri, "SIMULATION MODE: VMs live on libvirt's test driver");
    }
    // libvirt is reached on first use (libvirtd may start later).
    let backend = Arc::new(VmBackend::new(opts.clone()));
    let listener = debvisor_vmd::bind(&args.socket)?;
    tracing::info!(socket = %args.socket.display(), uri = %opts.uri, pool = %opts.pool, "VM daemon listening");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    debvisor_vmd::serve(listener, backend, debvisor_api::daemon::shutdown_signal()).await
}
