//! `debvisor-qa bench agent`: GetStatus throughput and latency of the agent
//! over mutual TLS on 127.0.0.1, with its memory and CPU time. The agent
//! reads the real host (/proc), not the simulation.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use debvisor_api::config::Context;
use debvisor_api::node::v1::GetStatusRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;
use serde_json::json;

use crate::host_agent::{self, AgentOpts, HostAgent, UserManager};
use crate::node::Paths;

/// The targets the figures are compared with.
const TARGET_QPS: f64 = 20_000.0;
const TARGET_QPS_CLIENTS: usize = 128;
const TARGET_P99_MS: f64 = 10.0;
const TARGET_RSS_IDLE_MB: f64 = 20.0;
/// A per-client rate limit far above what one client can send here, so
/// that the limiter is exercised but never refuses.
const RATE_LIMIT: (f64, u32) = (1_000_000.0, 1_000_000);
/// How long the agent idles before its idle RSS is read.
const IDLE: Duration = Duration::from_secs(3);

/// Options of `bench agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Seconds measured at each concurrency level.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of warm-up before each level's measurement.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Concurrent clients, comma-separated; each has its own TLS connection
    /// and client certificate.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    pub levels: Vec<usize>,
    /// Do not run cargo; use target/release/debvisor-agent as it is.
    #[arg(long)]
    pub no_build: bool,
}

/// VmRSS, VmHWM etc. of /proc/PID/status, in kB.
pub fn status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime (clock ticks) of a /proc/PID/stat line.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses; fields follow the
    // last ')'. After it: state (3rd field) ... utime (14th), stime (15th).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The nearest-rank percentile `p` (0..=100) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn read_kb(pid: u32, key: &str) -> Option<u64> {
    status_kb(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, key)
}

pub fn cpu_seconds(pid: &str) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| cpu_ticks(&s))
        .map_or(0.0, |t| t as f64 / ticks)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// One concurrency level's figures.
#[derive(Debug, Clone)]
struct Level {
    clients: usize,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    rss_peak_kb: u64,
    agent_cpu_s: f64,
    loadgen_cpu_s: f64,
}

impl Level {
    fn qps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn cpu_per_req_us(&self, cpu: f64) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        cpu * 1e6 / self.requests as f64
    }
    fn json(&self) -> serde_json::Value {
        json!({
            "clients": self.clients,
            "requests": self.requests,
            "errors": self.errors,
            "first_error": self.first_error,
            "seconds": self.secs,
            "qps": self.qps(),
            "p50_ms": self.p50_us as f64 / 1000.0,
            "p99_ms": self.p99_us as f64 / 1000.0,
            "max_ms": self.max_us as f64 / 1000.0,
            "rss_peak_mb": mb(self.rss_peak_kb),
            "agent_cpu_seconds": self.agent_cpu_s,
            "agent_cpu_us_per_request": self.cpu_per_req_us(self.agent_cpu_s),
            "loadgen_cpu_us_per_request": self.cpu_per_req_us(self.loadgen_cpu_s),
        })
    }
}

/// What one client task saw in the measured window.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn client_loop(
    mut client: NodeServiceClient<tonic::transport::Channel>,
    measure_from: Instant,
    end: Instant,
) -> Seen {
    let mut seen = Seen::default();
    loop {
        let t = Instant::now();
        if t >= end {
            return seen;
        }
        let r = client.get_status(GetStatusRequest {}).await;
        if t < measure_from {
            continue;
        }
        match r {
            Ok(_) => seen.latencies_us.push(t.elapsed().as_micros() as u64),
            Err(e) => {
                seen.errors += 1;
                if seen.first_error.is_none() {
                    seen.first_error = Some(format!("{}: {}", e.code(), e.message()));
                }
            }
        }
    }
}

