//! `service/<unit>` checks: the unit is active and, for the agent and the
//! console, their own health endpoint answers.

use std::sync::Arc;

use debvisor_api::validate::UnitName;
use debvisor_systemd::{Units, UnitsError};
use tokio::time::Instant;

use super::{Check, Outcome};
use crate::probe;

/// The agent's unit.
pub const AGENT_UNIT: &str = "debvisor-agent.service";
/// The console's unit.
pub const WEBUI_UNIT: &str = "debvisor-webui.service";

/// What, besides the unit being active, a service check asks.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Nothing: the unit being active is enough.
    None,
    /// gRPC health SERVING on this Unix socket.
    GrpcHealth(String),
    /// HTTPS `GET /healthz` answering 200 on 127.0.0.1:port, pinned to the
    /// first certificate in this PEM file (read at each run: it may be
    /// renewed).
    Https {
        /// The port.
        port: u16,
        /// The server certificate file.
        cert: String,
    },
}

/// A required service check with remediation on its unit.
pub struct ServiceCheck {
    name: String,
    unit: String,
    endpoint: Endpoint,
    units: Arc<dyn Units>,
}

impl ServiceCheck {
    /// `service/<unit without .service>` for `unit`.
    pub fn new(unit: &str, endpoint: Endpoint, units: Arc<dyn Units>) -> Self {
        Self {
            name: format!("service/{}", unit.strip_suffix(".service").unwrap_or(unit)),
            unit: unit.to_string(),
            endpoint,
            units,
        }
    }

    /// The agent: active and gRPC health SERVING on `socket`.
    pub fn agent(units: Arc<dyn Units>, socket: &str) -> Self {
        Self::new(AGENT_UNIT, Endpoint::GrpcHealth(socket.to_string()), units)
    }

    /// The console: active and `/healthz` answering 200 on `port`.
    pub fn webui(units: Arc<dyn Units>, port: u16, cert: &str) -> Self {
        let endpoint = Endpoint::Https {
            port,
            cert: cert.to_string(),
        };
        Self::new(WEBUI_UNIT, endpoint, units)
    }
}

/// The unit's active state, or a failure naming why it cannot be read.
pub async fn unit_state(units: &dyn Units, unit: &str) -> Result<String, String> {
    let name = UnitName::try_from(unit).map_err(|e| format!("invalid unit name {unit:?}: {e}"))?;
    match units.get(&name).await {
        Ok(d) if d.load_state == "not-found" => Err(format!("{unit} is not installed")),
        Ok(d) => Ok(d.active_state),
        Err(UnitsError::NotFound { .. }) => Err(format!("{unit} is not installed")),
        Err(e) => Err(format!("cannot read {unit}'s state: {e}")),
    }
}

#[async_trait::async_trait]
impl Check for ServiceCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "service"
    }
    fn required(&self) -> bool {
        true
    }
    fn unit(&self) -> Option<&str> {
        Some(&self.unit)
    }
    async fn run(&self, _deadline: Instant) -> Outcome {
        match unit_state(self.units.as_ref(), &self.unit).await {
            Ok(s) if s == "active" => {}
            Ok(s) => return Outcome::fail(format!("{} is {s}", self.unit)),
            Err(e) => return Outcome::fail(e),
        }
        let answered = match &self.endpoint {
            Endpoint::None => return Outcome::pass(format!("{} is active", self.unit)).with_unit_active(),
            Endpoint::GrpcHealth(socket) => probe::agent_health(socket)
                .await
                .map(|()| format!("{} is active and gRPC health answers SERVING", self.unit)),
            Endpoint::Https { port, cert } => match probe::pin_of(cert) {
                Ok(pin) => probe::console(*port, pin)
                    .await
                    .map(|()| format!("{} is active and /healthz answers 200", self.unit)),
                Err(e) => Err(e),
            },
        };
        match answered {
            Ok(m) => Outcome::pass(m),
            Err(e) => Outcome::fail(format!("{} is active but its health endpoint fails: {e:#}", self.unit)),
        }
        .with_unit_active()
    }
}

#[cfg(test)]
mod tests {
    use debvisor_systemd::fakes::FakeUnits;

    use super::*;

    #[tokio::test]
    async fn unit_state_decides_first() {
        let units = Arc::new(FakeUnits::new());
        let deadline = Instant::now();
        let cron = ServiceCheck::new("cron.service", Endpoint::None, units.clone());
        assert_eq!(cron.name(), "service/cron");
        assert_eq!(
            cron.run(deadline).await,
            Outcome::pass("cron.service is active").with_unit_active()
        );
        let zfs = ServiceCheck::new("zfs-import-cache.service", Endpoint::None, units.clone());
        assert_eq!(
            zfs.run(deadline).await,
            Outcome::fail("zfs-import-cache.service is failed")
        );
        let missing = ServiceCheck::new("nope.service", Endpoint::None, units.clone());
        assert_eq!(
            missing.run(deadline).await,
            Outcome::fail("nope.service is not installed")
        );
        // The agent's unit is active in the fake but nothing listens.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let agent = ServiceCheck::agent(units, socket.to_str().unwrap());
        let out = agent.run(deadline).await;
        assert!(
            out.message
                .starts_with("debvisor-agent.service is active but its health endpoint fails"),
            "{out:?}"
        );
    }
}
