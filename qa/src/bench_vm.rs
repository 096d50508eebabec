//! `debvisor-qa bench vm`: how long the agent takes to list many VMs.
//! libvirt's test driver holds N defined VMs (a node description written
//! here); the release agent (`--sim`, its `debvisor-vmd --sim` on that test host) answers
//! `debvisor.vm.v1.VmService/ListVms` over mutual TLS on 127.0.0.1, the way
//! debvisorctl and the console reach it. The peer is virsh on the same test
//! host: `virsh list --all` as a fresh process each time (what a script
//! pays) and as commands in one virsh session (the list alone).
//!
//! Create-to-running time of a real guest needs libvirtd and QEMU on the
//! node image, which S7 has not added yet; the run says so.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use debvisor_api::vm::v1::ListVmsRequest;
use debvisor_api::vm::v1::vm_service_client::VmServiceClient;
use serde_json::json;

use crate::bench_agent::percentile;
use crate::host_agent::{self, AgentOpts, HostAgent};
use crate::node::Paths;

/// Options of `bench vm`.
#[derive(Debug, Clone, clap::Args)]
pub struct VmArgs {
    /// VMs defined on the test host.
    #[arg(long, default_value_t = 500)]
    pub vms: usize,
    /// ListVms calls measured (after 10 unmeasured).
    #[arg(long, default_value_t = 200)]
    pub calls: usize,
    /// Fresh `virsh list --all` processes timed for the peer.
    #[arg(long, default_value_t = 20)]
    pub virsh_runs: usize,
    /// Do not run cargo; use target/release/debvisor-agent as it is.
    #[arg(long)]
    pub no_build: bool,
}

/// A test-driver node with `n` VMs (`bench-0001`...; the driver starts the
/// VMs of a node description), a NAT network and an empty pool `vms`.
pub fn node_xml(n: usize) -> String {
    let mut x = String::from(
        "<node>\n  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>\
         <active>2</active><mhz>2000</mhz><model>x86_64</model></cpu>\n  <memory>268435456</memory>\n  \
         <network><name>default</name><bridge name=\"virbr0\"/><forward/>\
         <ip address=\"192.168.122.1\" netmask=\"255.255.255.0\"/></network>\n  \
         <pool type=\"dir\"><name>vms</name><target><path>/data/vm</path></target></pool>\n",
    );
    for i in 1..=n {
        x.push_str(&format!(
            "  <domain type=\"test\"><name>bench-{i:04}</name><memory unit=\"MiB\">256</memory><vcpu>1</vcpu>\
             <os><type>hvm</type></os><devices><disk type=\"file\" device=\"disk\">\
             <source file=\"/data/vm/bench-{i:04}-disk0.qcow2\"/><target dev=\"vda\" bus=\"virtio\"/></disk>\
             <interface type=\"network\"><source network=\"default\"/></interface></devices></domain>\n"
        ));
    }
    x.push_str("</node>\n");
    x
}

/// Latency figures of a set of calls, in microseconds.
struct Figures {
    p50: u64,
    p99: u64,
    max: u64,
    mean: f64,
}

impl Figures {
    fn of(mut us: Vec<u64>) -> Figures {
        us.sort_unstable();
        let mean = us.iter().sum::<u64>() as f64 / us.len().max(1) as f64;
        Figures {
            p50: percentile(&us, 50.0),
            p99: percentile(&us, 99.0),
            max: us.last().copied().unwrap_or(0),
            mean,
        }
    }

    fn row(&self, what: &str, n: usize) -> String {
        format!(
            "{what:<44} {n:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            self.p50 as f64 / 1000.0,
            self.p99 as f64 / 1000.0,
            self.max as f64 / 1000.0,
            self.mean / 1000.0
        )
    }

    fn json(&self, n: usize) -> serde_json::Value {
        json!({
            "calls": n,
            "p50_ms": self.p50 as f64 / 1000.0,
            "p99_ms": self.p99 as f64 / 1000.0,
            "max_ms": self.max as f64 / 1000.0,
            "mean_ms": self.mean / 1000.0,
        })
    }
}

/// ListVms `calls` times over one mTLS connection; the latencies and the
/// number of VMs the last answer held.
async fn list_calls(agent: &HostAgent, calls: usize) -> Result<(Vec<u64>, usize)> {
    let ctx = agent.admin()?;
    let ch = debvisor_api::tls::connect_mtls(&ctx)
        .await
        .context("The bench cannot connect to the agent")?;
    let mut c = VmServiceClient::new(ch).max_decoding_message_size(64 << 20);
    let mut us = Vec::with_capacity(calls);
    let mut count = 0;
    for i in 0..calls + 10 {
        let t = Instant::now();
        let r = c
            .list_vms(ListVmsRequest {})
            .await
            .context("ListVms failed")?
            .into_inner();
        if i >= 10 {
            us.push(t.elapsed().as_micros() as u64);
        }
        count = r.vms.len();
    }
    Ok((us, count))
}

