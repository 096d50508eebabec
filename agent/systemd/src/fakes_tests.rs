use std::sync::Arc;
use std::time::Duration;

use debvisor_api::validate::{JournalPriority, UnitName, UnitType};
use futures_util::StreamExt;

use super::*;

fn name(s: &str) -> UnitName {
    UnitName::try_from(s).unwrap()
}

fn names(units: &[UnitInfo]) -> Vec<&str> {
    units.iter().map(|u| u.name.as_str()).collect()
}

#[tokio::test]
async fn lists_like_systemd() {
    // The agent holds the facilities as trait objects.
    let units: Arc<dyn Units> = Arc::new(FakeUnits::new());
    let _journal: Arc<dyn Journal> = Arc::new(FakeJournal::new());
    let active = units.list(&UnitFilter::default()).await.unwrap();
    assert_eq!(
        names(&active),
        [
            "cron.service",
            "debvisor-agent.service",
            "debvisor-webui.service",
            "fstrim.timer",
            "multi-user.target",
            "systemd-networkd.service",
            "zfs-import-cache.service",
        ]
    );
    assert!(active.iter().all(|u| u.unit_file_state.is_none()));

    let all = units
        .list(&UnitFilter {
            include_inactive: true,
            types: vec![UnitType::Service],
            ..UnitFilter::default()
        })
        .await
        .unwrap();
    let ssh = all
        .iter()
        .find(|u| u.name == "ssh.service")
        .expect("ssh listed with unit files");
    assert_eq!(
        (ssh.load_state.as_str(), ssh.active_state.as_str()),
        (NOT_LOADED, "inactive")
    );
    assert_eq!(ssh.unit_file_state.as_deref(), Some("disabled"));
    let apt = all.iter().find(|u| u.name == "apt-daily.service").unwrap();
    assert_eq!(apt.load_state, "masked");
    assert!(!names(&all).contains(&"fstrim.timer"));

    let failed = units
        .list(&UnitFilter {
            states: vec!["failed".try_into().unwrap()],
            ..UnitFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(names(&failed), ["zfs-import-cache.service"]);

    let debvisor = units
        .list(&UnitFilter {
            patterns: vec!["debvisor-*".try_into().unwrap()],
            ..UnitFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(names(&debvisor), ["debvisor-agent.service", "debvisor-webui.service"]);
}

#[tokio::test]
async fn get_reports_details_and_not_found() {
    let units = FakeUnits::new();
    let agent = units.get(&name("debvisor-agent.service")).await.unwrap();
    assert_eq!(
        (agent.active_state.as_str(), agent.sub_state.as_str()),
        ("active", "running")
    );
    assert_eq!(agent.main_pid, Some(612));
    assert_eq!(agent.unit_file_state.as_deref(), Some("enabled"));
    assert!(agent.memory_current_bytes.is_some() && agent.active_enter_timestamp_us.is_some());
    let timer = units.get(&name("fstrim.timer")).await.unwrap();
    assert_eq!((timer.main_pid, timer.n_restarts), (None, None));
    let e = units.get(&name("nope.service")).await.unwrap_err();
    assert_eq!(e.to_string(), "Unit nope.service not found");
}

#[tokio::test]
async fn start_stop_restart_change_state_and_pids() {
    let units = FakeUnits::new();
    let ssh = name("ssh.service");
    let mut changes = units.subscribe();

    let job = units.start(&ssh).await.unwrap();
    assert!(job.is_done());
    let started = units.get(&ssh).await.unwrap();
    assert_eq!(
        (started.active_state.as_str(), started.sub_state.as_str()),
        ("active", "running")
    );
    let pid = started.main_pid.expect("a main PID");
    assert_eq!(changes.recv().await.unwrap().active_state, "activating");
    assert_eq!(
        changes.recv().await.unwrap(),
        UnitChange {
            name: "ssh.service".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
        }
    );
    // Once started it is a loaded unit, listed without include_inactive.
    assert!(names(&units.list(&UnitFilter::default()).await.unwrap()).contains(&"ssh.service"));

    let again = units.start(&ssh).await.unwrap();
    assert!(again.job > job.job && again.is_done());
    assert_eq!(units.get(&ssh).await.unwrap().main_pid, Some(pid));

    units.restart(&ssh).await.unwrap();
    let restarted = units.get(&ssh).await.unwrap();
    assert!(restarted.main_pid.unwrap() > pid);
    assert_eq!(restarted.active_state, "active");

    units.stop(&ssh).await.unwrap();
    let stopped = units.get(&ssh).await.unwrap();
    assert_eq!(
        (stopped.active_state.as_str(), stopped.sub_state.as_str()),
        ("inactive", "dead")
    );
    assert_eq!((stopped.main_pid, stopped.memory_current_bytes), (None, None));
    let mut last = None;
    while let Ok(c) = changes.try_recv() {
        last = Some(c);
    }
    assert_eq!(last.unwrap().active_state, "inactive");

    // A failed unit starts again; a timer gets its own sub state.
    units.start(&name("zfs-import-cache.service")).await.unwrap();
    assert_eq!(
        units.get(&name("zfs-import-cache.service")).await.unwrap().active_state,
        "active"
    );
    units.stop(&name("fstrim.timer")).await.unwrap();
    units.start(&name("fstrim.timer")).await.unwrap();
    assert_eq!(units.get(&name("fstrim.timer")).await.unwrap().sub_state, "waiting");
}

#[tokio::test]
async fn unknown_and_masked_units_are_refused() {
    let units = FakeUnits::new();
    for e in [
        units.start(&name("nope.service")).await.unwrap_err(),
        units.stop(&name("nope.service")).await.unwrap_err(),
        units.restart(&name("nope.service")).await.unwrap_err(),
        units.enable(&name("nope.service")).await.unwrap_err(),
    ] {
        assert!(matches!(e, UnitsError::NotFound { .. }), "{e:?}");
    }
    let e = units.start(&name("apt-daily.service")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "systemd refused StartUnit of apt-daily.service: the unit is masked (Unit apt-daily.service is masked.)"
    );
    assert!(matches!(
        units.enable(&name("apt-daily.service")).await,
        Err(UnitsError::Refused { .. })
    ));
}

#[tokio::test]
async fn enable_and_disable_change_the_unit_file_state() {
    let units = FakeUnits::new();
    let ssh = name("ssh.service");
    let changes = units.enable(&ssh).await.unwrap();
    assert_eq!(
        changes,
        [UnitFileChange {
            kind: "symlink".into(),
            path: "/etc/systemd/system/multi-user.target.wants/ssh.service".into(),
            source: "/lib/systemd/system/ssh.service".into(),
        }]
    );
    assert_eq!(
        units.get(&ssh).await.unwrap().unit_file_state.as_deref(),
        Some("enabled")
    );
    assert!(units.enable(&ssh).await.unwrap().is_empty(), "enabled already");
    let removed = units.disable(&ssh).await.unwrap();
    assert_eq!(removed[0].kind, "unlink");
    assert_eq!(
        units.get(&ssh).await.unwrap().unit_file_state.as_deref(),
        Some("disabled")
    );
    assert!(units.disable(&ssh).await.unwrap().is_empty());
    assert!(
        units.enable(&name("multi-user.target")).await.unwrap().is_empty(),
        "static"
    );
    let timer = units.disable(&name("fstrim.timer")).await.unwrap();
    assert_eq!(timer[0].path, "/etc/systemd/system/timers.target.wants/fstrim.timer");
}

#[tokio::test]
async fn reboot_and_poweroff_are_recorded() {
    let units = FakeUnits::new();
    assert_eq!(units.shutdown_requested(), None);
    units.poweroff().await.unwrap();
    assert_eq!(units.shutdown_requested(), Some("poweroff.target"));
    units.reboot().await.unwrap();
    assert_eq!(units.shutdown_requested(), Some("reboot.target"));
}

#[tokio::test]
async fn jobs_write_the_journal() {
    let journal = Arc::new(FakeJournal::new());
    let units = FakeUnits::new().with_journal(journal.clone());
    units.restart(&name("cron.service")).await.unwrap();
    let msgs: Vec<String> = journal.entries().into_iter().map(|e| e.message).collect();
    assert_eq!(
        msgs,
        [
            "Stopped cron.service - Regular background program processing daemon.",
            "Started cron.service - Regular background program processing daemon.",
        ]
    );
    let q = LogQuery {
        unit: Some(name("cron.service")),
        ..LogQuery::default()
    };
    let entries: Vec<_> = journal.stream(q).unwrap().collect().await;
    assert_eq!(entries.len(), 2);
    let first = entries[0].as_ref().unwrap();
    assert_eq!(
        (first.identifier.as_str(), first.pid, first.priority),
        ("systemd", Some(1), 6)
    );
    assert_ne!(first.cursor, entries[1].as_ref().unwrap().cursor);
}

#[tokio::test]
async fn journal_queries_filter_and_follow() {
    let journal = Arc::new(FakeJournal::new());
    for i in 0..15u8 {
        journal.log("a.service", i % 8, "a", Some(10), &format!("a{i}"));
    }
    journal.log("b.service", 3, "b", None, "b0");
    let messages = |q: LogQuery| {
        let journal = journal.clone();
        async move {
            let items: Vec<_> = journal.stream(q).unwrap().collect().await;
            items.into_iter().map(|e| e.unwrap().message).collect::<Vec<_>>()
        }
    };
    assert_eq!(messages(LogQuery::default()).await.len(), 16);
    let last2 = LogQuery {
        unit: Some(name("a.service")),
        lines: Some(2),
        ..LogQuery::default()
    };
    assert_eq!(messages(last2).await, ["a13", "a14"]);
    let errors = LogQuery {
        max_priority: Some(JournalPriority::try_from("err").unwrap()),
        ..LogQuery::default()
    };
    assert_eq!(
        messages(errors).await,
        ["a0", "a1", "a2", "a3", "a8", "a9", "a10", "a11", "b0"]
    );
    let future = LogQuery {
        since_unix_us: Some(u64::MAX),
        ..LogQuery::default()
    };
    assert!(messages(future).await.is_empty());

    // Following: the last 10 by default, then new entries as they come.
    let mut follow = journal
        .stream(LogQuery {
            unit: Some(name("a.service")),
            follow: true,
            ..LogQuery::default()
        })
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(follow.next().await.unwrap().unwrap().message);
    }
    assert_eq!(seen.first().map(String::as_str), Some("a5"));
    journal.log("b.service", 6, "b", None, "not for a");
    journal.log("a.service", 6, "a", None, "new");
    let next = tokio::time::timeout(Duration::from_secs(5), follow.next()).await;
    assert_eq!(next.unwrap().unwrap().unwrap().message, "new");
}