async fn run_level(
    agent: &HostAgent,
    contexts: &[Context],
    n: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Level> {
    let mut clients = Vec::with_capacity(n);
    for ctx in &contexts[..n] {
        let ch = debvisor_api::tls::connect_mtls(ctx)
            .await
            .context("A bench client cannot connect")?;
        clients.push(NodeServiceClient::new(ch));
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(client_loop(c, measure_from, end)))
        .collect();

    // Samples memory every 100 ms and CPU time at both ends of the window.
    let pid = agent.pid;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let (agent0, self0) = (cpu_seconds(&pid.to_string()), cpu_seconds("self"));
        let mut peak = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while Instant::now() < end {
            tick.tick().await;
            peak = peak.max(read_kb(pid, "VmRSS").unwrap_or(0));
        }
        (
            peak,
            cpu_seconds(&pid.to_string()) - agent0,
            cpu_seconds("self") - self0,
        )
    });

    let mut all = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for t in tasks {
        let s = t.await.context("A bench client task failed")?;
        all.extend(s.latencies_us);
        errors += s.errors;
        first_error = first_error.or(s.first_error);
    }
    let (rss_peak_kb, agent_cpu_s, loadgen_cpu_s) = sampler.await?;
    all.sort_unstable();
    Ok(Level {
        clients: n,
        requests: all.len() as u64,
        errors,
        first_error,
        secs: measure.as_secs_f64(),
        p50_us: percentile(&all, 50.0),
        p99_us: percentile(&all, 99.0),
        max_us: all.last().copied().unwrap_or(0),
        rss_peak_kb,
        agent_cpu_s,
        loadgen_cpu_s,
    })
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Runs the benchmark and writes target/qa/bench/agent.json.
pub fn agent(paths: &Paths, rt: &tokio::runtime::Runtime, a: &AgentArgs) -> Result<()> {
    if a.levels.is_empty() || a.levels.contains(&0) {
        bail!("--levels needs positive client counts, e.g. 1,16,128");
    }
    if a.duration == 0 {
        bail!("--duration must be at least 1 s");
    }
    if !a.no_build {
        host_agent::build_binaries(paths, &["debvisor-agent"])?;
    }
    let bin = host_agent::release_binary(paths, "debvisor-agent", "debvisor-agent")?;
    // The real agent needs systemd on D-Bus, which a container lacks.
    let manager = if UserManager::needed() {
        Some(rt.block_on(UserManager::start())?)
    } else {
        None
    };
    let tmp = tempfile::Builder::new()
        .prefix("debvisor-bench-agent-")
        .tempdir()
        .context("Cannot create a temporary directory")?;
    let mut agent = HostAgent::start(
        &bin,
        tmp.path(),
        &AgentOpts {
            sim: false,
            rate_limit: RATE_LIMIT,
            system_bus: manager.as_ref().map(UserManager::bus_address),
            vmd_config: String::new(),
            real_vmd: false,
        },
    )?;
    let max = a.levels.iter().copied().max().unwrap_or(1);
    let t = Instant::now();
    let contexts: Vec<Context> = (1..=max)
        .map(|i| agent.client(&format!("bench-{i:03}")))
        .collect::<Result<_>>()?;
    let issue_s = t.elapsed().as_secs_f64();
    rt.block_on(agent.wait_healthy(&contexts[0], Duration::from_secs(30)))?;
    std::thread::sleep(IDLE);
    let idle_kb = read_kb(agent.pid, "VmRSS").context("Cannot read the agent's VmRSS")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = load
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);

    println!(
        "debvisor-agent GetStatus over mTLS at {} (real host, /proc)",
        agent.addr
    );
    println!("  The load generator (this process, 2 tokio workers) shares the machine's {cores} cores with the agent:");
    println!("  the figures are what both together reach, a lower bound for the agent alone.");
    println!(
        "  Load average (1 min) before the run: {load1:.2}{}",
        if load1 >= 0.5 {
            "; other work on the machine lowers these figures"
        } else {
            ""
        }
    );
    if manager.is_some() {
        println!(
            "  This host's PID 1 is not systemd: the agent talks to a `systemd --user` on its own bus (GetStatus does not use it)."
        );
    }
    println!(
        "  Rate limit: {:.0}/s, burst {} per client identity, so that it never binds.",
        RATE_LIMIT.0, RATE_LIMIT.1
    );
    println!(
        "  Each client: its own TLS connection and client certificate ({max} issued in {issue_s:.2} s); warm-up {} s, then {} s measured per level.",
        a.warmup, a.duration
    );
    println!();
    println!(
        "{:>7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>6} {:>13} {:>15}  target",
        "clients", "requests", "qps", "p50 ms", "p99 ms", "max ms", "errors", "agent CPU/req", "loadgen CPU/req"
    );
    let mut levels = Vec::new();
    for &n in &a.levels {
        agent.check_running()?;
        let l = rt.block_on(run_level(
            &agent,
            &contexts,
            n,
            Duration::from_secs(a.warmup),
            Duration::from_secs(a.duration),
        ))?;
        let target = if n == TARGET_QPS_CLIENTS {
            let ok = l.qps() >= TARGET_QPS && (l.p99_us as f64 / 1000.0) < TARGET_P99_MS && l.errors == 0;
            format!(">= {TARGET_QPS:.0} qps, p99 < {TARGET_P99_MS} ms: {}", met(ok))
        } else {
            String::new()
        };
        println!(
            "{:>7} {:>9} {:>9.0} {:>8} {:>8} {:>8} {:>6} {:>10.1} us {:>12.1} us  {target}",
            n,
            l.requests,
            l.qps(),
            ms(l.p50_us),
            ms(l.p99_us),
            ms(l.max_us),
            l.errors,
            l.cpu_per_req_us(l.agent_cpu_s),
            l.cpu_per_req_us(l.loadgen_cpu_s),
        );
        if let Some(e) = &l.first_error {
            println!("        first error: {e}");
        }
        levels.push(l);
    }
    agent.check_running()?;
    let hwm_kb = read_kb(agent.pid, "VmHWM").unwrap_or(0);
    let peak_kb = levels.iter().map(|l| l.rss_peak_kb).max().unwrap_or(0);
    println!();
    println!(
        "RSS idle  {:.1} MB after {} s idle   (target <= {TARGET_RSS_IDLE_MB} MB: {})",
        mb(idle_kb),
        IDLE.as_secs(),
        met(mb(idle_kb) <= TARGET_RSS_IDLE_MB)
    );
    println!("          (the agent links no libvirt: VM calls go on to debvisor-vmd, a process of its own)");
    println!(
        "RSS peak  {:.1} MB under load (VmRSS sampled every 100 ms); VmHWM {:.1} MB",
        mb(peak_kb),
        mb(hwm_kb)
    );
    println!(
        "CPU       agent and load generator per request, from utime+stime in /proc/PID/stat over each measured window"
    );
    agent.stop();
    drop(manager);

    let out = paths.bench().join("agent.json");
    std::fs::create_dir_all(paths.bench())?;
    let doc = json!({
        "benchmark": "agent GetStatus over mTLS",
        "host": "real (/proc)",
        "cores": cores,
        "load_average_1min_before": load1,
        "shared_cores": "the load generator runs on the same cores as the agent",
        "rate_limit": {"per_second": RATE_LIMIT.0, "burst": RATE_LIMIT.1, "binds": false},
        "warmup_seconds": a.warmup,
        "duration_seconds": a.duration,
        "levels": levels.iter().map(Level::json).collect::<Vec<_>>(),
        "rss_idle_mb": mb(idle_kb),
        "rss_peak_mb": mb(peak_kb),
        "vm_hwm_mb": mb(hwm_kb),
        "targets": {
            "qps_at_clients": TARGET_QPS_CLIENTS,
            "qps_min": TARGET_QPS,
            "p99_ms_max": TARGET_P99_MS,
            "rss_idle_mb_max": TARGET_RSS_IDLE_MB,
        },
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("Cannot write {}", out.display()))?;
    println!("JSON      {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\tdebvisor-agent\nVmHWM:\t   20480 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(12345));
        assert_eq!(status_kb(status, "VmHWM"), Some(20480));
        assert_eq!(status_kb(status, "VmSwap"), None);
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[1, 2, 3], 0.0), 1);
    }
}
