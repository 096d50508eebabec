//! [`AppState`]: what every handler shares (the agent, the credential, the
//! console database, throttling, rate limits, flash messages, the header's
//! host name).

use super::*;
use crate::flash::Flashes;

/// Shared state of the console: the agent, the credential, sessions and
/// throttling.
#[derive(Clone)]
pub struct AppState(pub(super) Arc<Inner>);

pub(super) struct Inner {
    pub(super) node: Arc<dyn NodeSource>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) store: Store,
    pub(super) throttle: Throttle,
    pub(super) limiter: RateLimiter,
    pub(super) credential: AdminCredential,
    /// argon2 parameters for new passwords (the defaults unless set).
    pub(super) password_params: std::sync::OnceLock<Params>,
    /// While this file exists, `/healthz` answers 503 (fault injection for
    /// the supervisor's tests).
    pub(super) healthz_fault: std::sync::OnceLock<PathBuf>,
    /// How often the live VM list samples CPU use (the default unless set).
    pub(super) vm_sample: std::sync::OnceLock<Duration>,
    /// When the agent was last asked, and what it said the last time it
    /// answered.
    last_seen: Mutex<Option<(Instant, Option<HeaderFacts>)>>,
    /// One-shot messages for a session's next page.
    pub(super) flashes: Flashes,
}

/// What the page header needs from the agent.
#[derive(Debug, Clone)]
struct HeaderFacts {
    hostname: String,
    simulated: bool,
}

impl AppState {
    /// State reading the admin hash from `admin_hash`, with the real clock
    /// and a console database in memory (see [`AppState::with_store`]).
    pub fn new(node: Arc<dyn NodeSource>, admin_hash: impl Into<PathBuf>) -> Self {
        Self::with_clock(node, admin_hash, Arc::new(SystemClock))
    }

    /// Like [`AppState::new`] with a chosen clock (tests move time).
    pub fn with_clock(node: Arc<dyn NodeSource>, admin_hash: impl Into<PathBuf>, clock: Arc<dyn Clock>) -> Self {
        let store = Store::in_memory(clock.clone());
        Self::with_store(node, admin_hash, clock, store)
    }

    /// State with the console database `store` (see [`Store::open`]);
    /// `clock` should be the store's.
    pub fn with_store(
        node: Arc<dyn NodeSource>,
        admin_hash: impl Into<PathBuf>,
        clock: Arc<dyn Clock>,
        store: Store,
    ) -> Self {
        AppState(Arc::new(Inner {
            flashes: Flashes::new(clock.clone()),
            node,
            store,
            throttle: Throttle::new(clock.clone()),
            limiter: RateLimiter::new(clock.clone()),
            credential: AdminCredential::new(admin_hash),
            password_params: std::sync::OnceLock::new(),
            clock,
            healthz_fault: std::sync::OnceLock::new(),
            vm_sample: std::sync::OnceLock::new(),
            last_seen: Mutex::new(None),
        }))
    }

    /// Makes `/healthz` answer 503 while `file` exists.
    /// Set once; a second call keeps the first file.
    pub fn with_healthz_fault_file(self, file: impl Into<PathBuf>) -> Self {
        let _ = self.0.healthz_fault.set(file.into());
        self
    }

    /// Samples the live VM list's CPU use every `every` instead of
    /// [`crate::pages::vms::CPU_SAMPLE`] (tests make it long, so that only
    /// events redraw the list). Set once.
    pub fn with_vm_sample(self, every: Duration) -> Self {
        let _ = self.0.vm_sample.set(every);
        self
    }

    /// How often the live VM list samples CPU use.
    pub fn vm_sample(&self) -> Duration {
        self.0.vm_sample.get().copied().unwrap_or(crate::pages::vms::CPU_SAMPLE)
    }

    /// Hashes new passwords with `params` instead of argon2's defaults
    /// (tests use small ones). Set once; a second call keeps the first.
    pub fn with_password_params(self, params: Params) -> Self {
        let _ = self.0.password_params.set(params);
        self
    }

    /// The argon2 parameters for new passwords.
    pub fn password_params(&self) -> Params {
        self.0.password_params.get().cloned().unwrap_or_default()
    }

    /// The console database: users and sessions.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The messages waiting for a session's next page.
    pub fn flashes(&self) -> &Flashes {
        &self.0.flashes
    }

    /// The supervisor's admin credential.
    pub fn credential(&self) -> &AdminCredential {
        &self.0.credential
    }

    /// Appends a record to the agent's audit log for console user `actor`
    /// (recorded as `console:ACTOR`): `action` (e.g. `console.user.create`)
    /// on `target`, with `result` (`Err` carries the reason shown to the
    /// user). Fails when the agent cannot be reached or refuses.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        result: Result<(), &str>,
    ) -> Result<(), AgentError> {
        let request = RecordRequest {
            action: action.to_string(),
            target: target.to_string(),
            result: if result.is_ok() { "ok" } else { "error" }.to_string(),
            error: result.err().unwrap_or_default().to_string(),
        };
        bounded("audit record", async {
            let channel = self.0.node.channel().await?;
            AuditServiceClient::new(channel)
                .record(on_behalf_of(request, Some(actor)))
                .await?;
            Ok(())
        })
        .await
    }
    /// The agent, as the pages see it.
    pub fn node(&self) -> &Arc<dyn NodeSource> {
        &self.0.node
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.0.clock
    }

    fn remember(&self, answer: Option<HeaderFacts>) {
        let mut last = self.0.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        let keep = last.as_ref().and_then(|(_, a)| a.clone());
        *last = Some((self.0.clock.now(), answer.or(keep)));
    }

    /// Asks the agent for the node's status, for `user` (None: the
    /// console's own request), and remembers the header facts.
    pub(super) async fn status(&self, user: Option<&str>) -> Result<GetStatusResponse, AgentError> {
        let result = self.0.node.status(user).await;
        self.remember(result.as_ref().ok().map(|s| HeaderFacts {
            hostname: s.hostname.clone(),
            simulated: s.simulated,
        }));
        result
    }

    /// The page chrome, asking the agent only when the last answer is stale.
    pub async fn chrome(&self, nav: Option<Nav>) -> Chrome {
        let fresh = {
            let last = self.0.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            match last.as_ref() {
                Some((at, answer)) if self.0.clock.now().saturating_duration_since(*at) < CHROME_TTL => {
                    Some(answer.clone())
                }
                _ => None,
            }
        };
        let answer = match fresh {
            Some(answer) => answer,
            None => {
                let _ = tokio::time::timeout(CHROME_TIMEOUT, self.status(None)).await;
                let last = self.0.last_seen.lock().unwrap_or_else(|p| p.into_inner());
                last.as_ref().and_then(|(_, a)| a.clone())
            }
        };
        Chrome {
            hostname: answer.as_ref().map(|f| f.hostname.clone()).filter(|h| !h.is_empty()),
            simulated: answer.is_some_and(|f| f.simulated),
            nav,
        }
    }
}
