//! The audit log against real SQLite files: appending, reading, paging,
//! verifying, and catching tampering done behind the agent's back.

use std::path::Path;

use debvisor_audit::{AuditError, AuditLog, AuditRecord, ChainProblem, GENESIS_PREV_HASH, NewEntry, Outcome, Query};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};

const ACTORS: [&str; 3] = ["alice", "bob", "carol"];
const ACTIONS: [&str; 3] = ["vm.start", "vm.stop", "net.create"];

fn entry(i: usize) -> NewEntry {
    NewEntry {
        actor: ACTORS[i % 3].into(),
        source: format!("grpc 10.0.0.{}", i % 7),
        action: ACTIONS[i % ACTIONS.len()].into(),
        target: format!("vm/{}", i % 4),
        outcome: if i.is_multiple_of(5) {
            Outcome::Error(format!("failure {i}"))
        } else {
            Outcome::Ok
        },
    }
}

async fn fill(log: &AuditLog, n: usize) -> Vec<AuditRecord> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(log.append(entry(i)).await.expect("append"));
    }
    out
}

/// A connection that bypasses the agent, as an attacker with file access.
async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .expect("raw connection")
}

async fn exec(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(conn).await.map(|_| ())
}

async fn drop_triggers(conn: &mut SqliteConnection) {
    exec(
        conn,
        "DROP TRIGGER records_no_update; DROP TRIGGER records_no_delete; \
         DROP TRIGGER records_append_at_head;",
    )
    .await
    .expect("drop triggers");
}

async fn file_log(n: usize) -> (tempfile::TempDir, std::path::PathBuf, AuditLog) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = AuditLog::open(&path).await.unwrap();
    fill(&log, n).await;
    (dir, path, log)
}

fn seqs(records: &[AuditRecord]) -> Vec<i64> {
    records.iter().map(|r| r.seq).collect()
}

#[tokio::test]
async fn appended_records_are_chained() {
    let log = AuditLog::open_in_memory().await.unwrap();
    let records = fill(&log, 3).await;
    assert_eq!(seqs(&records), [1, 2, 3]);
    assert_eq!(records[0].prev_hash, GENESIS_PREV_HASH);
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(records[2].prev_hash, records[1].hash);
    assert!(records.iter().all(|r| r.hash == r.compute_hash()));
    assert!(!records[0].ok && records[0].error == "failure 0");
    assert!(records[1].ok && records[1].error.is_empty());
    assert_eq!(log.export(&Query::default()).await.unwrap(), records);
}

#[tokio::test]
async fn each_filter_selects_what_it_says() {
    let log = AuditLog::open_in_memory().await.unwrap();
    let all = fill(&log, 60).await;
    let expect = |pred: &dyn Fn(&AuditRecord) -> bool| {
        let mut v: Vec<i64> = all.iter().filter(|r| pred(r)).map(|r| r.seq).collect();
        v.reverse();
        v
    };
    let run = |q: Query| {
        let log = log.clone();
        async move {
            let page = log.query(&Query { page_size: 1000, ..q }).await.unwrap();
            assert_eq!(page.total_matching, page.records.len() as u64);
            assert_eq!(page.next_page_token, None);
            seqs(&page.records)
        }
    };
    let (t10, t40) = (all[10].time_unix_ms, all[40].time_unix_ms);
    let cases: Vec<(Query, Vec<i64>)> = vec![
        (Query::default(), expect(&|_| true)),
        (
            Query {
                actor: Some("bob".into()),
                ..Query::default()
            },
            expect(&|r| r.actor == "bob"),
        ),
        (
            Query {
                action: Some("vm.stop".into()),
                ..Query::default()
            },
            expect(&|r| r.action == "vm.stop"),
        ),
        (
            Query {
                action: Some("vm.*".into()),
                ..Query::default()
            },
            expect(&|r| r.action.starts_with("vm.")),
        ),
        (
            Query {
                action: Some("VM.*".into()),
                ..Query::default()
            },
            vec![],
        ),
        (
            Query {
                action: Some("vm.".into()),
                ..Query::default()
            },
            vec![],
        ),
        (
            Query {
                target: Some("vm/2".into()),
                ..Query::default()
            },
            expect(&|r| r.target == "vm/2"),
        ),
        (
            Query {
                ok: Some(false),
                ..Query::default()
            },
            expect(&|r| !r.ok),
        ),
        (
            Query {
                ok: Some(true),
                ..Query::default()
            },
            expect(&|r| r.ok),
        ),
        (
            Query {
                since_unix_ms: Some(t10),
                until_unix_ms: Some(t40),
                ..Query::default()
            },
            expect(&|r| r.time_unix_ms >= t10 && r.time_unix_ms < t40),
        ),
        (
            Query {
                actor: Some("alice".into()),
                action: Some("vm.*".into()),
                ok: Some(true),
                ..Query::default()
            },
            expect(&|r| r.actor == "alice" && r.action.starts_with("vm.") && r.ok),
        ),
    ];
    for (q, want) in cases {
        let label = format!("{q:?}");
        assert_eq!(run(q).await, want, "{label}");
    }
}

