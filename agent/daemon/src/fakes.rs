//! Fakes of the host facilities, for tests and `--sim`. They keep state in
//! memory and behave like the real host; every answer says it is simulated.

use std::time::Instant;

use debvisor_api::health::v1::{
    Alert, BootGate, Check, CheckResult, CheckStatus, GateState, ListRequest, NodeHealth, NodeState, Severity,
    WatchRequest,
};
use debvisor_api::node::v1::{Cpu, Disk, GetStatusResponse, LoadAverage, Memory, NetworkInterface};
use tokio_stream::StreamExt;

use crate::health_service::{HealthError, HealthSource, HealthStream};
use crate::host::{HostError, HostFacts, now_unix_ms};

/// A simulated node: fixed identity, uptime counting from creation, and
/// figures that move over time like a lightly loaded machine (CPU, memory,
/// load and network traffic follow slow waves; the data disk fills and is
/// cleaned up), so that a simulated dashboard is live.
#[derive(Debug)]
pub struct FakeHost {
    hostname: String,
    started: Instant,
}

impl FakeHost {
    /// A simulated node with the given host name.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            started: Instant::now(),
        }
    }
}

/// Number of simulated CPUs.
const SIM_CPUS: u32 = 4;

/// A wave between 0 and 1 with the given period in seconds, at time `t`.
fn wave(t: f64, period: f64, phase: f64) -> f64 {
    0.5 + 0.5 * (std::f64::consts::TAU * t / period + phase).sin()
}

/// Bytes sent so far by a link whose rate (bytes/s) is `base` plus a wave of
/// `swing` with period `period`: the integral of the rate, so counters only
/// grow.
fn counter(t: f64, base: f64, swing: f64, period: f64) -> u64 {
    let w = std::f64::consts::TAU / period;
    // ∫ base + swing·(0.5 + 0.5·sin(w·s)) ds from 0 to t
    let bytes = base * t + swing * (0.5 * t + 0.5 * (1.0 - (w * t).cos()) / w);
    bytes.max(0.0) as u64
}

impl HostFacts for FakeHost {
    fn status(&self) -> Result<GetStatusResponse, HostError> {
        Ok(self.status_at(self.started.elapsed().as_secs_f64()))
    }
}

impl FakeHost {
    /// The simulated figures `t` seconds after the node started.
    pub fn status_at(&self, t: f64) -> GetStatusResponse {
        const GIB: u64 = 1 << 30;
        let per_cpu: Vec<f64> = (0..SIM_CPUS)
            .map(|i| (0.08 + 0.5 * wave(t, 40.0 + 7.0 * f64::from(i), f64::from(i))).clamp(0.0, 1.0))
            .collect();
        let busy = per_cpu.iter().sum::<f64>() / f64::from(SIM_CPUS);
        let used_mem = (2.0 + 1.5 * wave(t, 90.0, 0.0)) * GIB as f64;
        let data_used = (10.0 + 5.0 * wave(t, 300.0, -1.5)) * GIB as f64;
        let link = |name: &str, rx: (f64, f64), tx: (f64, f64), up: bool| NetworkInterface {
            name: name.into(),
            rx_bytes: counter(t, rx.0, rx.1, 30.0),
            tx_bytes: counter(t, tx.0, tx.1, 45.0),
            rx_packets: counter(t, rx.0, rx.1, 30.0) / 900,
            tx_packets: counter(t, tx.0, tx.1, 45.0) / 700,
            up,
            operstate: if up { "up" } else { "down" }.into(),
        };
        GetStatusResponse {
            hostname: self.hostname.clone(),
            image_version: env!("CARGO_PKG_VERSION").to_string(),
            image_id: "debvisor-node".to_string(),
            booted_slot: "A".to_string(),
            uptime_seconds: t,
            load: Some(LoadAverage {
                one: busy * f64::from(SIM_CPUS),
                five: 0.6 * busy * f64::from(SIM_CPUS),
                fifteen: 0.4,
            }),
            memory: Some(Memory {
                total_bytes: 8 * GIB,
                available_bytes: 8 * GIB - used_mem as u64,
                used_bytes: used_mem as u64,
            }),
            disks: vec![
                Disk {
                    name: "root".into(),
                    mount_point: "/".into(),
                    total_bytes: GIB,
                    available_bytes: 0,
                    used_bytes: GIB,
                    read_only: true,
                },
                Disk {
                    name: "data".into(),
                    mount_point: "/data".into(),
                    total_bytes: 100 * GIB,
                    available_bytes: 100 * GIB - data_used as u64,
                    used_bytes: data_used as u64,
                    read_only: false,
                },
            ],
            kernel: "sim".to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            simulated: true,
            sampled_at_unix_ms: crate::host::now_unix_ms(),
            cpu: Some(Cpu {
                count: SIM_CPUS,
                busy_fraction: busy,
                per_cpu_busy_fraction: per_cpu,
                period_ms: 1000,
            }),
            interfaces: vec![
                link("enp0s1", (200_000.0, 1_500_000.0), (50_000.0, 400_000.0), true),
                link("br0", (150_000.0, 1_000_000.0), (40_000.0, 300_000.0), true),
                link("enp0s2", (0.0, 0.0), (0.0, 0.0), false),
            ],
        }
    }
}

