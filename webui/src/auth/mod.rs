//! Who may use the console: the admin credential, server-side sessions,
//! CSRF tokens and login throttling.
//!
//! Sessions live in memory for now (a restart signs everybody out). Their
//! ids are 256 random bits; the browser only ever holds the id. Every timing
//! rule reads a [`Clock`], so tests can move time forward.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use rand::RngCore;

use crate::roles::Role;

/// The only user of this version of the console.
pub const ADMIN_USER: &str = "admin";
/// A session ends after this long without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);
/// Failed sign-ins allowed per user name or per source address in a window.
pub const MAX_FAILURES: u32 = 5;
/// The throttling window.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// At most this many sessions are kept; the least recently used goes first.
const MAX_SESSIONS: usize = 1024;
/// At most this many throttling windows are kept.
const MAX_THROTTLE_ENTRIES: usize = 16 * 1024;
/// Longer passwords are refused without hashing them.
const MAX_PASSWORD_LEN: usize = 1024;

/// A monotonic time source.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: every update is a
    // single insert or remove.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 256 random bits from the thread-local CSPRNG, as 64 hex digits.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Compares two secrets in time that depends only on their lengths.
pub fn tokens_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.is_empty() || a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A signed-in browser, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session id (the cookie value).
    pub id: String,
    /// The signed-in user.
    pub user: String,
    /// The CSRF token every POST of this session must carry.
    pub csrf: String,
    /// The user's role when the session started.
    pub role: Role,
}

#[derive(Debug)]
struct SessionEntry {
    user: String,
    csrf: String,
    role: Role,
    created: Instant,
    last_seen: Instant,
}

impl SessionEntry {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_seen) >= IDLE_TIMEOUT
            || now.saturating_duration_since(self.created) >= ABSOLUTE_TIMEOUT
    }
}

/// Server-side sessions in memory.
pub struct SessionStore {
    clock: Arc<dyn Clock>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
}

impl SessionStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session for `user` with `role`, fresh id and CSRF token.
    pub fn create(&self, user: &str, role: Role) -> Session {
        let now = self.clock.now();
        let mut map = lock(&self.sessions);
        map.retain(|_, s| !s.expired(now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let session = Session {
            id: random_token(),
            user: user.to_string(),
            csrf: random_token(),
            role,
        };
        map.insert(
            session.id.clone(),
            SessionEntry {
                user: session.user.clone(),
                csrf: session.csrf.clone(),
                role,
                created: now,
                last_seen: now,
            },
        );
        session
    }

    /// Looks a session up and marks it used. Expired sessions are removed
    /// and reported as absent.
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = self.clock.now();
        let mut map = lock(&self.sessions);
        let entry = map.get_mut(id)?;
        if entry.expired(now) {
            map.remove(id);
            return None;
        }
        entry.last_seen = now;
        Some(Session {
            id: id.to_string(),
            user: entry.user.clone(),
            csrf: entry.csrf.clone(),
            role: entry.role,
        })
    }

    /// Ends a session (sign-out). Unknown ids are ignored.
    pub fn remove(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }

    /// The number of sessions held, expired ones included until swept.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What failed sign-ins are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// A user name, as typed (lower-cased, trimmed, at most 64 characters).
    User(String),
    /// The client's address.
    Ip(IpAddr),
}

impl ThrottleKey {
    /// The key for a typed user name.
    pub fn user(name: &str) -> Self {
        ThrottleKey::User(name.trim().to_lowercase().chars().take(64).collect())
    }