#[tokio::test]
async fn pages_walk_newest_to_oldest() {
    let log = AuditLog::open_in_memory().await.unwrap();
    fill(&log, 25).await;
    let mut q = Query {
        page_size: 10,
        ..Query::default()
    };
    let mut pages = Vec::new();
    loop {
        let page = log.query(&q).await.unwrap();
        // One record was appended after each earlier page.
        assert_eq!(page.total_matching, 25 + pages.len() as u64);
        pages.push(seqs(&page.records));
        match page.next_page_token {
            Some(token) => q.page_token = Some(token),
            None => break,
        }
        // Appends after the first page must not shift later pages.
        log.append(entry(99)).await.unwrap();
    }
    assert_eq!(
        pages,
        [
            (16..=25).rev().collect::<Vec<_>>(),
            (6..=15).rev().collect(),
            (1..=5).rev().collect(),
        ]
    );

    // Paging a filtered query: failures are seq 1, 6, 11, ... (i % 5 == 0).
    let mut q = Query {
        ok: Some(false),
        page_size: 2,
        ..Query::default()
    };
    let first = log.query(&q).await.unwrap();
    q.page_token = first.next_page_token.clone();
    let second = log.query(&q).await.unwrap();
    assert_eq!(first.total_matching, second.total_matching);
    assert!(second.records.iter().all(|r| !r.ok));
    assert!(first.records.last().unwrap().seq > second.records[0].seq);
}

#[tokio::test]
async fn page_size_zero_means_one_hundred() {
    let log = AuditLog::open_in_memory().await.unwrap();
    fill(&log, 101).await;
    let page = log.query(&Query::default()).await.unwrap();
    assert_eq!(page.records.len(), 100);
    assert!(page.next_page_token.is_some());
}

