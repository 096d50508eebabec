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
//!
//! The session half of [`Store`] is in `store/sessions.rs`.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{ABSOLUTE_TIMEOUT, Clock, IDLE_TIMEOUT};
use crate::roles::Role;

mod sessions;

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
#[path = "store_tests.rs"]
mod tests;