/// The simulated node's health, for `--sim` only: a fixed set of checks of
/// every kind with plausible results (one certificate close to expiry), a
/// boot gate declared good 40 s after the boot (which began a minute before
/// the simulation) and the alert that said so.
/// Every message ends in "(simulated)". List honours the kind filter and the
/// history flag like debvisor-init; Watch sends the state once and stays open
/// until the client leaves, as nothing changes on a simulated node.
#[derive(Debug)]
pub struct SimHealth {
    boot_unix_ms: i64,
}

/// One simulated check.
struct SimCheck {
    name: &'static str,
    kind: &'static str,
    required: bool,
    unit: &'static str,
    interval_s: u32,
    status: CheckStatus,
    message: &'static str,
}

/// The simulated checks, one or two of each kind.
const SIM_CHECKS: &[SimCheck] = &[
    SimCheck {
        name: "service/debvisor-agent",
        kind: "service",
        required: true,
        unit: "debvisor-agent.service",
        interval_s: 10,
        status: CheckStatus::Pass,
        message: "active; gRPC health SERVING in 2 ms",
    },
    SimCheck {
        name: "service/debvisor-webui",
        kind: "service",
        required: true,
        unit: "debvisor-webui.service",
        interval_s: 10,
        status: CheckStatus::Pass,
        message: "active; HTTPS answered 200 in 9 ms",
    },
    SimCheck {
        name: "network/gateway",
        kind: "network",
        required: true,
        unit: "",
        interval_s: 30,
        status: CheckStatus::Pass,
        message: "gateway 10.0.2.2 answered in 1 ms",
    },
    SimCheck {
        name: "dns",
        kind: "dns",
        required: false,
        unit: "",
        interval_s: 60,
        status: CheckStatus::Pass,
        message: "deb.debian.org resolved in 12 ms",
    },
    SimCheck {
        name: "storage/data",
        kind: "storage",
        required: true,
        unit: "",
        interval_s: 60,
        status: CheckStatus::Pass,
        message: "/data is 10% full (limit 90%), mounted read-write",
    },
    SimCheck {
        name: "resources/memory",
        kind: "resources",
        required: false,
        unit: "",
        interval_s: 30,
        status: CheckStatus::Pass,
        message: "25% of 8.0 GiB used (limit 90%)",
    },
    SimCheck {
        name: "certificate/server",
        kind: "certificate",
        required: false,
        unit: "",
        interval_s: 3600,
        status: CheckStatus::Warn,
        message: "node certificate expires in 21 days (renewal under 30 days)",
    },
];

/// Earlier results kept per check in the simulated history.
const SIM_HISTORY: i64 = 3;

impl SimHealth {
    /// A simulated node that booted a minute ago.
    pub fn new() -> Self {
        Self {
            boot_unix_ms: now_unix_ms() - 60_000,
        }
    }

