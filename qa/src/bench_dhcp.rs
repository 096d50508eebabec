//! `debvisor-qa bench dhcp`: DHCP 4-way exchanges per second of our
//! provisioner and of dnsmasq, driven by perfdhcp (Kea) through the same
//! namespace pair in the same run; then the PXE boot figures: `pxe_live`
//! and `pxe_install` run as in the suite, timed from QEMU start to ready.
//!
//! perfdhcp acts as a relay (it sets giaddr), so it gets a namespace of its
//! own. Each level starts its server afresh with an empty lease store and
//! gives perfdhcp a MAC prefix of its own, with as many clients as the level
//! sends exchanges, so every exchange is a new lease. dnsmasq gets `--no-ping`
//! and a lease limit above the run's clients (FACTS.md). Both servers store
//! their leases: ours in SQLite with a synchronous commit before each ACK,
//! dnsmasq in its lease file.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::bench_agent::{cpu_seconds, read_kb};
use crate::netns::{Netns, veth};
use crate::node::Paths;
use crate::qemu::Accel;
use crate::tests as suite;

/// perfdhcp waits this long after the last request for late answers (µs), so
/// that answers in flight at the end are not counted as drops.
const EXIT_WAIT_US: &str = "1000000";

/// Options of `bench dhcp`.
#[derive(Debug, Clone, clap::Args)]
pub struct DhcpArgs {
    /// Offered rates (4-way exchanges per second), comma-separated, tried in
    /// order until two in a row drop packets.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,250,500,1000,2000,4000,6000,8000,10000,12000"
    )]
    pub rates: Vec<u32>,
    /// Seconds each rate is offered.
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// Do not run cargo or build the image; use target/release and
    /// target/qa/image as they are.
    #[arg(long)]
    pub no_build: bool,
    /// Skip the PXE boots (live and install to ready, about 6 minutes under
    /// TCG; they need the node image).
    #[arg(long)]
    pub no_pxe: bool,
    /// Seconds each PXE boot may take to reach ready.
    #[arg(long, default_value_t = 300)]
    pub boot_timeout: u64,
    /// Guest memory in MiB for the PXE boots.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Ours,
    Dnsmasq,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Ours => "debvisor-provision",
            Server::Dnsmasq => "dnsmasq",
        }
    }
}

/// One level's figures, as perfdhcp reported them.
#[derive(Debug, Clone, Default)]
struct Level {
    offered: u32,
    /// perfdhcp's "Rate:" (its run time includes the exit wait).
    rate: f64,
    sent_discover: u64,
    sent_request: u64,
    acks: u64,
    drops: u64,
    server_cpu_s: f64,
    server_rss_mb: f64,
}

impl Level {
    fn acks_per_s(&self, duration: u32) -> f64 {
        self.acks as f64 / f64::from(duration)
    }
    fn drop_ratio(&self) -> f64 {
        let sent = self.sent_discover + self.sent_request;
        if sent == 0 {
            0.0
        } else {
            self.drops as f64 / sent as f64
        }
    }
}

