use std::collections::{BTreeMap, HashMap};

use zbus::{Message, OwnedVariant, Str, Variant};

use super::*;

fn props(entries: &[(&str, OwnedVariant)]) -> HashMap<String, OwnedVariant> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.try_clone().unwrap()))
        .collect()
}

fn s(v: &str) -> OwnedVariant {
    OwnedVariant::from(Str::from(v.to_string()))
}

fn properties_changed(path: &str, iface: &str, changed: &[(&str, &str)]) -> Message {
    let changed: HashMap<&str, Variant<'_>> = changed.iter().map(|(k, v)| (*k, Variant::from(*v))).collect();
    Message::signal(path, "org.freedesktop.DBus.Properties", "PropertiesChanged")
        .build(&(iface, changed, Vec::<&str>::new()))
        .unwrap()
}

#[test]
fn decodes_unit_changes_from_properties_changed() {
    let msg = properties_changed(
        "/org/freedesktop/systemd1/unit/debvisor_2dagent_2eservice",
        "org.freedesktop.systemd1.Unit",
        &[
            ("ActiveState", "deactivating"),
            ("SubState", "stop-sigterm"),
            ("Id", "x"),
        ],
    );
    assert_eq!(
        unit_change(&msg),
        Some(UnitChange {
            name: "debvisor-agent.service".into(),
            active_state: "deactivating".into(),
            sub_state: "stop-sigterm".into(),
        })
    );
    // No ActiveState, another interface, another path: nothing.
    let no_state = properties_changed(
        "/org/freedesktop/systemd1/unit/cron_2eservice",
        "org.freedesktop.systemd1.Unit",
        &[("Description", "x")],
    );
    let service_iface = properties_changed(
        "/org/freedesktop/systemd1/unit/cron_2eservice",
        "org.freedesktop.systemd1.Service",
        &[("ActiveState", "active")],
    );
    let job = properties_changed(
        "/org/freedesktop/systemd1/job/42",
        "org.freedesktop.systemd1.Unit",
        &[("ActiveState", "active")],
    );
    for msg in [no_state, service_iface, job] {
        assert_eq!(unit_change(&msg), None);
    }
    // Only ActiveState: sub state left empty.
    let only_active = properties_changed(
        "/org/freedesktop/systemd1/unit/cron_2eservice",
        "org.freedesktop.systemd1.Unit",
        &[("ActiveState", "active")],
    );
    assert_eq!(unit_change(&only_active).unwrap().sub_state, "");
}

#[test]
fn service_detail_maps_none_values() {
    let unit = props(&[
        ("Id", s("cron.service")),
        ("Description", s("Regular background program processing daemon")),
        ("LoadState", s("loaded")),
        ("ActiveState", s("active")),
        ("SubState", s("running")),
        ("UnitFileState", s("enabled")),
        ("FragmentPath", s("/lib/systemd/system/cron.service")),
        ("ActiveEnterTimestamp", OwnedVariant::from(1_700_000_000_000_000u64)),
    ]);
    let service = props(&[
        ("MainPID", OwnedVariant::from(612u32)),
        ("NRestarts", OwnedVariant::from(2u32)),
        ("MemoryCurrent", OwnedVariant::from(u64::MAX)),
        ("ExecMainStartTimestamp", OwnedVariant::from(0u64)),
    ]);
    let d = detail_from_properties("cron.service", &unit, Some(&service)).unwrap();
    assert_eq!(d.name, "cron.service");
    assert_eq!(d.unit_file_state.as_deref(), Some("enabled"));
    assert_eq!(d.fragment_path.as_deref(), Some("/lib/systemd/system/cron.service"));
    assert_eq!(d.active_enter_timestamp_us, Some(1_700_000_000_000_000));
    assert_eq!((d.main_pid, d.n_restarts), (Some(612), Some(2)));
    assert_eq!((d.memory_current_bytes, d.exec_main_start_timestamp_us), (None, None));

    let timer = props(&[
        ("Id", s("fstrim.timer")),
        ("LoadState", s("loaded")),
        ("UnitFileState", s("")),
        ("ActiveEnterTimestamp", OwnedVariant::from(0u64)),
    ]);
    let d = detail_from_properties("fstrim.timer", &timer, None).unwrap();
    assert_eq!(
        (d.unit_file_state, d.fragment_path, d.active_enter_timestamp_us),
        (None, None, None)
    );
    assert_eq!((d.main_pid, d.n_restarts, d.memory_current_bytes), (None, None, None));

    let missing = props(&[("Id", s("nope.service")), ("LoadState", s("not-found"))]);
    let e = detail_from_properties("nope.service", &missing, None).unwrap_err();
    assert!(
        matches!(e, UnitsError::NotFound { ref unit } if unit == "nope.service"),
        "{e:?}"
    );
}

