//! One-shot messages for the next page a session sees ("nginx.service
//! restarted."), after a POST that redirects.
//!
//! They live in memory in [`crate::AppState`], keyed by the hash of the
//! session's token (the token itself is never kept, as in the session
//! store). A message lasts at most [`FLASH_TTL`] and ends with its
//! session: sign-out forgets it, and a session that expired can no longer
//! present its token to take it. At most [`MAX_FLASHES`] are kept; beyond
//! that the oldest goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Clock;
use crate::auth::Session;
use crate::auth::store::token_hash;

/// How long a message waits for the page it is meant for.
pub const FLASH_TTL: Duration = Duration::from_secs(120);
/// The most messages kept at once (one per session at most).
pub const MAX_FLASHES: usize = 1024;

/// A message for the next page the session sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Flash {
    /// "ok" or "fail": the message's colour.
    pub level: &'static str,
    /// What happened.
    pub text: String,
}

/// The messages waiting, by session token hash.
pub struct Flashes {
    clock: Arc<dyn Clock>,
    waiting: Mutex<HashMap<String, (Instant, Flash)>>,
}

impl Flashes {
    /// No message yet; `clock` dates them.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Flashes {
            clock,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn fresh(&self, at: Instant) -> bool {
        self.clock.now().saturating_duration_since(at) < FLASH_TTL
    }

    /// Leaves `flash` for `session`'s next page (replacing one still waiting).
    pub fn put(&self, session: &Session, flash: Flash) {
        let now = self.clock.now();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|_, (at, _)| now.saturating_duration_since(*at) < FLASH_TTL);
        let key = token_hash(&session.id);
        if waiting.len() >= MAX_FLASHES && !waiting.contains_key(&key) {
            let oldest = waiting.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                waiting.remove(&k);
            }
        }
        waiting.insert(key, (now, flash));
    }

    /// The message waiting for `session`, once.
    pub fn take(&self, session: &Session) -> Option<Flash> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting
            .remove(&token_hash(&session.id))
            .filter(|(at, _)| self.fresh(*at))
            .map(|(_, f)| f)
    }

    /// Drops the message of a session that ends.
    pub fn forget(&self, session: &Session) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.remove(&token_hash(&session.id));
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::ManualClock;
    use crate::roles::Role;

    fn session(id: &str) -> Session {
        Session {
            id: id.to_string(),
            user: "admin".into(),
            csrf: "c".into(),
            role: Role::Admin,
        }
    }

    fn flash(text: &str) -> Flash {
        Flash {
            level: "ok",
            text: text.into(),
        }
    }

    #[test]
    fn a_message_is_taken_once_by_its_session_only() {
        let f = Flashes::new(Arc::new(ManualClock::new()));
        f.put(&session("a"), flash("done"));
        assert_eq!(f.take(&session("b")), None);
        assert_eq!(f.take(&session("a")), Some(flash("done")));
        assert_eq!(f.take(&session("a")), None);
        let keys: Vec<String> = f.waiting.lock().unwrap().keys().cloned().collect();
        assert!(keys.iter().all(|k| k != "a"), "a raw token is a key: {keys:?}");
    }

    #[test]
    fn messages_expire_end_with_the_session_and_are_bounded() {
        let clock = Arc::new(ManualClock::new());
        let f = Flashes::new(clock.clone());
        f.put(&session("a"), flash("old"));
        clock.advance(FLASH_TTL);
        assert_eq!(f.take(&session("a")), None, "an expired message was shown");
        f.put(&session("a"), flash("x"));
        f.forget(&session("a"));
        assert!(f.is_empty());
        for i in 0..MAX_FLASHES + 10 {
            clock.advance(Duration::from_millis(1));
            f.put(&session(&format!("s{i}")), flash(&i.to_string()));
        }
        assert_eq!(f.len(), MAX_FLASHES);
        assert_eq!(f.take(&session("s0")), None, "the oldest was kept beyond the bound");
        let last = MAX_FLASHES + 9;
        assert_eq!(f.take(&session(&format!("s{last}"))), Some(flash(&last.to_string())));
    }
}