/// Runs the benchmark and writes target/qa/bench/dhcp.json.
pub fn dhcp(paths: &Paths, rt: &tokio::runtime::Runtime, accel: Accel, a: &DhcpArgs) -> Result<()> {
    if a.rates.is_empty() || a.rates.contains(&0) || a.duration == 0 {
        bail!("--rates needs positive rates and --duration at least 1 s");
    }
    for tool in ["perfdhcp", "dnsmasq"] {
        if !["/usr/sbin", "/usr/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
        {
            bail!("{tool} not found: run qa/setup-host.sh as root (it installs kea-admin and dnsmasq-base)");
        }
    }
    if !a.no_build {
        crate::host_agent::build_binaries(paths, suite::PXE_BINARIES)?;
    }
    let bin = crate::host_agent::release_binary(paths, "debvisor-provision", "debvisor-provision")?;
    let tag = std::process::id() % 100_000;
    let srv = Netns::create(&format!("dvb-s-{tag}"))?;
    let cli = Netns::create(&format!("dvb-c-{tag}"))?;
    veth(&srv, "srv0", &cli, "cli0")?;
    // RFC 2544's benchmarking network, room for 130,000 leases.
    srv.ip(&["addr", "add", "198.18.0.1/15", "dev", "srv0"])?;
    cli.ip(&["addr", "add", "198.18.0.2/15", "dev", "cli0"])?;
    let tmp = tempfile::Builder::new().prefix("debvisor-bench-dhcp-").tempdir()?;

    let mut results: Vec<(Server, Vec<Level>)> = Vec::new();
    for (si, server) in [Server::Ours, Server::Dnsmasq].into_iter().enumerate() {
        let mut levels = Vec::new();
        for (li, &rate) in a.rates.iter().enumerate() {
            let dir = tmp.path().join(format!("{}-{rate}", server.name()));
            std::fs::create_dir_all(&dir)?;
            let clients = u64::from(rate) * u64::from(a.duration);
            let mut child = start(server, &bin, &srv, &dir, clients)?;
            let pid = child.id().to_string();
            let cpu0 = cpu_seconds(&pid);
            let mac = format!("02:{:02x}:{:02x}:00:00:00", 0x40 + si, li);
            let level = perfdhcp(&cli, rate, a.duration, clients, &mac);
            let cpu = cpu_seconds(&pid) - cpu0;
            let rss = read_kb(child.id(), "VmRSS").unwrap_or(0) as f64 / 1024.0;
            let _ = child.kill();
            let _ = child.wait();
            let mut level = level.with_context(|| format!("perfdhcp against {} at {rate}/s", server.name()))?;
            level.server_cpu_s = cpu;
            level.server_rss_mb = rss;
            eprintln!(
                "{:<19} offered {rate:>6}/s: {:>8.0} ACKs/s, drops {} ({:.3} %), server CPU {cpu:.1} s",
                server.name(),
                level.acks_per_s(a.duration),
                level.drops,
                100.0 * level.drop_ratio()
            );
            levels.push(level);
            if levels.len() >= 2 && levels[levels.len() - 2..].iter().all(|l| l.drops > 0) {
                break;
            }
        }
        results.push((server, levels));
    }
    drop((srv, cli));
    // The DHCP figures now: the PXE boots take minutes.
    let met = print_dhcp(a, &results);
    let pxe = if a.no_pxe {
        Vec::new()
    } else {
        let boot = suite::BenchBoot {
            accel,
            boot_timeout: a.boot_timeout,
            memory: a.memory,
        };
        suite::pxe_ready_times(paths, rt, boot, a.no_build)?
    };
    print_pxe(&pxe);
    write_json(paths, a, &results, met, &pxe)
}

fn start(server: Server, bin: &Path, ns: &Netns, dir: &Path, clients: u64) -> Result<Child> {
    let log = dir.join("server.log");
    let child = match server {
        Server::Ours => {
            let cfg = dir.join("provision.toml");
            std::fs::write(
                &cfg,
                format!(
                    "state_dir = \"{}\"\n[[network]]\ninterface = \"srv0\"\naddress = \"198.18.0.1/15\"\n\
                     mode = \"server\"\nrange = [\"198.18.1.0\", \"198.19.255.250\"]\nlease_secs = 3600\n\
                     [tftp]\nenabled = false\n",
                    dir.join("state").display()
                ),
            )?;
            let b = bin.to_string_lossy();
            let c = cfg.to_string_lossy();
            ns.spawn(&[&b, "serve", "--config", &c], Some(&log))?
        }
        Server::Dnsmasq => {
            let leases = format!("--dhcp-leasefile={}", dir.join("dnsmasq.leases").display());
            let max = format!("--dhcp-lease-max={}", clients + 1000);
            ns.spawn(
                &[
                    "dnsmasq",
                    "-d",
                    "-k",
                    "--port=0",
                    "--interface=srv0",
                    "--bind-interfaces",
                    "--dhcp-range=198.18.1.0,198.19.255.250,1h",
                    &leases,
                    "--no-ping",
                    &max,
                    "--log-facility=-",
                    "--quiet-dhcp",
                ],
                Some(&log),
            )?
        }
    };
    // Ready when port 67 is bound in the namespace.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns.command(&["ss", "-Hulpn", "sport = :67"]).output()?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            bail!("{} did not bind port 67: see {}", server.name(), log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn perfdhcp(ns: &Netns, rate: u32, duration: u32, clients: u64, mac: &str) -> Result<Level> {
    let (r, p, n) = (rate.to_string(), duration.to_string(), clients.to_string());
    let base = format!("mac={mac}");
    let out = ns
        .command(&[
            "perfdhcp",
            "-4",
            "-l",
            "cli0",
            "-r",
            &r,
            "-R",
            &n,
            "-p",
            &p,
            "-W",
            EXIT_WAIT_US,
            "-b",
            &base,
        ])
        .output()
        .context("Cannot run perfdhcp")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    parse_perfdhcp(&text, rate).with_context(|| format!("perfdhcp said:\n{text}"))
}

/// Reads perfdhcp's (Kea 2.2) summary.
fn parse_perfdhcp(text: &str, offered: u32) -> Result<Level> {
    let mut l = Level {
        offered,
        ..Level::default()
    };
    let num = |line: &str| -> Option<f64> { line.split(':').nth(1)?.split_whitespace().next()?.parse().ok() };
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line.starts_with("***Statistics for: DISCOVER-OFFER") {
            section = "DO";
        } else if line.starts_with("***Statistics for: REQUEST-ACK") {
            section = "RA";
        } else if line.starts_with("Rate:") {
            l.rate = num(line).context("no number after Rate:")?;
        } else if let Some(v) = line.strip_prefix("sent packets:").and(num(line)) {
            match section {
                "DO" => l.sent_discover = v as u64,
                "RA" => l.sent_request = v as u64,
                _ => {}
            }
        } else if let Some(v) = line.strip_prefix("received packets:").and(num(line)) {
            if section == "RA" {
                l.acks = v as u64;
            }
        } else if let Some(v) = line.strip_prefix("drops:").and(num(line)) {
            l.drops += v as u64;
        }
    }
    if l.sent_discover == 0 {
        bail!("no DISCOVER-OFFER statistics in perfdhcp's output");
    }
    Ok(l)
}