#[test]
fn unit_files_add_installed_units_and_states() {
    let mut units = BTreeMap::new();
    units.insert(
        "cron.service".to_string(),
        UnitInfo {
            name: "cron.service".into(),
            description: "cron".into(),
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            unit_file_state: None,
        },
    );
    let files = [
        ("/lib/systemd/system/cron.service", "enabled"),
        ("/lib/systemd/system/ssh.service", "disabled"),
        ("/lib/systemd/system/getty@.service", "enabled"),
        ("/etc/systemd/system/sshd.service", "alias"),
        ("/lib/systemd/system/weird name.service", "static"),
    ];
    merge_unit_files(
        &mut units,
        files.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect(),
    );
    let names: Vec<&str> = units.keys().map(String::as_str).collect();
    assert_eq!(names, ["cron.service", "ssh.service"]);
    assert_eq!(units["cron.service"].unit_file_state.as_deref(), Some("enabled"));
    assert_eq!(units["cron.service"].load_state, "loaded");
    let ssh = &units["ssh.service"];
    assert_eq!(
        (
            ssh.load_state.as_str(),
            ssh.active_state.as_str(),
            ssh.unit_file_state.as_deref()
        ),
        (NOT_LOADED, "inactive", Some("disabled"))
    );
}

/// Against the host's systemd when there is one: lists and reads units, never
/// starts or stops any.
#[tokio::test]
async fn host_systemd_lists_and_gets_units() {
    if !std::path::Path::new("/run/systemd/system").exists() {
        eprintln!("skipped: this host does not run systemd (/run/systemd/system is missing)");
        return;
    }
    let units = SystemdUnits::connect().await.expect("connect to systemd");
    let mut changes = units.subscribe();
    let listed = units.list(&UnitFilter::default()).await.expect("list units");
    assert!(
        listed.iter().any(|u| u.name == "init.scope" || u.name == "-.slice"),
        "{listed:?}"
    );
    let all = units
        .list(&UnitFilter {
            include_inactive: true,
            types: vec![UnitType::Service],
            ..UnitFilter::default()
        })
        .await
        .expect("list unit files");
    assert!(all.len() >= listed.iter().filter(|u| u.name.ends_with(".service")).count());
    let service = listed
        .iter()
        .find(|u| u.name.ends_with(".service") && u.active_state == "active")
        .expect("an active service");
    let name = UnitName::try_from(service.name.as_str()).unwrap();
    let detail = units.get(&name).await.expect("get unit");
    assert_eq!(detail.name, service.name);
    assert_eq!(detail.load_state, "loaded");
    let missing = UnitName::try_from("debvisor-no-such-unit-4711.service").unwrap();
    let e = units.get(&missing).await.unwrap_err();
    assert!(matches!(e, UnitsError::NotFound { .. }), "{e:?}");
    assert!(matches!(
        changes.try_recv(),
        Ok(_) | Err(broadcast::error::TryRecvError::Empty)
    ));
}