    /// The state at `now_unix_ms`.
    pub fn health(&self, now_unix_ms: i64, include_history: bool, kind: &str) -> NodeHealth {
        let up_ms = now_unix_ms - self.boot_unix_ms;
        let checks = SIM_CHECKS
            .iter()
            .filter(|c| kind.is_empty() || c.kind == kind)
            .map(|c| {
                let interval_ms = i64::from(c.interval_s) * 1000;
                let result = |runs_ago: i64| CheckResult {
                    status: c.status as i32,
                    message: format!("{} (simulated)", c.message),
                    started_unix_ms: now_unix_ms - (up_ms % interval_ms) - runs_ago * interval_ms,
                    duration_ms: 3,
                };
                Check {
                    name: c.name.into(),
                    kind: c.kind.into(),
                    required: c.required,
                    interval_ms: c.interval_s * 1000,
                    timeout_ms: 5000,
                    last: Some(result(0)),
                    consecutive_failures: 0,
                    unit: c.unit.into(),
                    history: if include_history {
                        (1..=SIM_HISTORY.min(up_ms / interval_ms)).map(result).collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        let decided = self.boot_unix_ms + 40_000;
        NodeHealth {
            state: NodeState::Healthy as i32,
            degraded_reason: String::new(),
            gate: Some(BootGate {
                state: GateState::Good as i32,
                deadline_unix_ms: self.boot_unix_ms + 300_000,
                decided_unix_ms: decided,
                reason: "all required units active and required checks passing (simulated)".into(),
                slot: "A".into(),
            }),
            checks,
            alerts: vec![Alert {
                time_unix_ms: decided,
                severity: Severity::Info as i32,
                check: String::new(),
                action: "boot-good".into(),
                message: "slot A declared good (simulated)".into(),
            }],
            config_error: String::new(),
            config_digest: "5153c0ffee42".into(),
        }
    }
}

impl Default for SimHealth {
    fn default() -> Self {
        Self::new()
    }
}

#[tonic::async_trait]
impl HealthSource for SimHealth {
    async fn list(&self, req: ListRequest) -> Result<NodeHealth, HealthError> {
        Ok(self.health(now_unix_ms(), req.include_history, &req.kind))
    }

    async fn watch(&self, req: WatchRequest) -> Result<HealthStream, HealthError> {
        let first = self.health(now_unix_ms(), req.include_history, "");
        Ok(Box::pin(tokio_stream::once(Ok(first)).chain(tokio_stream::pending())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_host_figures_move_and_counters_only_grow() {
        let host = FakeHost::new("n1");
        let mut last_rx = 0;
        let mut cpus = Vec::new();
        for step in 0..60 {
            let s = host.status_at(f64::from(step) * 5.0);
            let cpu = s.cpu.unwrap();
            assert!((0.0..=1.0).contains(&cpu.busy_fraction), "{cpu:?}");
            assert_eq!(cpu.per_cpu_busy_fraction.len(), cpu.count as usize);
            let mem = s.memory.unwrap();
            assert_eq!(mem.used_bytes + mem.available_bytes, mem.total_bytes);
            let rx = s.interfaces[0].rx_bytes;
            assert!(rx >= last_rx, "step {step}: {rx} < {last_rx}");
            last_rx = rx;
            cpus.push(cpu.busy_fraction);
        }
        assert!(last_rx > 0);
        let (lo, hi) = cpus
            .iter()
            .fold((1.0f64, 0.0f64), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
        assert!(hi - lo > 0.1, "CPU moves: {lo}..{hi}");
        let a = host.status_at(0.0).memory.unwrap().used_bytes;
        let b = host.status_at(20.0).memory.unwrap().used_bytes;
        assert_ne!(a, b, "memory moves");
        assert!(!host.status_at(1.0).interfaces[2].up);
    }

    #[test]
    fn sim_health_filters_by_kind_and_keeps_history_on_request() {
        let sim = SimHealth::new();
        let later = sim.boot_unix_ms + 600_000;
        let all = sim.health(later, false, "");
        assert_eq!(all.checks.len(), SIM_CHECKS.len());
        assert_eq!(all.state, NodeState::Healthy as i32);
        assert!(all.checks.iter().all(|c| c.history.is_empty()));
        assert!(all.checks.iter().any(|c| c.required));

        let services = sim.health(later, true, "service");
        assert_eq!(services.checks.len(), 2);
        assert!(services.checks.iter().all(|c| c.kind == "service"));
        let h = &services.checks[0].history;
        assert_eq!(h.len(), 3);
        assert!(h[0].started_unix_ms > h[1].started_unix_ms, "most recent first");
        assert!(sim.health(later, false, "nothing").checks.is_empty());
    }
}
