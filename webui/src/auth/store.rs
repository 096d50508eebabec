//! The console database (SQLite, WAL): users and server-side sessions.
//!
//! - `users`: name, role, argon2id hash, disabled flag, when created and
//!   when the password was last set.
//! - `sessions`: keyed by the SHA-256 of the cookie token (the token itself
//!   is never stored), with the user, the CSRF token, the role at sign-in
//!   and when it was created and last used.
//!
//! Times come from the [`Clock`] and are stored as Unix milliseconds. A
//! session lookup ([`Store::touch`]) enforces the idle timeout and the
//! absolute limit, and reads the user's current role and state from
//! `users`: a role change applies to the next request, and a disabled or
//! deleted user's sessions end at once. No change may leave the node
//! without an enabled admin ([`StoreError::LastAdmin`]); each such change is
//! one statement, so two admins cannot race past the check.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{ABSOLUTE_TIMEOUT, Clock, IDLE_TIMEOUT, Session, random_token};
use crate::roles::Role;

/// At most this many sessions are kept; the least recently used goes first.
const MAX_SESSIONS: i64 = 1024;
/// `last_seen` is written at most this often per session, so that a busy
/// page does not write on every request.
const TOUCH_EVERY_MS: i64 = 1000;
/// How long a statement waits for another connection's write.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    password_changed_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    user TEXT NOT NULL,
    csrf TEXT NOT NULL,
    role TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user);
";

/// Why the store failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error(
        "Cannot open the console database {db} (its directory must exist and be writable: the unit's \
         StateDirectory= makes it; or choose another file with --db)"
    )]
    Open {
        /// Its path.
        db: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A statement failed.
    #[error("The console database failed to {op}")]
    Database {
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A user with that name exists already.
    #[error("A user named {0} exists already")]
    Exists(String),
    /// No user has that name.
    #[error("There is no user named {0}")]
    NotFound(String),
    /// The change would leave no enabled admin.
    #[error("{0} is the last enabled admin: make another user an admin first")]
    LastAdmin(String),
}

/// True for the row of the last enabled admin (in statements whose `?1` is
/// the user's name).
macro_rules! last_enabled_admin {
    () => {
        "(role = 'admin' AND disabled = 0 AND
          (SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0 AND name <> ?1) = 0)"
    };
}

fn db_err(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { op, source }
}

/// A valid user name: 1 to 32 characters of `[a-z0-9_-]`, starting with a
/// letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserName(String);

impl UserName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UserName {
    type Err = String;

    /// Checks a name; the error is a sentence for the form.
    fn from_str(s: &str) -> Result<Self, String> {
        let shown: String = s.chars().take(40).collect();
        if s.is_empty() {
            return Err("Enter a user name.".into());
        }
        if s.chars().count() > 32 {
            return Err(format!("\"{shown}…\" is longer than 32 characters."));
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(format!("\"{shown}\" must start with a lowercase letter (a-z)."));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "\"{shown}\" contains {c:?}: use only lowercase letters, digits, '-' and '_'."
            ));
        }
        Ok(UserName(s.to_string()))
    }
}

/// A user as listed (without the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// True when the user may not sign in.
    pub disabled: bool,
    /// When the user was created, Unix milliseconds.
    pub created_unix_ms: i64,
    /// When the password was last set, Unix milliseconds.
    pub password_changed_unix_ms: i64,
}

/// A user with the password hash, for sign-in.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// What is listed.
    pub info: UserInfo,
    /// The argon2id PHC string.
    pub hash: String,
}

/// The SHA-256 of a session token, hex: what the sessions table is keyed by.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn role_of(s: &str) -> Role {
    // Only `Role::as_str` values are written; anything else (a hand-edited
    // database) gets the least power.
    s.parse().unwrap_or(Role::Viewer)
}

/// Users and sessions in SQLite. Cloning shares the pool.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    ready: Arc<tokio::sync::OnceCell<()>>,
    idle: Duration,
}

