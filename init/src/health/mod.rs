//! Health checks: the [`Check`] trait, the checks of a DebVisor node, the
//! [`Health`] state they publish (a `debvisor.health.v1.NodeHealth` behind a
//! watch channel), the scheduler that runs them, remediation and the
//! `NodeHealthService` server.

pub mod certificate;
pub mod checks;
mod clock;
pub mod engine;
pub mod metrics;
pub mod network;
pub mod remediation;
pub mod server;
pub mod service;
pub mod settings;
pub mod system;

use debvisor_api::health::v1::CheckStatus;
use tokio::time::Instant;

pub use engine::{CheckRun, ConfigState, Health, run_once, spawn_scheduler};
pub use settings::{HealthSettings, Settings, Webhook};

/// The outcome of one run of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Passed.
    Pass,
    /// Passed, but close to a limit.
    Warn,
    /// Failed (or did not finish in time).
    Fail,
}

impl Status {
    /// The protobuf value.
    pub fn to_proto(self) -> CheckStatus {
        match self {
            Status::Pass => CheckStatus::Pass,
            Status::Warn => CheckStatus::Warn,
            Status::Fail => CheckStatus::Fail,
        }
    }
}

/// What one run of a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Pass, warn or fail.
    pub status: Status,
    /// What was found, for people.
    pub message: String,
    /// Whether the check saw its unit active when it ran. Remediation
    /// restarts a unit only for failures it had while active: a unit that is
    /// still activating (or stopped) is the supervisor's, not a health
    /// failure to act on.
    pub unit_active: bool,
}

impl Outcome {
    /// A pass.
    pub fn pass(message: impl Into<String>) -> Self {
        Self {
            status: Status::Pass,
            message: message.into(),
            unit_active: false,
        }
    }
    /// A warning.
    pub fn warn(message: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            message: message.into(),
            unit_active: false,
        }
    }
    /// The same outcome, seen while the check's unit was active.
    #[must_use]
    pub fn with_unit_active(mut self) -> Self {
        self.unit_active = true;
        self
    }
    /// A failure.
    pub fn fail(message: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            message: message.into(),
            unit_active: false,
        }
    }
}

/// A health check.
#[async_trait::async_trait]
pub trait Check: Send + Sync {
    /// Unique name, e.g. `service/debvisor-agent`.
    fn name(&self) -> &str;
    /// `service`, `network`, `dns`, `storage`, `resources`, `certificate` or
    /// `config`.
    fn kind(&self) -> &'static str;
    /// Whether the boot gate waits for it and `debvisor-init check` exits
    /// non-zero when it fails.
    fn required(&self) -> bool;
    /// The unit remediation restarts when the check fails.
    fn unit(&self) -> Option<&str> {
        None
    }
    /// Runs once. The scheduler counts the run as failed at `deadline`; a
    /// check may use it to bound its own waits.
    async fn run(&self, deadline: Instant) -> Outcome;
}
