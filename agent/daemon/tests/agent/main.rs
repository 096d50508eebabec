//! The agent end to end (its services on a temporary Unix socket and over
//! mutual TLS, with fake host facilities and test doubles of its peers), as
//! one test binary.

mod health;
mod provision;
mod transports;
mod update;
mod vm;

use std::sync::Arc;

use debvisor_agent::config::AgentConfig;
use debvisor_agent::fakes::{FakeHost, SimHealth};
use debvisor_agent::server::{self, Backends, ServeConfig};
use debvisor_audit::AuditLog;
use debvisor_systemd::fakes::{FakeJournal, FakeUnits};

/// The agent's facilities as `--sim` has them (fake host called `host`,
/// fake units and journal, simulated health), with `audit` and `provision`.
fn sim_backends(host: &str, audit: AuditLog, provision: Option<debvisor_provision::Provisioner>) -> Backends {
    let journal = Arc::new(FakeJournal::new());
    Backends {
        host: Arc::new(FakeHost::new(host)),
        units: Arc::new(FakeUnits::new().with_journal(journal.clone())),
        journal,
        audit,
        health: Arc::new(SimHealth::new()),
        provision,
        vm: None,
    }
}

/// The agent serving `backends` on `agent.sock` in `dir` (Unix socket only,
/// default config) until dropped.
struct Served {
    channel: tonic::transport::Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn serve(dir: &std::path::Path, backends: Backends) -> Served {
    let serve = ServeConfig {
        socket: dir.join("agent.sock"),
        tls: None,
        metrics: None,
    };
    let bound = server::bind(&serve).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(
        bound,
        backends,
        AgentConfig::default(),
        debvisor_telemetry::Metrics::new(),
        async {
            let _ = stopped.await;
        },
    ));
    Served {
        channel: debvisor_api::client::connect_unix(&serve.socket).await.unwrap(),
        stop: Some(stop),
    }
}