impl Store {
    /// Opens (creating when missing) the database at `path` in WAL mode and
    /// creates its tables. The directory must exist (systemd's
    /// `StateDirectory=` makes it).
    pub async fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let db = path.display().to_string();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { db: db.clone(), source })?;
        let store = Store {
            pool,
            clock,
            ready: Arc::new(tokio::sync::OnceCell::new()),
            idle: IDLE_TIMEOUT,
        };
        store.db().await.map_err(|e| match e {
            StoreError::Database { source, .. } => StoreError::Open { db, source },
            other => other,
        })?;
        Ok(store)
    }

    /// A database in memory, gone with the last clone; created on first use,
    /// so this needs no runtime (tests, and consoles started without
    /// `--db`).
    pub fn in_memory(clock: Arc<dyn Clock>) -> Self {
        // Every connection to `:memory:` is a database of its own: keep
        // exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(SqliteConnectOptions::new().in_memory(true).foreign_keys(true));
        Store {
            pool,
            clock,
            ready: Arc::new(tokio::sync::OnceCell::new()),
            idle: IDLE_TIMEOUT,
        }
    }

    /// Ends sessions after `idle` without use instead of [`IDLE_TIMEOUT`]
    /// (the console's `--idle-timeout`); at most the absolute limit.
    #[must_use]
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle.min(ABSOLUTE_TIMEOUT);
        self
    }

    /// How long a session may go unused.
    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// The pool, with the schema in place.
    async fn db(&self) -> Result<&SqlitePool, StoreError> {
        self.ready
            .get_or_try_init(|| async {
                sqlx::raw_sql(SCHEMA)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(db_err("create its tables"))
            })
            .await?;
        Ok(&self.pool)
    }

    fn now_ms(&self) -> i64 {
        self.clock.unix_ms()
    }

    // ----- users -----

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, StoreError> {
        let rows = sqlx::query("SELECT name, role, disabled, created_ms, password_changed_ms FROM users ORDER BY name")
            .fetch_all(self.db().await?)
            .await
            .map_err(db_err("list the users"))?;
        Ok(rows.iter().map(info_of).collect())
    }

    /// One user with the hash, if it exists.
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT name, role, disabled, created_ms, password_changed_ms, hash FROM users WHERE name = ?1",
        )
        .bind(name)
        .fetch_optional(self.db().await?)
        .await
        .map_err(db_err("read a user"))?;
        Ok(row.map(|r| UserRecord {
            info: info_of(&r),
            hash: r.get("hash"),
        }))
    }

    /// Creates `name` with `role` and password `hash` (argon2id PHC).
    pub async fn create_user(&self, name: &UserName, role: Role, hash: &str) -> Result<(), StoreError> {
        let now = self.now_ms();
        let done = sqlx::query(
            "INSERT INTO users (name, role, hash, disabled, created_ms, password_changed_ms)
             VALUES (?1, ?2, ?3, 0, ?4, ?4) ON CONFLICT(name) DO NOTHING",
        )
        .bind(name.as_str())
        .bind(role.as_str())
        .bind(hash)
        .bind(now)
        .execute(self.db().await?)
        .await
        .map_err(db_err("create a user"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Exists(name.to_string()));
        }
        Ok(())
    }

    /// Creates the `admin` user from the supervisor's hash unless a user of
    /// that name exists. True when it was created.
    pub async fn ensure_admin(&self, hash: &str) -> Result<bool, StoreError> {
        let name = UserName(super::ADMIN_USER.to_string());
        match self.create_user(&name, Role::Admin, hash).await {
            Ok(()) => {
                tracing::info!("created the admin user from the supervisor's credential");
                Ok(true)
            }
            Err(StoreError::Exists(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets a new password hash.
    pub async fn set_password(&self, name: &str, hash: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE users SET hash = ?2, password_changed_ms = ?3 WHERE name = ?1")
            .bind(name)
            .bind(hash)
            .bind(self.now_ms())
            .execute(self.db().await?)
            .await
            .map_err(db_err("set a password"))?;
        self.changed(name, done.rows_affected()).await
    }

    /// Disables (ending the user's sessions) or enables a user. Disabling
    /// the last enabled admin is refused.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let db = self.db().await?;
        let mut tx = db.begin_with("BEGIN IMMEDIATE").await.map_err(db_err("begin"))?;
        let done = if disabled {
            sqlx::query(concat!(
                "UPDATE users SET disabled = 1 WHERE name = ?1 AND NOT ",
                last_enabled_admin!()
            ))
        } else {
            sqlx::query("UPDATE users SET disabled = 0 WHERE name = ?1")
        }
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db_err("disable or enable a user"))?;
        if disabled {
            sqlx::query(
                "DELETE FROM sessions WHERE user = ?1 AND EXISTS (SELECT 1 FROM users WHERE name = ?1 AND disabled = 1)",
            )
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db_err("end a user's sessions"))?;
        }
        tx.commit().await.map_err(db_err("commit"))?;
        self.changed(name, done.rows_affected()).await
    }

    /// Gives `name` a new role (effective on the user's next request).
    /// Taking admin from the last enabled admin is refused.
    pub async fn set_role(&self, name: &str, role: Role) -> Result<(), StoreError> {
        let done = sqlx::query(concat!(
            "UPDATE users SET role = ?2 WHERE name = ?1 AND NOT (?2 <> 'admin' AND ",
            last_enabled_admin!(),
            ")"
        ))
        .bind(name)
        .bind(role.as_str())
        .execute(self.db().await?)
        .await
        .map_err(db_err("set a role"))?;
        self.changed(name, done.rows_affected()).await
    }

    /// Deletes a user and ends their sessions. Deleting the last enabled
    /// admin is refused.
    pub async fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let db = self.db().await?;
        let mut tx = db.begin_with("BEGIN IMMEDIATE").await.map_err(db_err("begin"))?;
        let done = sqlx::query(concat!(
            "DELETE FROM users WHERE name = ?1 AND NOT ",
            last_enabled_admin!()
        ))
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db_err("delete a user"))?;
        sqlx::query("DELETE FROM sessions WHERE user = ?1 AND NOT EXISTS (SELECT 1 FROM users WHERE name = ?1)")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err("end a user's sessions"))?;
        tx.commit().await.map_err(db_err("commit"))?;
        self.changed(name, done.rows_affected()).await
    }

    /// Explains an update that touched no row: no such user, or (since every
    /// other condition is the last-admin guard) the last admin. Updates
    /// that change nothing (enabling an enabled user) count as done.
    async fn changed(&self, name: &str, rows: u64) -> Result<(), StoreError> {
        if rows > 0 {
            return Ok(());
        }
        match self.user(name).await? {
            None => Err(StoreError::NotFound(name.to_string())),
            Some(_) => Err(StoreError::LastAdmin(name.to_string())),
        }
    }

    /// The number of enabled admins.
    pub async fn enabled_admins(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0")
            .fetch_one(self.db().await?)
            .await
            .map_err(db_err("count the admins"))
    }

    // ----- sessions -----

    /// Starts a session for `user` with `role`: a fresh token (returned as
    /// [`Session::id`], stored only as its hash) and CSRF token. Expired
    /// sessions are swept; beyond [`MAX_SESSIONS`] the least recently used
    /// goes.
    pub async fn create_session(&self, user: &str, role: Role) -> Result<Session, StoreError> {
        let now = self.now_ms();
        let db = self.db().await?;
        let mut tx = db.begin_with("BEGIN IMMEDIATE").await.map_err(db_err("begin"))?;
        sqlx::query("DELETE FROM sessions WHERE last_seen_ms <= ?1 OR created_ms <= ?2")
            .bind(now - self.idle.as_millis() as i64)
            .bind(now - ABSOLUTE_TIMEOUT.as_millis() as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_err("sweep expired sessions"))?;
        sqlx::query(
            "DELETE FROM sessions WHERE id_hash IN (SELECT id_hash FROM sessions ORDER BY last_seen_ms DESC
             LIMIT -1 OFFSET ?1)",
        )
        .bind(MAX_SESSIONS - 1)
        .execute(&mut *tx)
        .await
        .map_err(db_err("drop the oldest sessions"))?;
        let session = Session {
            id: random_token(),
            user: user.to_string(),
            csrf: random_token(),
            role,
        };
        sqlx::query(
            "INSERT INTO sessions (id_hash, user, csrf, role, created_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )
        .bind(token_hash(&session.id))
        .bind(user)
        .bind(&session.csrf)
        .bind(role.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err("store a session"))?;
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(session)
    }

    /// Looks the session of cookie token `id` up and marks it used. Expired
    /// sessions, and those of disabled or deleted users, are removed and
    /// reported as absent. The role is the user's current one.
    pub async fn touch(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.lookup(id, true).await
    }

    /// Like [`Store::touch`] without marking the session used: for what the
    /// browser does by itself (live streams reconnecting), which must not
    /// keep an idle session alive.
    pub async fn peek(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.lookup(id, false).await
    }

    async fn lookup(&self, id: &str, mark_used: bool) -> Result<Option<Session>, StoreError> {
        let now = self.now_ms();
        let key = token_hash(id);
        let db = self.db().await?;
        let row = sqlx::query(
            "SELECT s.user, s.csrf, s.created_ms, s.last_seen_ms, u.role, u.disabled
             FROM sessions s LEFT JOIN users u ON u.name = s.user WHERE s.id_hash = ?1",
        )
        .bind(&key)
        .fetch_optional(db)
        .await
        .map_err(db_err("look a session up"))?;
        let Some(row) = row else { return Ok(None) };
        let created: i64 = row.get("created_ms");
        let last_seen: i64 = row.get("last_seen_ms");
        let role: Option<String> = row.get("role");
        let disabled: Option<i64> = row.get("disabled");
        let expired =
            now - last_seen >= self.idle.as_millis() as i64 || now - created >= ABSOLUTE_TIMEOUT.as_millis() as i64;
        let role = match (role, disabled) {
            (Some(role), Some(0)) if !expired => role_of(&role),
            _ => {
                self.remove_session(id).await?;
                return Ok(None);
            }
        };
        if mark_used && now - last_seen >= TOUCH_EVERY_MS {
            sqlx::query("UPDATE sessions SET last_seen_ms = ?2 WHERE id_hash = ?1")
                .bind(&key)
                .bind(now)
                .execute(db)
                .await
                .map_err(db_err("mark a session used"))?;
        }
        Ok(Some(Session {
            id: id.to_string(),
            user: row.get("user"),
            csrf: row.get("csrf"),
            role,
        }))
    }

    /// Ends the session of cookie token `id` (sign-out). Unknown tokens are
    /// ignored.
    pub async fn remove_session(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = ?1")
            .bind(token_hash(id))
            .execute(self.db().await?)
            .await
            .map_err(db_err("end a session"))?;
        Ok(())
    }

    /// Ends every session of `user` but the one of cookie token `keep`
    /// (after a password reset: other browsers must sign in again).
    pub async fn end_sessions(&self, user: &str, keep: Option<&str>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE user = ?1 AND id_hash <> ?2")
            .bind(user)
            .bind(keep.map(token_hash).unwrap_or_default())
            .execute(self.db().await?)
            .await
            .map_err(db_err("end a user's sessions"))?;
        Ok(done.rows_affected())
    }

    /// The number of sessions held, expired ones included until swept.
    pub async fn session_count(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT count(*) FROM sessions")
            .fetch_one(self.db().await?)
            .await
            .map_err(db_err("count the sessions"))
    }
}