fn best(levels: &[Level]) -> Option<&Level> {
    levels.iter().filter(|l| l.drops == 0).max_by_key(|l| l.offered)
}

/// The most ACKs per second at any offered rate, drops or not.
fn peak(levels: &[Level], duration: u32) -> f64 {
    levels.iter().map(|l| l.acks_per_s(duration)).fold(0.0, f64::max)
}

/// Prints the DHCP table and whether the target is met (returned).
fn print_dhcp(a: &DhcpArgs, results: &[(Server, Vec<Level>)]) -> bool {
    println!();
    println!(
        "bench dhcp: perfdhcp (DORA, every exchange a new client), {} s per rate, namespaces joined by a veth pair",
        a.duration
    );
    println!(
        "  {:<19} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8}",
        "server", "offered/s", "ACKs/s", "Rate", "drops", "CPU s", "RSS MB"
    );
    for (server, levels) in results {
        for l in levels {
            println!(
                "  {:<19} {:>9} {:>9.0} {:>9.0} {:>8} {:>9.1} {:>8.1}",
                server.name(),
                l.offered,
                l.acks_per_s(a.duration),
                l.rate,
                l.drops,
                l.server_cpu_s,
                l.server_rss_mb
            );
        }
    }
    println!();
    for (server, levels) in results {
        let best = best(levels).map_or("none".to_string(), |l| format!("{}/s", l.offered));
        println!(
            "  {:<19} highest rate with no drops: {best:<8} peak {:.0} ACKs/s",
            server.name(),
            peak(levels, a.duration)
        );
    }
    // Ours must answer, without a drop, at least as fast as dnsmasq answers at all.
    let ours = results.first().and_then(|(_, l)| best(l)).map_or(0, |l| l.offered);
    let peer = results.get(1).map_or(0.0, |(_, l)| peak(l, a.duration));
    let met = f64::from(ours) >= peer;
    println!(
        "  target: no drops at dnsmasq's peak rate ({peer:.0}/s): {} (ours: no drops up to {ours}/s)",
        if met { "met" } else { "NOT met" }
    );
    met
}

fn print_pxe(pxe: &[(&str, f64)]) {
    if pxe.is_empty() {
        println!("  PXE boots to ready: skipped (--no-pxe)");
    }
    for (name, secs) in pxe {
        let what = match *name {
            "pxe_live" => "PXE live boot to ready",
            _ => "PXE install to ready (blank disk)",
        };
        println!("  {what:<34} {secs:>6.1} s  (TCG, from QEMU start; {name})");
    }
}

fn write_json(
    paths: &Paths,
    a: &DhcpArgs,
    results: &[(Server, Vec<Level>)],
    met: bool,
    pxe: &[(&str, f64)],
) -> Result<()> {
    let out: PathBuf = paths.bench().join("dhcp.json");
    std::fs::create_dir_all(paths.bench())?;
    let doc = json!({
        "duration_s": a.duration,
        "servers": results.iter().map(|(s, levels)| json!({
            "server": s.name(),
            "best_rate_without_drops": best(levels).map(|l| l.offered),
            "peak_acks_per_s": peak(levels, a.duration),
            "levels": levels.iter().map(|l| json!({
                "offered": l.offered, "acks_per_s": l.acks_per_s(a.duration), "perfdhcp_rate": l.rate,
                "sent_discover": l.sent_discover, "sent_request": l.sent_request, "acks": l.acks,
                "drops": l.drops, "server_cpu_s": l.server_cpu_s, "server_rss_mb": l.server_rss_mb,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "target_met": met,
        "pxe_to_ready_s": pxe.iter().map(|(n, s)| ((*n).to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)?;
    println!("JSON      {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfdhcp_summary_parses() {
        let text = "Running: perfdhcp\n***Rate statistics***\nRate: 4544.93 4-way exchanges/second, expected rate: 5000\n\
            ***Statistics for: DISCOVER-OFFER***\nsent packets: 50000\nreceived packets: 49999\ndrops: 1\n\
            ***Statistics for: REQUEST-ACK***\nsent packets: 49999\nreceived packets: 49990\ndrops: 9\n";
        let l = parse_perfdhcp(text, 5000).unwrap();
        assert_eq!(
            (l.sent_discover, l.sent_request, l.acks, l.drops),
            (50000, 49999, 49990, 10)
        );
        assert!((l.rate - 4544.93).abs() < 1e-6);
        assert!(parse_perfdhcp("ERROR: no address", 1).is_err());
    }
}
