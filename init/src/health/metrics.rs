//! The supervisor's Prometheus metrics, registered in the registry of a
//! [`debvisor_telemetry::Metrics`] and served by `serve_metrics`:
//!
//! - `debvisor_health_check_status{check,kind}` gauge: 0 pass, 1 warn,
//!   2 fail, -1 pending
//! - `debvisor_health_check_duration_seconds{check}` gauge: the last run
//! - `debvisor_health_check_failures_total{check}` counter: failed runs
//! - `debvisor_node_degraded` gauge: 1 when the node is degraded
//! - `debvisor_boot_gate_state` gauge: 0 pending, 1 good, 2 bad
//! - `debvisor_supervisor_restarts_total{unit}` counter: starts and restarts
//!   the supervisor and remediation made

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::Status;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckKindLabels {
    check: String,
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckLabels {
    check: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UnitLabels {
    unit: String,
}

/// The supervisor's metrics. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct HealthMetrics {
    status: Family<CheckKindLabels, Gauge>,
    duration: Family<CheckLabels, Gauge<f64, AtomicU64>>,
    failures: Family<CheckLabels, Counter>,
    degraded: Gauge,
    gate: Gauge,
    restarts: Family<UnitLabels, Counter>,
}

impl HealthMetrics {
    /// Creates the metrics and registers them in `metrics`' registry.
    pub fn register(metrics: &debvisor_telemetry::Metrics) -> Self {
        let m = Self::default();
        let mut r = metrics.registry();
        r.register(
            "debvisor_health_check_status",
            "Latest result of each health check: 0 pass, 1 warn, 2 fail, -1 pending",
            m.status.clone(),
        );
        r.register(
            "debvisor_health_check_duration_seconds",
            "Duration of each health check's latest run",
            m.duration.clone(),
        );
        r.register(
            "debvisor_health_check_failures",
            "Failed runs of each health check",
            m.failures.clone(),
        );
        r.register(
            "debvisor_node_degraded",
            "1 when the node is degraded",
            m.degraded.clone(),
        );
        r.register(
            "debvisor_boot_gate_state",
            "Boot gate: 0 pending, 1 good, 2 bad",
            m.gate.clone(),
        );
        r.register(
            "debvisor_supervisor_restarts",
            "Units started again by the supervisor or restarted by remediation",
            m.restarts.clone(),
        );
        m
    }

    /// A check that has not finished its first run.
    pub fn pending(&self, check: &str, kind: &str) {
        self.status_gauge(check, kind).set(-1);
    }

    /// A finished run.
    pub fn observe(&self, check: &str, kind: &str, status: Status, seconds: f64) {
        let value = match status {
            Status::Pass => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        };
        self.status_gauge(check, kind).set(value);
        let labels = CheckLabels {
            check: check.to_string(),
        };
        self.duration.get_or_create(&labels).set(seconds);
        let failures = self.failures.get_or_create(&labels);
        if status == Status::Fail {
            failures.inc();
        }
    }

    /// The node's degraded state.
    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.set(i64::from(degraded));
    }

    /// The boot gate: 0 pending, 1 good, 2 bad.
    pub fn set_gate(&self, value: i64) {
        self.gate.set(value);
    }

    /// One more start or restart of `unit`.
    pub fn restarted(&self, unit: &str) {
        self.restarts
            .get_or_create(&UnitLabels { unit: unit.to_string() })
            .inc();
    }

    fn status_gauge(&self, check: &str, kind: &str) -> Gauge {
        self.status
            .get_or_create(&CheckKindLabels {
                check: check.to_string(),
                kind: kind.to_string(),
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_the_exposition() {
        let metrics = debvisor_telemetry::Metrics::new();
        let m = HealthMetrics::register(&metrics);
        m.pending("dns", "dns");
        m.observe("storage/data", "storage", Status::Fail, 0.25);
        m.set_degraded(true);
        m.set_gate(1);
        m.restarted("debvisor-agent.service");
        let text = metrics.encode();
        for line in [
            "debvisor_health_check_status{check=\"dns\",kind=\"dns\"} -1",
            "debvisor_health_check_status{check=\"storage/data\",kind=\"storage\"} 2",
            "debvisor_health_check_duration_seconds{check=\"storage/data\"} 0.25",
            "debvisor_health_check_failures_total{check=\"storage/data\"} 1",
            "debvisor_node_degraded 1",
            "debvisor_boot_gate_state 1",
            "debvisor_supervisor_restarts_total{unit=\"debvisor-agent.service\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
