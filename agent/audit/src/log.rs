//! The log itself: opening, appending, reading and verifying.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::Mutex;

use crate::chain::{ChainWalker, GENESIS_PREV_HASH, VerifyReport};
use crate::error::AuditError;
use crate::query::{Filter, Page, Query, encode_token};
use crate::record::{AuditRecord, NewEntry, ValidEntry};
use crate::schema;

/// Columns of `records` in the order [`record_from_row`] reads them.
const COLUMNS: &str = "seq, time_unix_ms, actor, source, action, target, ok, error, prev_hash, hash";
/// Records read per statement by [`AuditLog::verify`].
const VERIFY_BATCH: i64 = 1000;
/// How long a writer waits for another process holding the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The append-only, hash-chained audit log.
///
/// Cloning is cheap and every clone shares one database pool and one writer
/// lock, so appends from all clones form one linear chain.
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    /// Serialises appends inside this process; `BEGIN IMMEDIATE` does it
    /// across processes.
    writer: Mutex<()>,
    /// The database path (or `:memory:`) for error messages.
    db: String,
}

impl AuditLog {
    /// Opens the log at `path`, creating the parent directory and the
    /// database if they are missing, and bringing the schema up to date.
    ///
    /// The database runs in WAL mode with `synchronous=FULL`, so an appended
    /// record survives a power cut once [`append`](Self::append) returns.
    pub async fn open(path: &Path) -> Result<Self, AuditError> {
        let db = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| AuditError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| AuditError::Open { db: db.clone(), source })?;
        Self::finish_open(pool, db).await
    }

    /// Opens a new, empty log that lives in memory and is gone when the last
    /// clone is dropped; for tests and the agent's `--sim` mode.
    pub async fn open_in_memory() -> Result<Self, AuditError> {
        let db = String::from(":memory:");
        // Every connection to `:memory:` is a database of its own: keep
        // exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(SqliteConnectOptions::new().in_memory(true))
            .await
            .map_err(|source| AuditError::Open { db: db.clone(), source })?;
        Self::finish_open(pool, db).await
    }

    async fn finish_open(pool: SqlitePool, db: String) -> Result<Self, AuditError> {
        let mut conn = pool
            .acquire()
            .await
            .map_err(|source| AuditError::Open { db: db.clone(), source })?;
        schema::migrate(&mut conn, &db).await?;
        drop(conn);
        tracing::debug!(db, "audit log open");
        Ok(AuditLog {
            inner: Arc::new(Inner {
                pool,
                writer: Mutex::new(()),
                db,
            }),
        })
    }

    /// Closes the database pool, waiting for reads and writes under way.
    /// Every clone is closed with it; later calls fail.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// Appends `entry` at the end of the chain, stamped with the system
    /// clock, and returns the stored record.
    ///
    /// Appends are serialised, so concurrent callers get consecutive `seq`
    /// numbers and a linear chain. Fails with
    /// [`AuditError::InvalidEntry`] if `actor`, `source` or `action` is
    /// empty or a field is longer than [`MAX_FIELD_BYTES`](crate::MAX_FIELD_BYTES).
    pub async fn append(&self, entry: NewEntry) -> Result<AuditRecord, AuditError> {
        let entry = ValidEntry::try_from(entry)?;
        let _writer = self.inner.writer.lock().await;
        let op = "append a record";
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.db_err(op))?;
        let head = sqlx::query("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.db_err(op))?;
        let (head_seq, head_hash) = match head {
            Some(row) => (
                row.try_get::<i64, _>(0).map_err(self.db_err(op))?,
                row.try_get::<String, _>(1).map_err(self.db_err(op))?,
            ),
            None => (0, GENESIS_PREV_HASH.to_owned()),
        };
        let mut record = AuditRecord {
            seq: head_seq + 1,
            time_unix_ms: now_unix_ms()?,
            actor: entry.actor,
            source: entry.source,
            action: entry.action,
            target: entry.target,
            ok: entry.ok,
            error: entry.error,
            prev_hash: head_hash,
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        sqlx::query(
            "INSERT INTO records \
             (seq, time_unix_ms, actor, source, action, target, ok, error, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.seq)
        .bind(record.time_unix_ms)
        .bind(&record.actor)
        .bind(&record.source)
        .bind(&record.action)
        .bind(&record.target)
        .bind(record.ok)
        .bind(&record.error)
        .bind(&record.prev_hash)
        .bind(&record.hash)
        .execute(&mut *tx)
        .await
        .map_err(self.db_err(op))?;
        tx.commit().await.map_err(self.db_err(op))?;
        Ok(record)
    }

    /// One page of the records matching `q`, newest first.
    ///
    /// Paging is by `seq`, so records appended meanwhile never shift a later
    /// page. Fails with [`AuditError::BadPageToken`] for a token that this
    /// method did not hand out.
    pub async fn query(&self, q: &Query) -> Result<Page, AuditError> {
        let op = "query records";
        let before = q.before_seq()?;
        let limit = q.effective_page_size();
        let filter = Filter::new(q);
        let mut paged = filter.clone();
        if let Some(before) = before {
            paged.before(before);
        }
        // Count and page in one read transaction: the same snapshot.
        let mut tx = self.inner.pool.begin().await.map_err(self.db_err(op))?;
        let count_sql = format!("SELECT COUNT(*) FROM records{}", filter.sql());
        let total: i64 = sqlx::query_with(
            AssertSqlSafe(count_sql),
            filter.arguments(&[]).map_err(self.db_err(op))?,
        )
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(self.db_err(op))?;
        // One more than a page tells whether another page follows.
        let page_sql = format!("SELECT {COLUMNS} FROM records{} ORDER BY seq DESC LIMIT ?", paged.sql());
        let rows = sqlx::query_with(
            AssertSqlSafe(page_sql),
            paged.arguments(&[i64::from(limit) + 1]).map_err(self.db_err(op))?,
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(self.db_err(op))?;
        tx.commit().await.map_err(self.db_err(op))?;
        let mut records = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.db_err(op))?;
        let next_page_token = if records.len() > limit as usize {
            records.truncate(limit as usize);
            records.last().map(|r| encode_token(r.seq))
        } else {
            None
        };
        Ok(Page {
            records,
            next_page_token,
            total_matching: u64::try_from(total).unwrap_or(0),
        })
    }

    /// Every record matching `q`, oldest first, as one `Vec`;
    /// `page_size` and `page_token` are ignored.
    pub async fn export(&self, q: &Query) -> Result<Vec<AuditRecord>, AuditError> {
        let op = "export records";
        let filter = Filter::new(q);
        let sql = format!("SELECT {COLUMNS} FROM records{} ORDER BY seq ASC", filter.sql());
        let rows = sqlx::query_with(AssertSqlSafe(sql), filter.arguments(&[]).map_err(self.db_err(op))?)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(self.db_err(op))?;
        rows.iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.db_err(op))
    }

    /// Walks the whole chain oldest first, in batches, recomputing every
    /// hash and checking every link and `seq`.
    ///
    /// Reports the first problem found; it never changes the database. A
    /// record that fails to decode is an [`AuditError`], not a
    /// [`ChainProblem`](crate::ChainProblem).
    pub async fn verify(&self) -> Result<VerifyReport, AuditError> {
        let op = "verify the chain";
        let mut conn = self.inner.pool.acquire().await.map_err(self.db_err(op))?;
        let mut walker = ChainWalker::new();
        let sql = format!("SELECT {COLUMNS} FROM records WHERE seq > ? ORDER BY seq ASC LIMIT ?");
        loop {
            let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(walker.last_seq())
                .bind(VERIFY_BATCH)
                .fetch_all(&mut *conn)
                .await
                .map_err(self.db_err(op))?;
            for row in &rows {
                walker.check(&record_from_row(row).map_err(self.db_err(op))?);
            }
            if (rows.len() as i64) < VERIFY_BATCH {
                break;
            }
        }
        let report = walker.finish();
        if let Some(problem) = &report.problem {
            tracing::warn!(db = self.inner.db, %problem, "audit log chain is broken");
        }
        Ok(report)
    }

    fn db_err(&self, operation: &'static str) -> impl FnOnce(sqlx::Error) -> AuditError + '_ {
        move |source| AuditError::Database {
            db: self.inner.db.clone(),
            operation,
            source,
        }
    }
}

fn record_from_row(row: &SqliteRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        seq: row.try_get(0)?,
        time_unix_ms: row.try_get(1)?,
        actor: row.try_get(2)?,
        source: row.try_get(3)?,
        action: row.try_get(4)?,
        target: row.try_get(5)?,
        ok: row.try_get(6)?,
        error: row.try_get(7)?,
        prev_hash: row.try_get(8)?,
        hash: row.try_get(9)?,
    })
}

fn now_unix_ms() -> Result<i64, AuditError> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AuditError::Clock)?;
    i64::try_from(since_epoch.as_millis()).map_err(|_| AuditError::Clock)
}
