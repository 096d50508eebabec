//! Leases and machines in SQLite (WAL, `synchronous=FULL`).
//!
//! One writer task commits changes in groups: whatever arrived while the
//! previous commit was on its way to the disk goes into the next
//! transaction. A lease is acknowledged to its client only after its commit
//! returned, so a `kill -9` (or a power cut) loses no acknowledged lease;
//! `PRIMARY KEY(mac)` and `UNIQUE(ip)` rule out duplicates.

use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};

use crate::config::Mac;
use crate::dhcp::leases::Lease;
use crate::dhcp::respond::{Change, Seen};

mod catalog;
pub use catalog::CatalogError;

/// The machines query with `$tail` (a WHERE or ORDER BY clause) appended.
macro_rules! machines_query {
    ($tail:literal) => {
        concat!(
            "SELECT mac, client, arch, boot_file, first_seen, last_seen, uuid, profile, installed, labels FROM machines ",
            $tail
        )
    };
}

/// Most changes committed in one transaction.
const MAX_GROUP: usize = 4096;
/// The most jobs waiting for the writer: a flood beyond it is refused
/// (leases: no ACK, the client retries) instead of growing memory.
const QUEUE: usize = 4 * MAX_GROUP;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS leases (
        mac TEXT PRIMARY KEY NOT NULL,
        ip TEXT NOT NULL UNIQUE,
        expires INTEGER NOT NULL,
        hostname TEXT,
        updated INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS machines (
        mac TEXT PRIMARY KEY NOT NULL,
        client TEXT NOT NULL,
        arch INTEGER,
        boot_file TEXT,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        uuid TEXT,
        profile TEXT,
        installed INTEGER NOT NULL DEFAULT 0,
        labels TEXT NOT NULL DEFAULT '{}'
    )",
    "CREATE TABLE IF NOT EXISTS profiles (name TEXT PRIMARY KEY NOT NULL, spec TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY NOT NULL, spec TEXT NOT NULL)",
];

/// A store failure, with the database it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the database failed.
    #[error("Cannot open the lease database {db}")]
    Open {
        /// The database file.
        db: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// Writing failed.
    #[error("Cannot write to the provisioner database {db}")]
    Write {
        /// The database file.
        db: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// Reading failed.
    #[error("Cannot read the lease database {db}")]
    Read {
        /// The database file.
        db: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row does not parse (the file was edited by hand?).
    #[error("Lease database {db}: bad row for {mac}: {reason}")]
    BadRow {
        /// The database file.
        db: String,
        /// The row's key.
        mac: String,
        /// What is wrong.
        reason: String,
    },
    /// A commit failed; the changes in it were not stored.
    #[error("Lease database commit failed: {0}")]
    Commit(String),
    /// The writer task is gone (the provisioner is shutting down).
    #[error("The lease database writer has stopped")]
    Stopped,
    /// The writer's queue is full (a flood of requests): nothing was queued.
    #[error("The lease database is busy ({QUEUE} changes queued); the client will retry")]
    Busy,
}

/// A machine record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Its MAC.
    pub mac: Mac,
    /// What kind of client it booted as.
    pub client: String,
    /// Option 93.
    pub arch: Option<u16>,
    /// The last boot file it was given.
    pub boot_file: Option<String>,
    /// First and last time seen, seconds since the epoch.
    pub first_seen: u64,
    /// Last time seen.
    pub last_seen: u64,
    /// The SMBIOS UUID its iPXE reported.
    pub uuid: Option<String>,
    /// The profile it was last given.
    pub profile: Option<String>,
    /// Whether its installer reported a finished install.
    pub installed: bool,
    /// Its labels (for group selectors).
    pub labels: std::collections::BTreeMap<String, String>,
}

enum Job {
    Change(Change, Option<oneshot::Sender<Result<(), StoreError>>>),
    Seen(Seen, u64),
}

/// The store: reads through the pool, writes through the writer task.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    tx: mpsc::Sender<JobBox>,
    db: String,
}

/// A queued job (boxed so the channel's type is private).
pub struct JobBox(Job);

impl std::fmt::Debug for JobBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobBox")
    }
}

