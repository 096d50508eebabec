//! Who may use the console: users and server-side sessions in SQLite
//! ([`store`]), the admin credential the supervisor writes, argon2id
//! passwords, CSRF tokens, sign-in throttling and the per-user request
//! limit ([`ratelimit`]).
//!
//! Session tokens are 256 random bits; the browser holds the token, the
//! database only its SHA-256. Every timing rule reads a [`Clock`], so tests
//! can move time forward.

pub mod ratelimit;
pub mod store;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use rand::RngCore;

use crate::roles::Role;

/// The user the supervisor's credential creates.
pub const ADMIN_USER: &str = "admin";
/// A session ends after this long without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);
/// Failed sign-ins allowed per user name or per source address in a window.
pub const MAX_FAILURES: u32 = 5;
/// The throttling window.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// At most this many throttling windows are kept.
const MAX_THROTTLE_ENTRIES: usize = 16 * 1024;
/// Longer passwords are refused without hashing them.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Shorter new passwords are refused.
pub const MIN_PASSWORD_LEN: usize = 12;

/// A time source: monotonic for durations, wall clock for what is stored.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;

    /// The wall-clock time, milliseconds since the Unix epoch.
    fn unix_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    /// The session token (the cookie value; stored only as its hash).
    pub id: String,
    /// The signed-in user.
    pub user: String,
    /// The CSRF token every POST of this session must carry.
    pub csrf: String,
    /// The user's current role (read from the users table on each lookup).
    pub role: Role,
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
    /// The password is right; the user has this role.
    Accepted(Role),
    /// Unknown or disabled user or wrong password (deliberately not told
    /// apart).
    Rejected,
    /// The admin credential does not exist yet or cannot be used, and there
    /// is no admin user yet.
    Unavailable,
}

/// How many argon2 hashes run at once: one per CPU, at most 4. Each takes
/// its memory cost (19 MiB by default) for as long as it runs; without a
/// bound, a burst of sign-ins runs one per blocking thread, and the memory
/// they took stays with those threads (50 sign-ins left the console at
/// about 850 MB). Sign-ins beyond the bound wait their turn.
fn hashing_turn() -> impl std::future::Future<Output = Option<tokio::sync::SemaphorePermit<'static>>> {
    static TURNS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let turns = TURNS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(cpus.clamp(1, 4))
    });
    async move { turns.acquire().await.ok() }
}

/// Hashes `password` with argon2id and `params` on the blocking pool.
pub async fn hash_password(password: &str, params: Params) -> Result<String, String> {
    let password = password.to_string();
    let _turn = hashing_turn().await;
    tokio::task::spawn_blocking(move || {
        let h: PasswordHash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(h.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Checks `password` against the PHC string `hash` on the blocking pool,
/// with the parameters the hash names.
pub async fn verify_password(hash: Arc<String>, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    let password = password.to_string();
    let _turn = hashing_turn().await;
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// The admin credential: an argon2id PHC string in a file written by the
/// supervisor. When the users table has no user `admin`, sign-in creates
/// it from this file (which may appear while the console runs); after that
/// the table is what counts.
pub struct AdminCredential {
    path: PathBuf,
    /// A hash of a random password with the parameters of the last hash
    /// seen, so that unknown users cost as much as real ones.
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

    /// The hash in the file, when it exists and is a PHC string.
    pub async fn read(&self) -> Option<String> {
        let stored = match tokio::fs::read_to_string(&self.path).await {
            Ok(s) => s.trim().to_string(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the admin password hash");
                return None;
            }
        };
        match PasswordHash::new(&stored) {
            Ok(_) => Some(stored),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "the admin password hash is not a PHC string");
                None
            }
        }
    }

    /// Creates the `admin` user from the file unless it exists. False when
    /// there is no admin user and no usable credential.
    pub async fn bootstrap(&self, store: &store::Store) -> Result<bool, store::StoreError> {
        if store.user(ADMIN_USER).await?.is_some() {
            return Ok(true);
        }
        match self.read().await {
            Some(hash) => {
                store.ensure_admin(&hash).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Checks `user` and `password` against the users table (bootstrapping
    /// `admin` first when needed). Unknown and disabled users still cost
    /// one verification and get [`Verdict::Rejected`], like a wrong
    /// password.
    pub async fn verify(&self, store: &store::Store, user: &str, password: &str) -> Result<Verdict, store::StoreError> {
        let mut record = store.user(user).await?;
        if record.is_none() && user == ADMIN_USER {
            if !self.bootstrap(store).await? {
                return Ok(Verdict::Unavailable);
            }
            record = store.user(user).await?;
        }
        let usable = record.as_ref().filter(|r| !r.info.disabled);
        let hash = match usable {
            Some(r) => Arc::new(r.hash.clone()),
            None => self.dummy_for(record.as_ref().map(|r| r.hash.as_str())),
        };
        let ok = verify_password(hash, password).await;
        Ok(match usable {
            Some(r) if ok => Verdict::Accepted(r.info.role),
            _ => Verdict::Rejected,
        })
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
    async fn admin_is_created_from_the_credential_and_then_the_table_counts() {
        let dir = std::env::temp_dir().join(format!("debvisor-webui-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.argon2");
        let _ = std::fs::remove_file(&path);
        let cred = AdminCredential::new(&path);
        let store = store::Store::in_memory(clock());
        let v = |u: &'static str, p: &'static str| {
            let (cred, store) = (&cred, &store);
            async move { cred.verify(store, u, p).await.unwrap() }
        };
        assert_eq!(v("admin", "secret").await, Verdict::Unavailable);
        std::fs::write(&path, "not a hash").unwrap();
        assert_eq!(v("admin", "secret").await, Verdict::Unavailable);
        std::fs::write(&path, format!("{}\n", cheap_hash("secret"))).unwrap();
        assert_eq!(v("admin", "secret").await, Verdict::Accepted(Role::Admin));
        assert_eq!(v("admin", "Secret").await, Verdict::Rejected);
        assert_eq!(v("root", "secret").await, Verdict::Rejected);
        // Once created, the table counts, not the file.
        std::fs::write(&path, cheap_hash("other")).unwrap();
        assert_eq!(v("admin", "secret").await, Verdict::Accepted(Role::Admin));
        let bob: store::UserName = "bob".parse().unwrap();
        store
            .create_user(&bob, Role::Viewer, &cheap_hash("bobs password"))
            .await
            .unwrap();
        assert_eq!(v("bob", "bobs password").await, Verdict::Accepted(Role::Viewer));
        store.set_disabled("bob", true).await.unwrap();
        assert_eq!(v("bob", "bobs password").await, Verdict::Rejected, "disabled");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let params = Params::new(256, 1, 1, None).unwrap();
        let h = hash_password("long enough password", params).await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        let h = Arc::new(h);
        assert!(verify_password(h.clone(), "long enough password").await);
        assert!(!verify_password(h.clone(), "long enough passwore").await);
        assert!(!verify_password(h, &"x".repeat(MAX_PASSWORD_LEN + 1)).await);
        assert!(!verify_password(Arc::new("garbage".into()), "x").await);
    }
}