#[tokio::test]
async fn export_is_oldest_first_and_ignores_paging() {
    let log = AuditLog::open_in_memory().await.unwrap();
    fill(&log, 30).await;
    let q = Query {
        actor: Some("carol".into()),
        page_size: 2,
        page_token: Some("not even a token".into()),
        ..Query::default()
    };
    let records = log.export(&q).await.unwrap();
    assert_eq!(seqs(&records), (3..=30).step_by(3).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_page_token_is_refused_by_name() {
    let log = AuditLog::open_in_memory().await.unwrap();
    let q = Query {
        page_token: Some("garbage".into()),
        ..Query::default()
    };
    let err = log.query(&q).await.unwrap_err();
    assert!(
        matches!(&err, AuditError::BadPageToken { token } if token == "garbage"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"garbage\""), "{err}");
}

#[tokio::test]
async fn invalid_entries_are_refused_and_not_stored() {
    let log = AuditLog::open_in_memory().await.unwrap();
    let mut e = entry(1);
    e.actor.clear();
    let err = log.append(e).await.unwrap_err();
    assert!(
        matches!(err, AuditError::InvalidEntry { field: "actor", .. }),
        "{err:?}"
    );
    assert_eq!(log.verify().await.unwrap().records, 0);
}

#[tokio::test]
async fn intact_chain_of_500_verifies() {
    let (_dir, _path, log) = file_log(0).await;
    let empty = log.verify().await.unwrap();
    assert_eq!((empty.records, empty.head_seq), (0, 0));
    let records = fill(&log, 500).await;
    let report = log.verify().await.unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.records, 500);
    assert_eq!(report.head_seq, 500);
    assert_eq!(report.head_hash, records[499].hash);
}

#[tokio::test]
async fn changed_field_is_a_hash_mismatch() {
    let (_dir, path, log) = file_log(20).await;
    let mut conn = raw(&path).await;
    drop_triggers(&mut conn).await;
    exec(&mut conn, "UPDATE records SET actor = 'mallory' WHERE seq = 10")
        .await
        .unwrap();
    let report = log.verify().await.unwrap();
    assert_eq!(report.problem, Some(ChainProblem::HashMismatch { seq: 10 }));
    assert_eq!(report.records, 20, "the walk goes on to the head");
}

#[tokio::test]
async fn deleted_record_is_a_gap() {
    let (_dir, path, log) = file_log(20).await;
    let mut conn = raw(&path).await;
    drop_triggers(&mut conn).await;
    exec(&mut conn, "DELETE FROM records WHERE seq = 10").await.unwrap();
    let report = log.verify().await.unwrap();
    assert_eq!(
        report.problem,
        Some(ChainProblem::Gap {
            after_seq: 9,
            next_seq: 11
        })
    );
    assert_eq!(report.records, 19);
}

#[tokio::test]
async fn rehashed_record_breaks_the_next_link() {
    let (_dir, path, log) = file_log(20).await;
    let mut forged = log.export(&Query::default()).await.unwrap()[9].clone();
    assert_eq!(forged.seq, 10);
    forged.actor = "mallory".into();
    forged.hash = forged.compute_hash();

    let mut conn = raw(&path).await;
    drop_triggers(&mut conn).await;
    sqlx::query("UPDATE records SET actor = ?, hash = ? WHERE seq = 10")
        .bind(&forged.actor)
        .bind(&forged.hash)
        .execute(&mut conn)
        .await
        .unwrap();
    let report = log.verify().await.unwrap();
    assert_eq!(report.problem, Some(ChainProblem::BrokenLink { seq: 11 }));
}

#[tokio::test]
async fn triggers_refuse_update_delete_and_overwrite() {
    let (_dir, path, log) = file_log(5).await;
    let mut conn = raw(&path).await;
    for sql in [
        "UPDATE records SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM records WHERE seq = 2",
        "DELETE FROM records",
        "INSERT OR REPLACE INTO records \
         SELECT seq, time_unix_ms, 'mallory', source, action, target, ok, error, prev_hash, hash \
         FROM records WHERE seq = 2",
        "INSERT INTO records \
         SELECT seq + 10, time_unix_ms, actor, source, action, target, ok, error, prev_hash, hash \
         FROM records WHERE seq = 5",
    ] {
        let err = exec(&mut conn, sql).await.unwrap_err();
        assert!(err.to_string().contains("audit log is append-only"), "{sql}: {err}");
    }
    let report = log.verify().await.unwrap();
    assert_eq!((report.records, report.problem), (5, None));
}

#[tokio::test]
async fn log_survives_close_and_reopen() {
    let (dir, path, log) = file_log(3).await;
    log.close().await;
    assert!(log.append(entry(0)).await.is_err(), "closed log refuses");
    drop(log);

    // Dropped triggers come back on the next open.
    let mut conn = raw(&path).await;
    drop_triggers(&mut conn).await;
    drop(conn);

    let log = AuditLog::open(&path).await.unwrap();
    let more = fill(&log, 2).await;
    assert_eq!(seqs(&more), [4, 5]);
    let report = log.verify().await.unwrap();
    assert_eq!((report.records, report.head_seq), (5, 5));
    assert_eq!(report.problem, None);

    let mut conn = raw(&path).await;
    let err = exec(&mut conn, "DELETE FROM records").await.unwrap_err();
    assert!(err.to_string().contains("audit log is append-only"), "{err}");
    drop(dir);
}

#[tokio::test]
async fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/debvisor/audit.db");
    let log = AuditLog::open(&path).await.unwrap();
    log.append(entry(1)).await.unwrap();
    assert!(path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut raw(&path).await)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    AuditLog::open(&path).await.unwrap().close().await;
    let mut conn = raw(&path).await;
    exec(&mut conn, "PRAGMA user_version = 99").await.unwrap();
    drop(conn);
    let err = AuditLog::open(&path).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::UnsupportedSchema {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("audit.db"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_form_one_chain() {
    let (_dir, _path, log) = file_log(0).await;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    log.append(entry(t * 100 + i)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let report = log.verify().await.unwrap();
    assert_eq!(report.problem, None);
    assert_eq!((report.records, report.head_seq), (200, 200));
}

#[tokio::test]
async fn in_memory_logs_are_separate() {
    let a = AuditLog::open_in_memory().await.unwrap();
    let b = AuditLog::open_in_memory().await.unwrap();
    fill(&a, 2).await;
    assert_eq!(b.verify().await.unwrap().records, 0);
    assert_eq!(a.clone().verify().await.unwrap().records, 2);
}