impl Store {
    /// Opens (creating) the database at `path` and starts its writer task.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_queue(path, QUEUE).await
    }

    /// [`Store::open`] with a writer queue of `queue` jobs.
    async fn open_with_queue(path: &Path, queue: usize) -> Result<Store, StoreError> {
        let db = path.display().to_string();
        let open_err = |source| StoreError::Open { db: db.clone(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await.map_err(open_err)?;
        }
        let (tx, rx) = mpsc::channel(queue);
        tokio::spawn(writer(pool.clone(), rx));
        Ok(Store { pool, tx, db })
    }

    /// The row `sql` (with one `?` for the MAC) finds for `mac`, if any.
    async fn row_by_mac(&self, sql: &'static str, mac: Mac) -> Result<Option<sqlx::sqlite::SqliteRow>, StoreError> {
        sqlx::query(sql)
            .bind(mac.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Read {
                db: self.db.clone(),
                source,
            })
    }

    async fn rows(&self, sql: &'static str) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError> {
        sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Read {
                db: self.db.clone(),
                source,
            })
    }

    /// Every stored lease.
    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let rows = self
            .rows("SELECT mac, ip, expires, hostname FROM leases ORDER BY ip")
            .await?;
        rows.iter()
            .map(|r| {
                let mac: String = r.get(0);
                let bad = |reason: String| StoreError::BadRow {
                    db: self.db.clone(),
                    mac: mac.clone(),
                    reason,
                };
                let ip: String = r.get(1);
                let expires: i64 = r.get(2);
                Ok(Lease {
                    mac: Mac::from_str(&mac).map_err(bad)?,
                    ip: Ipv4Addr::from_str(&ip).map_err(|e| bad(format!("ip {ip:?}: {e}")))?,
                    expires: u64::try_from(expires).map_err(|_| bad(format!("expires {expires}")))?,
                    hostname: r.get(3),
                })
            })
            .collect()
    }

    /// The address stored for `mac`, if it holds a lease.
    pub async fn lease_ip(&self, mac: Mac) -> Result<Option<Ipv4Addr>, StoreError> {
        let row = self.row_by_mac("SELECT ip FROM leases WHERE mac = ?", mac).await?;
        row.map(|r| {
            let ip: String = r.get(0);
            Ipv4Addr::from_str(&ip).map_err(|e| StoreError::BadRow {
                db: self.db.clone(),
                mac: mac.to_string(),
                reason: format!("ip {ip:?}: {e}"),
            })
        })
        .transpose()
    }

    /// Every machine seen.
    pub async fn machines(&self) -> Result<Vec<Machine>, StoreError> {
        let rows = self.rows(machines_query!("ORDER BY mac")).await?;
        rows.iter().map(|r| self.machine_row(r)).collect()
    }

    /// The record of `mac`.
    pub async fn machine(&self, mac: Mac) -> Result<Option<Machine>, StoreError> {
        let row = self.row_by_mac(machines_query!("WHERE mac = ?"), mac).await?;
        row.as_ref().map(|r| self.machine_row(r)).transpose()
    }

    fn machine_row(&self, r: &sqlx::sqlite::SqliteRow) -> Result<Machine, StoreError> {
        let mac: String = r.get(0);
        let bad = |reason: String| StoreError::BadRow {
            db: self.db.clone(),
            mac: mac.clone(),
            reason,
        };
        let labels: String = r.get(9);
        let arch: Option<i64> = r.get(2);
        let (first, last): (i64, i64) = (r.get(4), r.get(5));
        Ok(Machine {
            mac: Mac::from_str(&mac).map_err(bad)?,
            client: r.get(1),
            arch: arch.and_then(|a| u16::try_from(a).ok()),
            boot_file: r.get(3),
            first_seen: first.max(0) as u64,
            last_seen: last.max(0) as u64,
            uuid: r.get(6),
            profile: r.get(7),
            installed: r.get::<i64, _>(8) != 0,
            labels: serde_json::from_str(&labels).map_err(|e| bad(format!("labels: {e}")))?,
        })
    }

    /// Queues `change`; the receiver resolves once it is committed, or at
    /// once with [`StoreError::Busy`] when the queue is full.
    pub fn commit(&self, change: Change) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, rx) = oneshot::channel();
        // A closed channel drops `done`, and the receiver reports Stopped.
        if let Err(mpsc::error::TrySendError::Full(JobBox(Job::Change(_, Some(done))))) =
            self.tx.try_send(JobBox(Job::Change(change, Some(done))))
        {
            let _ = done.send(Err(StoreError::Busy));
        }
        rx
    }

    /// Queues a change nobody waits for (a release); false when the queue
    /// is full and it was dropped.
    pub fn record(&self, change: Change) -> bool {
        self.tx.try_send(JobBox(Job::Change(change, None))).is_ok()
    }

    /// Records a network-booting client seen at `now`; false when the queue
    /// is full and the record was dropped.
    pub fn seen(&self, seen: Seen, now: u64) -> bool {
        self.tx.try_send(JobBox(Job::Seen(seen, now))).is_ok()
    }
}

/// Waits for a commit queued with [`Store::commit`].
pub async fn committed(rx: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), StoreError> {
    rx.await.unwrap_or(Err(StoreError::Stopped))
}

async fn writer(pool: SqlitePool, mut rx: mpsc::Receiver<JobBox>) {
    let mut group = Vec::new();
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let result = apply(&pool, &group).await.map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, changes = group.len(), "lease database commit failed");
        }
        for JobBox(job) in group.drain(..) {
            if let Job::Change(_, Some(done)) = job {
                let _ = done.send(result.clone().map_err(StoreError::Commit));
            }
        }
    }
}

