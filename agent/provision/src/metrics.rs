//! Prometheus metrics of the provisioner.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result {
    result: &'static str,
}

/// The counters; cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    received: Family<Kind, Counter>,
    sent: Family<Kind, Counter>,
    malformed: Family<Reason, Counter>,
    ignored: Family<Reason, Counter>,
    tftp: Family<Result, Counter>,
    http: Family<Result, Counter>,
    leases_active: Gauge<i64, AtomicI64>,
    commit_failures: Counter,
}

impl Metrics {
    /// Registers the metrics in `registry` (prefix `provision_`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("provision");
        r.register(
            "dhcp_received",
            "DHCP requests received, by message type",
            self.received.clone(),
        );
        r.register("dhcp_sent", "DHCP replies sent, by message type", self.sent.clone());
        r.register(
            "dhcp_malformed",
            "Datagrams dropped as malformed, by reason",
            self.malformed.clone(),
        );
        r.register("dhcp_ignored", "Requests not answered, by reason", self.ignored.clone());
        r.register("tftp_requests", "TFTP requests, by result", self.tftp.clone());
        r.register("http_requests", "HTTP requests, by result", self.http.clone());
        r.register("leases_active", "Leases not yet expired", self.leases_active.clone());
        r.register(
            "commit_failures",
            "Lease database commits that failed",
            self.commit_failures.clone(),
        );
    }

    /// A request of `kind` arrived.
    pub fn received(&self, kind: dhcproto::v4::MessageType) {
        self.received
            .get_or_create(&Kind {
                kind: format!("{kind:?}"),
            })
            .inc();
    }

    /// A reply of `kind` went out.
    pub fn sent(&self, kind: dhcproto::v4::MessageType) {
        self.sent
            .get_or_create(&Kind {
                kind: format!("{kind:?}"),
            })
            .inc();
    }

    /// A datagram was dropped as malformed.
    pub fn malformed(&self, reason: &'static str) {
        self.malformed.get_or_create(&Reason { reason }).inc();
    }

    /// A request got no answer.
    pub fn ignored(&self, reason: &'static str) {
        self.ignored.get_or_create(&Reason { reason }).inc();
    }

    /// A TFTP request ended with `result`.
    pub fn tftp(&self, result: &'static str) {
        self.tftp.get_or_create(&Result { result }).inc();
    }

    /// An HTTP request ended with `result`.
    pub fn http(&self, result: &'static str) {
        self.http.get_or_create(&Result { result }).inc();
    }

    /// Sets the number of active leases.
    pub fn set_leases_active(&self, n: usize) {
        self.leases_active.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A commit failed.
    pub fn commit_failed(&self) {
        self.commit_failures.inc();
    }

    /// The count of malformed datagrams dropped for `reason` (for tests and the CLI).
    pub fn malformed_count(&self, reason: &'static str) -> u64 {
        self.malformed.get_or_create(&Reason { reason }).get()
    }

    /// The count of TFTP requests that ended with `result`.
    pub fn tftp_count(&self, result: &'static str) -> u64 {
        self.tftp.get_or_create(&Result { result }).get()
    }
}