fn info_of(r: &sqlx::sqlite::SqliteRow) -> UserInfo {
    UserInfo {
        name: r.get("name"),
        role: role_of(r.get::<&str, _>("role")),
        disabled: r.get::<i64, _>("disabled") != 0,
        created_unix_ms: r.get("created_ms"),
        password_changed_unix_ms: r.get("password_changed_ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::ManualClock;

    fn name(s: &str) -> UserName {
        s.parse().unwrap()
    }

    async fn store() -> (Arc<ManualClock>, Store) {
        let clock = Arc::new(ManualClock::new());
        let store = Store::in_memory(clock.clone());
        store.create_user(&name("admin"), Role::Admin, "h-admin").await.unwrap();
        (clock, store)
    }

    #[test]
    fn user_names_are_checked() {
        for ok in ["a", "alice", "bob-2", "x_y", &"a".repeat(32)] {
            assert!(ok.parse::<UserName>().is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("", "Enter a user name"),
            ("Alice", "must start with a lowercase letter"),
            ("1bob", "must start"),
            ("-x", "must start"),
            ("bob smith", "contains ' '"),
            ("bøb", "contains 'ø'"),
            ("bob/../x", "contains '/'"),
        ] {
            let e = bad.parse::<UserName>().unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let e = "a".repeat(33).parse::<UserName>().unwrap_err();
        assert!(e.contains("longer than 32"), "{e}");
    }

    #[tokio::test]
    async fn users_are_created_listed_and_changed() {
        let (clock, s) = store().await;
        let t0 = clock.unix_ms();
        s.create_user(&name("bob"), Role::Viewer, "h1").await.unwrap();
        assert!(matches!(
            s.create_user(&name("bob"), Role::Admin, "h2").await,
            Err(StoreError::Exists(n)) if n == "bob"
        ));
        clock.advance(Duration::from_secs(60));
        s.set_password("bob", "h3").await.unwrap();
        s.set_role("bob", Role::Operator).await.unwrap();
        let bob = s.user("bob").await.unwrap().unwrap();
        assert_eq!(bob.hash, "h3");
        assert_eq!(bob.info.role, Role::Operator);
        assert_eq!(bob.info.created_unix_ms, t0);
        assert_eq!(bob.info.password_changed_unix_ms, t0 + 60_000);
        let names: Vec<String> = s.list_users().await.unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["admin", "bob"]);
        s.delete_user("bob").await.unwrap();
        assert!(s.user("bob").await.unwrap().is_none());
        assert!(matches!(
            s.set_role("bob", Role::Admin).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(s.delete_user("bob").await, Err(StoreError::NotFound(_))));
    }

    #[tokio::test]
    async fn the_last_enabled_admin_stays() {
        let (_, s) = store().await;
        assert!(matches!(
            s.set_disabled("admin", true).await,
            Err(StoreError::LastAdmin(_))
        ));
        assert!(matches!(
            s.set_role("admin", Role::Viewer).await,
            Err(StoreError::LastAdmin(_))
        ));
        assert!(matches!(s.delete_user("admin").await, Err(StoreError::LastAdmin(_))));
        s.create_user(&name("root2"), Role::Admin, "h").await.unwrap();
        s.set_disabled("root2", true).await.unwrap();
        assert!(
            matches!(s.delete_user("admin").await, Err(StoreError::LastAdmin(_))),
            "a disabled admin does not count"
        );
        s.set_disabled("root2", false).await.unwrap();
        s.set_role("admin", Role::Viewer).await.unwrap();
        assert_eq!(s.enabled_admins().await.unwrap(), 1);
        assert!(matches!(
            s.set_disabled("root2", true).await,
            Err(StoreError::LastAdmin(_))
        ));
        s.delete_user("admin").await.unwrap();
        // The supervisor's credential brings an "admin" back if it is missing.
        assert!(s.ensure_admin("h-new").await.unwrap());
        assert!(!s.ensure_admin("h-other").await.unwrap());
        assert_eq!(s.user("admin").await.unwrap().unwrap().hash, "h-new");
    }

    #[tokio::test]
    async fn a_shorter_idle_timeout_and_peeking_does_not_renew() {
        let (clock, s) = store().await;
        let s = s.with_idle_timeout(Duration::from_secs(30));
        assert_eq!(s.idle_timeout(), Duration::from_secs(30));
        let a = s.create_session("admin", Role::Admin).await.unwrap();
        clock.advance(Duration::from_secs(20));
        assert!(s.peek(&a.id).await.unwrap().is_some());
        clock.advance(Duration::from_secs(10));
        assert!(s.touch(&a.id).await.unwrap().is_none(), "peeking did not renew it");
        let ceiling = Store::in_memory(clock.clone()).with_idle_timeout(Duration::from_secs(1 << 30));
        assert_eq!(ceiling.idle_timeout(), ABSOLUTE_TIMEOUT);
    }

    #[tokio::test]
    async fn sessions_are_stored_by_token_hash_and_expire() {
        let (clock, s) = store().await;
        let a = s.create_session("admin", Role::Admin).await.unwrap();
        let stored: String = sqlx::query_scalar("SELECT id_hash FROM sessions")
            .fetch_one(s.db().await.unwrap())
            .await
            .unwrap();
        assert_eq!(stored, token_hash(&a.id));
        assert_ne!(stored, a.id, "the token itself is not stored");

        clock.advance(IDLE_TIMEOUT - Duration::from_secs(1));
        assert_eq!(s.touch(&a.id).await.unwrap().as_ref(), Some(&a));
        clock.advance(IDLE_TIMEOUT - Duration::from_secs(1));
        assert!(s.touch(&a.id).await.unwrap().is_some(), "touching renewed it");
        clock.advance(IDLE_TIMEOUT);
        assert!(s.touch(&a.id).await.unwrap().is_none());
        assert_eq!(s.session_count().await.unwrap(), 0, "expired session is dropped");

        let b = s.create_session("admin", Role::Admin).await.unwrap();
        let step = Duration::from_secs(10 * 60);
        let mut elapsed = Duration::ZERO;
        while elapsed + step < ABSOLUTE_TIMEOUT {
            clock.advance(step);
            elapsed += step;
            assert!(s.touch(&b.id).await.unwrap().is_some(), "alive at {elapsed:?}");
        }
        clock.advance(step);
        assert!(s.touch(&b.id).await.unwrap().is_none(), "absolute limit");
        assert!(s.touch("not-a-session").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn sessions_follow_the_user_row() {
        let (_, s) = store().await;
        s.create_user(&name("carol"), Role::Operator, "h").await.unwrap();
        let c1 = s.create_session("carol", Role::Operator).await.unwrap();
        let c2 = s.create_session("carol", Role::Operator).await.unwrap();
        assert_ne!((&c1.id, &c1.csrf), (&c2.id, &c2.csrf));
        s.set_role("carol", Role::Viewer).await.unwrap();
        assert_eq!(s.touch(&c1.id).await.unwrap().unwrap().role, Role::Viewer);
        s.remove_session(&c2.id).await.unwrap();
        assert!(s.touch(&c2.id).await.unwrap().is_none());
        s.set_disabled("carol", true).await.unwrap();
        assert!(s.touch(&c1.id).await.unwrap().is_none(), "disabled user's session ends");
        s.set_disabled("carol", false).await.unwrap();
        assert!(s.touch(&c1.id).await.unwrap().is_none(), "and stays ended");
        let c3 = s.create_session("carol", Role::Viewer).await.unwrap();
        let c4 = s.create_session("carol", Role::Viewer).await.unwrap();
        assert_eq!(s.end_sessions("carol", Some(&c3.id)).await.unwrap(), 1);
        assert!(s.touch(&c4.id).await.unwrap().is_none(), "ended");
        assert!(s.touch(&c3.id).await.unwrap().is_some(), "kept");
        s.delete_user("carol").await.unwrap();
        assert!(s.touch(&c3.id).await.unwrap().is_none(), "deleted user's session ends");
        assert_eq!(s.session_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_file_database_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("dv-webui-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.db");
        let clock = Arc::new(ManualClock::new());
        let s = Store::open(&path, clock.clone()).await.unwrap();
        s.create_user(&name("admin"), Role::Admin, "h").await.unwrap();
        let session = s.create_session("admin", Role::Admin).await.unwrap();
        s.pool.close().await;
        let s = Store::open(&path, clock).await.unwrap();
        assert_eq!(s.touch(&session.id).await.unwrap().unwrap().user, "admin");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(s.db().await.unwrap())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        s.pool.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