/// Commits the machine records of `group` in one transaction, then its
/// leases in another, so that a failing record never fails a lease.
async fn apply(pool: &SqlitePool, group: &[JobBox]) -> Result<(), sqlx::Error> {
    let (seen, leases): (Vec<&JobBox>, Vec<&JobBox>) = group.iter().partition(|j| matches!(j.0, Job::Seen(..)));
    if !seen.is_empty()
        && let Err(e) = apply_part(pool, &seen).await
    {
        tracing::warn!(error = %e, records = seen.len(), "machine records not stored");
    }
    if leases.is_empty() {
        Ok(())
    } else {
        apply_part(pool, &leases).await
    }
}

async fn apply_part(pool: &SqlitePool, group: &[&JobBox]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for JobBox(job) in group.iter().copied() {
        match job {
            Job::Change(Change::Bind(l), _) => {
                // REPLACE drops a row holding the address under another MAC
                // (an expired lease taken over) as well as this MAC's old row.
                sqlx::query(
                    "INSERT OR REPLACE INTO leases (mac, ip, expires, hostname, updated)
                     VALUES (?, ?, ?, ?, strftime('%s','now'))",
                )
                .bind(l.mac.to_string())
                .bind(l.ip.to_string())
                .bind(i64::try_from(l.expires).unwrap_or(i64::MAX))
                .bind(&l.hostname)
                .execute(&mut *tx)
                .await?;
            }
            Job::Change(Change::Release(l), _) => {
                sqlx::query("DELETE FROM leases WHERE mac = ? AND ip = ?")
                    .bind(l.mac.to_string())
                    .bind(l.ip.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            Job::Seen(s, now) => {
                let now = i64::try_from(*now).unwrap_or(i64::MAX);
                sqlx::query(
                    "INSERT INTO machines (mac, client, arch, boot_file, first_seen, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                     ON CONFLICT(mac) DO UPDATE SET client = ?2, arch = ?3, boot_file = ?4, last_seen = ?5",
                )
                .bind(s.mac.to_string())
                .bind(s.client)
                .bind(s.arch.map(i64::from))
                .bind(&s.boot_file)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(n: u8, ip: u8) -> Lease {
        Lease {
            mac: Mac([2, 0, 0, 0, 0, n]),
            ip: Ipv4Addr::new(198, 51, 100, ip),
            expires: 1000 + u64::from(n),
            hostname: (n == 1).then(|| "node-a".to_string()),
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_queue(&dir.path().join("l.db"), 1).await.unwrap();
        // The writer has not run yet (one thread, no await): the queue is full after one job.
        let first = store.commit(Change::Bind(lease(1, 101)));
        let second = store.commit(Change::Bind(lease(2, 102)));
        assert!(!store.record(Change::Release(lease(1, 101))));
        assert!(matches!(committed(second).await, Err(StoreError::Busy)));
        committed(first).await.unwrap();
        assert_eq!(store.leases().await.unwrap().len(), 1);
        // Drained, it takes work again.
        committed(store.commit(Change::Bind(lease(2, 102)))).await.unwrap();
    }

    #[tokio::test]
    async fn leases_survive_reopening_and_an_address_has_one_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/leases.db");
        let store = Store::open(&path).await.unwrap();
        let waits: Vec<_> = (1..=50)
            .map(|n| store.commit(Change::Bind(lease(n, 100 + n))))
            .collect();
        for w in waits {
            committed(w).await.unwrap();
        }
        // mac 2 takes over mac 1's address; mac 3 releases.
        committed(store.commit(Change::Bind(lease(2, 101)))).await.unwrap();
        committed(store.commit(Change::Release(lease(3, 103)))).await.unwrap();
        store.seen(
            Seen {
                mac: Mac([2, 0, 0, 0, 0, 1]),
                client: "pxe-uefi",
                arch: Some(7),
                boot_file: Some("snponly.efi".into()),
            },
            5,
        );
        // Jobs commit in order: once this one is stored, so is the record above.
        committed(store.commit(Change::Bind(lease(60, 160)))).await.unwrap();
        drop(store);

        let store = Store::open(&path).await.unwrap();
        let leases = store.leases().await.unwrap();
        assert_eq!(leases.len(), 49, "51 bound, mac 1 replaced by mac 2, mac 3 released");
        let holder: Vec<_> = leases
            .iter()
            .filter(|l| l.ip == Ipv4Addr::new(198, 51, 100, 101))
            .collect();
        assert_eq!(holder.len(), 1);
        assert_eq!(holder[0].mac, Mac([2, 0, 0, 0, 0, 2]));
        let machines = store.machines().await.unwrap();
        assert_eq!(machines.len(), 1);
        assert_eq!((machines[0].arch, machines[0].client.as_str()), (Some(7), "pxe-uefi"));
    }
}
