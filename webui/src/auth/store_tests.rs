//! Tests of [`super`]: users, the last admin, sessions, reopening.

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
