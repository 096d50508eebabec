//! Server-side sessions in the console database: created at sign-in,
//! looked up (and renewed) per request, ended at sign-out, on expiry or
//! with the user.

use sqlx::Row;

use super::{ABSOLUTE_TIMEOUT, MAX_SESSIONS, Store, StoreError, TOUCH_EVERY_MS, db_err, role_of, token_hash};
use crate::auth::{Session, random_token};
use crate::roles::Role;

impl Store {
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
