//! debvisor-qa: the lab, the system tests and the boot benchmark for
//! DebVisor images, all in QEMU.

mod bench;
mod bench_agent;
mod bench_console;
mod bench_dhcp;
mod bench_vm;
mod browser;
mod cfgdisk;
mod console_host;
mod fileserve;
mod fuzz;
mod host_agent;
mod lab;
mod libvirtd;
mod netns;
mod node;
mod peer;
mod probes;
mod qemu;
mod serial;
mod tests;
mod tiny_guest;
mod webhook;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::qemu::Accel;

#[derive(Debug, Parser)]
#[command(
    name = "debvisor-qa",
    version,
    about = "Lab, system tests and boot benchmark for DebVisor images"
)]
struct Cli {
    /// How QEMU runs the guest. TCG by default: KVM hangs Linux guests on
    /// the development machines (see /work/shared/FACTS.md).
    #[arg(long, global = true, value_enum, default_value = "tcg")]
    accel: Accel,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One node in QEMU for interactive use.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Run the system tests (each boots its own node).
    Test(tests::TestArgs),
    /// Build and run the fuzz targets of the network-facing parsers.
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Debug, Subcommand)]
enum LabCmd {
    /// Build the image if needed, boot it and wait until it answers.
    Up(lab::UpArgs),
    /// Stop a detached lab.
    Down,
    /// Show the detached lab and whether it answers.
    Status,
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Build and boot times against a plain Debian peer.
    Boot(bench::BootArgs),
    /// GetStatus throughput, latency, memory and CPU of the agent over mTLS
    /// on this host.
    Agent(bench_agent::AgentArgs),
    /// Sign-in, dashboard under many users, Chromium load and memory of the
    /// web console in front of a simulated agent on this host.
    Console(bench_console::ConsoleArgs),
    /// Bundle size, install time by phase, reboot to ready, and what
    /// RAUC's adaptive mode could save, on a node in QEMU.
    Update(tests::UpdateBenchArgs),
    /// DHCP exchanges per second of the provisioner and dnsmasq (perfdhcp).
    Dhcp(bench_dhcp::DhcpArgs),
    /// ListVms latency with many VMs on libvirt's test driver, against virsh.
    Vm(bench_vm::VmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    qemu::install_signal_handler(&rt);
    let paths = node::Paths::discover();
    let res = match &cli.cmd {
        Cmd::Lab { cmd: LabCmd::Up(a) } => lab::up(&paths, &rt, cli.accel, a).map(|()| true),
        Cmd::Lab { cmd: LabCmd::Down } => lab::down(&paths).map(|()| true),
        Cmd::Lab { cmd: LabCmd::Status } => lab::status(&paths, &rt).map(|()| true),
        Cmd::Test(a) => tests::run(&paths, &rt, cli.accel, a),
        Cmd::Fuzz(a) => fuzz::fuzz(&paths, a),
        Cmd::Bench { cmd: BenchCmd::Boot(a) } => bench::boot(&paths, &rt, cli.accel, a).map(|()| true),
        Cmd::Bench {
            cmd: BenchCmd::Agent(a),
        } => bench_agent::agent(&paths, &rt, a).map(|()| true),
        Cmd::Bench {
            cmd: BenchCmd::Console(a),
        } => bench_console::console(&paths, &rt, a).map(|()| true),
        Cmd::Bench {
            cmd: BenchCmd::Update(a),
        } => tests::bench_update(&paths, &rt, cli.accel, a).map(|()| true),
        Cmd::Bench { cmd: BenchCmd::Dhcp(a) } => bench_dhcp::dhcp(&paths, &rt, cli.accel, a).map(|()| true),
        Cmd::Bench { cmd: BenchCmd::Vm(a) } => bench_vm::vm(&paths, &rt, a).map(|()| true),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