/// `virsh -c URI list --all` as `runs` fresh processes.
fn virsh_cold(uri: &str, runs: usize, want: usize) -> Result<Vec<u64>> {
    let mut us = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new("virsh")
            .args(["-c", uri, "list", "--all", "--name"])
            .output()
            .context("Cannot run virsh: apt-get install libvirt-clients")?;
        us.push(t.elapsed().as_micros() as u64);
        ensure!(
            out.status.success(),
            "virsh list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        ensure!(n == want, "virsh listed {n} VMs, not {want}");
    }
    Ok(us)
}

/// `list --all` `runs` times in one virsh session: the mean per list (virsh
/// prints no per-command times, so only the mean is known).
fn virsh_session(uri: &str, runs: usize) -> Result<f64> {
    let time_of = |n: usize| -> Result<Duration> {
        let mut child = Command::new("virsh")
            .args(["-c", uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("Cannot run virsh")?;
        let mut stdin = child.stdin.take().context("virsh has no stdin")?;
        let script = "list --all\n".repeat(n) + "quit\n";
        let t = Instant::now();
        stdin.write_all(script.as_bytes())?;
        drop(stdin);
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "virsh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(t.elapsed())
    };
    // The difference between a session of `runs` lists and one of 1 list
    // leaves out virsh's start and connection.
    let one = time_of(1)?;
    let many = time_of(runs + 1)?;
    Ok(many.saturating_sub(one).as_secs_f64() * 1e6 / runs as f64)
}

/// Runs the benchmark and writes target/qa/bench/vm.json.
pub fn vm(paths: &Paths, rt: &tokio::runtime::Runtime, a: &VmArgs) -> Result<()> {
    if a.vms == 0 || a.calls == 0 {
        bail!("--vms and --calls must be at least 1");
    }
    if !a.no_build {
        host_agent::build_binaries(paths, &["debvisor-agent"])?;
    }
    let bin = host_agent::release_binary(paths, "debvisor-agent", "debvisor-agent")?;
    let tmp = tempfile::Builder::new()
        .prefix("debvisor-bench-vm-")
        .tempdir()
        .context("Cannot create a temporary directory")?;
    let node = tmp.path().join("node.xml");
    std::fs::write(&node, node_xml(a.vms))?;
    let uri = format!("test://{}", node.display());
    let mut agent = HostAgent::start(
        &bin,
        &tmp.path().join("agent"),
        &AgentOpts {
            sim: true,
            rate_limit: (1_000_000.0, 1_000_000),
            system_bus: None,
            vmd_config: format!("uri = \"{uri}\"\npool = \"vms\"\n"),
            real_vmd: false,
        },
    )?;
    let admin = agent.admin()?;
    rt.block_on(agent.wait_healthy(&admin, Duration::from_secs(30)))?;

    println!(
        "ListVms with {} VMs defined on libvirt's test driver ({})",
        a.vms,
        node.display()
    );
    println!(
        "  debvisor-agent (release, --sim) over mTLS on {}, one connection, its debvisor-vmd --sim on this test host;",
        agent.addr
    );
    println!("  the peer is virsh on the same test host. Times in ms.");
    println!();
    println!(
        "{:<44} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "", "calls", "p50", "p99", "max", "mean"
    );
    let (us, count) = rt.block_on(list_calls(&agent, a.calls))?;
    agent.check_running()?;
    ensure!(count == a.vms, "ListVms returned {count} VMs, not {}", a.vms);
    let ours = Figures::of(us);
    println!("{}", ours.row("agent ListVms (gRPC, mTLS)", a.calls));
    let cold = Figures::of(virsh_cold(&uri, a.virsh_runs, a.vms)?);
    println!(
        "{}",
        cold.row("peer: virsh list --all (a process per list)", a.virsh_runs)
    );
    let warm_us = virsh_session(&uri, a.calls)?;
    println!(
        "{:<44} {:>6} {:>9} {:>9} {:>9} {:>9.2}",
        "peer: virsh list --all (in one session)",
        a.calls,
        "-",
        "-",
        "-",
        warm_us / 1000.0
    );
    println!();
    println!(
        "  The agent's answer carries each VM's state, vCPUs, memory, CPU time and autostart (virsh: names and states)."
    );
    println!(
        "  Create-to-running of a guest: not measured. It needs libvirtd and QEMU on the node image, which S7 has not added yet."
    );

    let out = paths.bench().join("vm.json");
    std::fs::create_dir_all(paths.bench())?;
    let doc = json!({
        "vms": a.vms,
        "agent_list": ours.json(a.calls),
        "virsh_list_process": cold.json(a.virsh_runs),
        "virsh_list_session_mean_ms": warm_us / 1000.0,
        "create_to_running": serde_json::Value::Null,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("Cannot write {}", out.display()))?;
    println!("  Written to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_holds_the_vms() {
        let x = node_xml(3);
        assert_eq!(x.matches("<domain ").count(), 3);
        assert!(x.contains("<name>bench-0003</name>"));
        assert!(x.ends_with("</node>\n"));
    }
}
