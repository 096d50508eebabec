//! The node's checks in their stable order, and the `config` check.

use std::sync::Arc;

use debvisor_api::paths;
use debvisor_systemd::Units;
use tokio::sync::watch;
use tokio::time::Instant;

use super::certificate::{CertificateCheck, Which};
use super::engine::ConfigState;
use super::network::{DnsCheck, GatewayCheck};
use super::service::{AGENT_UNIT, Endpoint, ServiceCheck, WEBUI_UNIT};
use super::system::{ResourceCheck, StorageCheck};
use super::{Check, HealthSettings, Outcome};

/// `config`: the machine config's state, as the code applying it sets it.
#[derive(Debug, Clone)]
pub struct ConfigCheck {
    rx: watch::Receiver<ConfigState>,
}

impl ConfigCheck {
    /// Reports the state published on `rx`.
    pub fn new(rx: watch::Receiver<ConfigState>) -> Self {
        Self { rx }
    }
}

#[async_trait::async_trait]
impl Check for ConfigCheck {
    fn name(&self) -> &str {
        "config"
    }
    fn kind(&self) -> &'static str {
        "config"
    }
    fn required(&self) -> bool {
        false
    }
    async fn run(&self, _deadline: Instant) -> Outcome {
        let s = self.rx.borrow().clone();
        match (s.error.is_empty(), s.digest.is_empty()) {
            (false, _) => Outcome::fail(s.error),
            (true, false) => Outcome::pass(format!("machine config {} applied", s.digest)),
            (true, true) => Outcome::pass("no machine config: running on safe defaults"),
        }
    }
}

/// The node's checks: `service/debvisor-agent`, `service/debvisor-webui`,
/// `service/<unit>` for each other unit of `supervised`, `network/gateway`,
/// `dns`, `storage/data`, `resources/memory`, `resources/load`,
/// `resources/disk`, `certificate/server`, `certificate/admin`, `config`.
pub fn node_checks(
    settings: &HealthSettings,
    units: Arc<dyn Units>,
    supervised: &[String],
    hostname: &str,
    config: watch::Receiver<ConfigState>,
) -> Vec<Arc<dyn Check>> {
    let mut checks: Vec<Arc<dyn Check>> = vec![
        Arc::new(ServiceCheck::agent(units.clone(), paths::AGENT_SOCKET)),
        Arc::new(ServiceCheck::webui(
            units.clone(),
            paths::CONSOLE_HTTPS_PORT,
            paths::SERVER_CERT,
        )),
    ];
    for unit in supervised
        .iter()
        .filter(|u| ![AGENT_UNIT, WEBUI_UNIT].contains(&u.as_str()))
    {
        checks.push(Arc::new(ServiceCheck::new(unit, Endpoint::None, units.clone())));
    }
    checks.push(Arc::new(GatewayCheck::new()));
    checks.push(Arc::new(DnsCheck::new(settings.dns_names.clone())));
    checks.push(Arc::new(StorageCheck::new(
        settings.disk_warn_percent,
        settings.disk_fail_percent,
    )));
    for c in ResourceCheck::all(settings.memory_min_available_mib, settings.load_per_cpu_warn) {
        checks.push(Arc::new(c));
    }
    for which in [Which::Server, Which::Admin] {
        checks.push(Arc::new(CertificateCheck::new(
            which,
            paths::PKI_DIR,
            hostname,
            settings.cert_renew_days,
        )));
    }
    checks.push(Arc::new(ConfigCheck::new(config)));
    checks
}

#[cfg(test)]
mod tests {
    use debvisor_systemd::fakes::FakeUnits;

    use super::*;
    use crate::health::Status;

    #[test]
    fn names_kinds_and_required() {
        let (_tx, rx) = watch::channel(ConfigState::default());
        let units = Arc::new(FakeUnits::new());
        let set = ["debvisor-agent.service".to_string(), "libvirtd.service".to_string()];
        let checks = node_checks(&HealthSettings::default(), units, &set, "node1", rx);
        let got: Vec<(&str, &str, bool)> = checks.iter().map(|c| (c.name(), c.kind(), c.required())).collect();
        assert_eq!(
            got,
            [
                ("service/debvisor-agent", "service", true),
                ("service/debvisor-webui", "service", true),
                ("service/libvirtd", "service", true),
                ("network/gateway", "network", false),
                ("dns", "dns", false),
                ("storage/data", "storage", true),
                ("resources/memory", "resources", false),
                ("resources/load", "resources", false),
                ("resources/disk", "resources", false),
                ("certificate/server", "certificate", true),
                ("certificate/admin", "certificate", false),
                ("config", "config", false),
            ]
        );
    }

    #[tokio::test]
    async fn config_state() {
        let (tx, rx) = watch::channel(ConfigState::default());
        let check = ConfigCheck::new(rx);
        assert_eq!(check.run(Instant::now()).await.status, Status::Pass);
        tx.send_replace(ConfigState {
            digest: "1a2b3c".into(),
            error: String::new(),
        });
        assert_eq!(
            check.run(Instant::now()).await,
            Outcome::pass("machine config 1a2b3c applied")
        );
        tx.send_replace(ConfigState {
            digest: "1a2b3c".into(),
            error: "network.vlans[0].id = 5000: must be 1 to 4094".into(),
        });
        assert_eq!(check.run(Instant::now()).await.status, Status::Fail);
    }
}