    /// The key for a client address; IPv4-mapped IPv6 counts as IPv4.
    pub fn ip(ip: IpAddr) -> Self {
        ThrottleKey::Ip(ip.to_canonical())
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Counts failed sign-ins per key in fixed windows: after
/// [`MAX_FAILURES`] failures, further attempts are refused until the window
/// that began with the first failure ends.
pub struct Throttle {
    clock: Arc<dyn Clock>,
    windows: Mutex<HashMap<ThrottleKey, Window>>,
}

impl Throttle {
    /// An empty throttle reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` when any key is blocked, with how long until the last of
    /// them is allowed again.
    pub fn check(&self, keys: &[ThrottleKey]) -> Result<(), Duration> {
        let now = self.clock.now();
        let map = lock(&self.windows);
        let wait = keys
            .iter()
            .filter_map(|k| map.get(k))
            .filter(|w| w.failures >= MAX_FAILURES)
            .map(|w| (w.start + THROTTLE_WINDOW).saturating_duration_since(now))
            .filter(|d| !d.is_zero())
            .max();
        match wait {
            Some(d) => Err(d),
            None => Ok(()),
        }
    }

    /// Counts one failure against every key.
    pub fn record_failure(&self, keys: &[ThrottleKey]) {
        let now = self.clock.now();
        let mut map = lock(&self.windows);
        if map.len() >= MAX_THROTTLE_ENTRIES {
            map.retain(|_, w| now.saturating_duration_since(w.start) < THROTTLE_WINDOW);
            if map.len() >= MAX_THROTTLE_ENTRIES
                && let Some(oldest) = map.iter().min_by_key(|(_, w)| w.start).map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        for key in keys {
            let w = map.entry(key.clone()).or_insert(Window {
                start: now,
                failures: 0,
            });
            if now.saturating_duration_since(w.start) >= THROTTLE_WINDOW {
                *w = Window {
                    start: now,
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
        }
    }

    /// Forgets the failures of every key (after a successful sign-in).
    pub fn reset(&self, keys: &[ThrottleKey]) {
        let mut map = lock(&self.windows);
        for key in keys {
            map.remove(key);
        }
    }
}

/// The result of checking a user name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right.
    Accepted,
    /// Unknown user or wrong password (deliberately not told apart).
    Rejected,
    /// The admin credential does not exist yet or cannot be used.
    Unavailable,
}

/// The admin credential: an argon2id PHC string in a file written by the
/// supervisor. The file is read on every attempt, since it may appear (or
/// change) while the console runs.
pub struct AdminCredential {
    path: PathBuf,
    /// A hash of a random password with the parameters of the last admin
    /// hash seen, so that unknown users cost as much as the admin.
    dummy: Mutex<Option<(String, Arc<String>)>>,
}

impl AdminCredential {
    /// The credential stored at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            dummy: Mutex::new(None),
        }
    }

    /// Checks `user` and `password`. The argon2 work runs on the blocking
    /// pool. An unknown user still costs one verification.
    pub async fn verify(&self, user: &str, password: &str) -> Verdict {
        let stored = match tokio::fs::read_to_string(&self.path).await {
            Ok(s) => Some(s.trim().to_string()),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the admin password hash");
                None
            }
        };
        let stored = stored.filter(|s| match PasswordHash::new(s) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "the admin password hash is not a PHC string");
                false
            }
        });
        let is_admin = user == ADMIN_USER;
        if is_admin && stored.is_none() {
            return Verdict::Unavailable;
        }
        let hash = match (&stored, is_admin) {
            (Some(s), true) => Arc::new(s.clone()),
            _ => self.dummy_for(stored.as_deref()),
        };
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            password.len() <= MAX_PASSWORD_LEN
                && Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
        })
        .await
        .unwrap_or(false);
        if ok && is_admin {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        }
    }

    /// A dummy hash with the parameters of `stored` (or the defaults).
    fn dummy_for(&self, stored: Option<&str>) -> Arc<String> {
        let params = stored
            .and_then(|s| PasswordHash::new(s).ok())
            .and_then(|h| Params::try_from(&h).ok())
            .unwrap_or_default();
        let key = format!("{params:?}");
        let mut cached = lock(&self.dummy);
        if let Some((k, hash)) = cached.as_ref()
            && *k == key
        {
            return hash.clone();
        }
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let hash: Option<PasswordHash> = hasher.hash_password(random_token().as_bytes()).ok();
        let hash = Arc::new(hash.map(|h| h.to_string()).unwrap_or_default());
        *cached = Some((key, hash.clone()));
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::ManualClock;

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new())
    }

    #[test]
    fn tokens_are_random_256_bit_hex() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn csrf_comparison() {
        let t = random_token();
        assert!(tokens_match(&t, &t.clone()));
        assert!(!tokens_match(&t, &random_token()));
        assert!(!tokens_match(&t, &t[..63]));
        assert!(!tokens_match("", ""));
    }

    #[test]
    fn sessions_expire_after_idle_time() {
        let c = clock();
        let store = SessionStore::new(c.clone());
        let s = store.create("admin", Role::Admin);
        c.advance(IDLE_TIMEOUT - Duration::from_secs(1));
        assert_eq!(store.touch(&s.id).as_ref(), Some(&s));
        // Touching renewed it: another almost-idle period is fine.
        c.advance(IDLE_TIMEOUT - Duration::from_secs(1));
        assert!(store.touch(&s.id).is_some());
        c.advance(IDLE_TIMEOUT);
        assert!(store.touch(&s.id).is_none());
        assert!(store.is_empty(), "expired session is dropped");
    }

    #[test]
    fn sessions_expire_after_absolute_limit_even_when_busy() {
        let c = clock();
        let store = SessionStore::new(c.clone());
        let s = store.create("admin", Role::Admin);
        let step = Duration::from_secs(10 * 60);
        let mut elapsed = Duration::ZERO;
        while elapsed + step < ABSOLUTE_TIMEOUT {
            c.advance(step);
            elapsed += step;
            assert!(store.touch(&s.id).is_some(), "alive at {elapsed:?}");
        }
        c.advance(step);
        assert!(store.touch(&s.id).is_none());
    }

    #[test]
    fn sessions_are_distinct_and_removable() {
        let store = SessionStore::new(clock());
        let a = store.create("admin", Role::Admin);
        let b = store.create("admin", Role::Admin);
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, b.csrf);
        store.remove(&a.id);
        assert!(store.touch(&a.id).is_none());
        assert!(store.touch(&b.id).is_some());
        assert!(store.touch("not-a-session").is_none());
    }

    #[test]
    fn throttle_blocks_after_five_failures_for_the_rest_of_the_window() {
        let c = clock();
        let t = Throttle::new(c.clone());
        let keys = [
            ThrottleKey::user("Admin "),
            ThrottleKey::ip("192.0.2.1".parse().unwrap()),
        ];
        for _ in 0..MAX_FAILURES {
            assert!(t.check(&keys).is_ok());
            t.record_failure(&keys);
            c.advance(Duration::from_secs(60));
        }
        let wait = t.check(&keys).unwrap_err();
        assert_eq!(wait, THROTTLE_WINDOW - Duration::from_secs(5 * 60));
        // Either key alone blocks.
        assert!(t.check(&[ThrottleKey::user("admin")]).is_err());
        assert!(
            t.check(&[ThrottleKey::ip("::ffff:192.0.2.1".parse().unwrap())])
                .is_err()
        );
        assert!(t.check(&[ThrottleKey::user("other")]).is_ok());
        c.advance(wait);
        assert!(t.check(&keys).is_ok(), "a new window starts");
        t.record_failure(&keys);
        assert!(t.check(&keys).is_ok(), "the count restarted");
    }

    #[test]
    fn throttle_forgets_old_failures_and_resets_on_success() {
        let c = clock();
        let t = Throttle::new(c.clone());
        let keys = [ThrottleKey::user("admin")];
        for _ in 0..MAX_FAILURES - 1 {
            t.record_failure(&keys);
        }
        c.advance(THROTTLE_WINDOW);
        t.record_failure(&keys);
        assert!(t.check(&keys).is_ok(), "earlier failures fell out of the window");
        for _ in 0..MAX_FAILURES {
            t.record_failure(&keys);
        }
        assert!(t.check(&keys).is_err());
        t.reset(&keys);
        assert!(t.check(&keys).is_ok());
    }

    fn cheap_hash(password: &str) -> String {
        let params = Params::new(256, 1, 1, None).unwrap();
        let h: PasswordHash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .unwrap();
        h.to_string()
    }

    #[tokio::test]
    async fn admin_credential_is_reread_and_checked() {
        let dir = std::env::temp_dir().join(format!("debvisor-webui-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.argon2");
        let _ = std::fs::remove_file(&path);
        let cred = AdminCredential::new(&path);
        assert_eq!(cred.verify("admin", "secret").await, Verdict::Unavailable);
        std::fs::write(&path, format!("{}\n", cheap_hash("secret"))).unwrap();
        assert_eq!(cred.verify("admin", "secret").await, Verdict::Accepted);
        assert_eq!(cred.verify("admin", "Secret").await, Verdict::Rejected);
        assert_eq!(cred.verify("root", "secret").await, Verdict::Rejected);
        std::fs::write(&path, "not a hash").unwrap();
        assert_eq!(cred.verify("admin", "secret").await, Verdict::Unavailable);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
