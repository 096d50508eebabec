//! The database schema and its migrations, tracked in `PRAGMA user_version`.

use sqlx::{AssertSqlSafe, Connection, Row, SqliteConnection};

use crate::chain::GENESIS_PREV_HASH;
use crate::error::AuditError;

/// Message of the triggers that refuse to change the log.
pub(crate) const APPEND_ONLY: &str = "audit log is append-only";

/// Migration `i` brings the schema from version `i` to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the records table. `seq` is the rowid; the log assigns it.
    "CREATE TABLE records (
        seq INTEGER PRIMARY KEY NOT NULL,
        time_unix_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        source TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        ok INTEGER NOT NULL CHECK (ok IN (0, 1)),
        error TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    ) STRICT;
    CREATE INDEX records_time ON records (time_unix_ms);
    CREATE INDEX records_actor ON records (actor);
    CREATE INDEX records_action ON records (action);
    CREATE INDEX records_target ON records (target);",
];

/// The schema version this build writes.
const CURRENT: i64 = MIGRATIONS.len() as i64;

/// The guards, (re)created on every open so that a dropped trigger does not
/// stay dropped. The insert guard also stops `INSERT OR REPLACE` from
/// overwriting a record (its implicit delete fires no trigger) and stops
/// records that do not extend the chain.
fn guards() -> String {
    format!(
        "CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
         BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;
         CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
         BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;
         CREATE TRIGGER IF NOT EXISTS records_append_at_head BEFORE INSERT ON records
         WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM records)
           OR NEW.prev_hash IS NOT COALESCE(
                (SELECT hash FROM records ORDER BY seq DESC LIMIT 1), '{GENESIS_PREV_HASH}')
         BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}: a new record must extend the chain'); END;"
    )
}

/// Brings the schema up to [`CURRENT`] and reinstates the guards, in one
/// write transaction.
pub(crate) async fn migrate(conn: &mut SqliteConnection, db: &str) -> Result<(), AuditError> {
    let err = |source| AuditError::Open {
        db: db.to_owned(),
        source,
    };
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
    let found: i64 = sqlx::query("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(err)?;
    if !(0..=CURRENT).contains(&found) {
        return Err(AuditError::UnsupportedSchema {
            db: db.to_owned(),
            found,
            supported: CURRENT,
        });
    }
    for (version, sql) in (found..).zip(&MIGRATIONS[found as usize..]) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(err)?;
        // PRAGMA takes no bound parameters; the value is our own integer.
        sqlx::raw_sql(AssertSqlSafe(format!("PRAGMA user_version = {}", version + 1)))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tracing::info!(db, version = version + 1, "audit log schema migrated");
    }
    sqlx::raw_sql(AssertSqlSafe(guards()))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)
}
