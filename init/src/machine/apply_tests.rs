use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use debvisor_api::machine::MachineConfig;

use super::*;
use crate::machine::fakes::RecordingHost;

fn cfg(text: &str) -> MachineConfig {
    MachineConfig::from_toml(text).unwrap()
}

/// A root with a zone database holding UTC and Europe/Berlin, an image
/// network file and an unrelated admin file.
fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let zi = under(dir.path(), ZONEINFO_DIR);
    std::fs::create_dir_all(zi.join("Europe")).unwrap();
    std::fs::write(zi.join("UTC"), "TZif").unwrap();
    std::fs::write(zi.join("Europe/Berlin"), "TZif").unwrap();
    let net = under(dir.path(), NETWORK_DIR);
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(net.join("50-admin.network"), "[Match]\nName=lo\n").unwrap();
    dir
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

const WORKER: &str = include_str!("../../../recipes/machine/worker.toml");
const STATIC_VLAN: &str = include_str!("../../../recipes/machine/static-vlan.toml");

#[tokio::test]
async fn applies_everything_and_a_second_apply_changes_nothing() {
    let root = root();
    let host = RecordingHost::new();
    let c = cfg(WORKER);
    let report = apply(&c, root.path(), &host).await.unwrap();
    assert_eq!(
        report.changes,
        [
            "network: 10-debvisor-default.network written",
            "ntp",
            "hostname",
            "timezone",
            "ssh keys",
            "role: worker",
        ]
    );
    assert_eq!(
        host.take(),
        [
            "reload_network",
            "restart_unit systemd-timesyncd.service",
            "set_hostname worker-07.edge.example",
        ]
    );
    let r = root.path();
    assert_eq!(
        std::fs::read_to_string(under(r, "/etc/hostname")).unwrap(),
        "worker-07.edge.example\n"
    );
    assert_eq!(
        std::fs::read_link(under(r, "/etc/localtime")).unwrap(),
        Path::new("../usr/share/zoneinfo/Europe/Berlin")
    );
    assert!(
        std::fs::read_to_string(under(r, TIMESYNCD_DROPIN))
            .unwrap()
            .ends_with("[Time]\nNTP=0.debian.pool.ntp.org 192.0.2.123\n")
    );
    let keys = under(r, AUTHORIZED_KEYS);
    assert!(
        std::fs::read_to_string(&keys)
            .unwrap()
            .contains("\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
    );
    assert_eq!(mode(&keys), 0o600);
    assert_eq!(mode(keys.parent().unwrap()), 0o700);
    let role = std::fs::read_to_string(under(r, &role_file())).unwrap();
    assert_eq!(
        role,
        "[role]\nkind = \"worker\"\n\n[cluster]\ncontroller = \"controller.edge.example:7443\"\njoin_token = \"K7x2-Qm9p.Lr4vT8wZ3n\"\n"
    );
    assert_eq!(mode(&under(r, &role_file())), 0o600);

    let again = apply(&c, r, &host).await.unwrap();
    assert!(again.is_empty(), "{:?}", again.changes);
    assert!(host.take().is_empty());
    // No temporary files are left behind.
    assert_eq!(names(&under(r, "/etc")), ["hostname", "localtime", "systemd"]);
}

#[tokio::test]
async fn changing_the_network_removes_only_our_stale_files() {
    let root = root();
    let host = RecordingHost::new();
    let net = under(root.path(), NETWORK_DIR);
    apply(&cfg(STATIC_VLAN), root.path(), &host).await.unwrap();
    assert_eq!(
        names(&net),
        [
            "10-debvisor-enp0s2.network",
            "10-debvisor-vlan100.netdev",
            "10-debvisor-vlan100.network",
            "50-admin.network",
        ]
    );
    host.take();
    let report = apply(
        &cfg("version = 1\n[node]\nhostname = \"edge-static\"\n"),
        root.path(),
        &host,
    )
    .await
    .unwrap();
    assert_eq!(
        report.changes,
        [
            "network: 10-debvisor-default.network written",
            "network: 10-debvisor-enp0s2.network removed",
            "network: 10-debvisor-vlan100.netdev removed",
            "network: 10-debvisor-vlan100.network removed",
        ]
    );
    assert_eq!(host.take(), ["reload_network"]);
    assert_eq!(names(&net), ["10-debvisor-default.network", "50-admin.network"]);
    assert_eq!(
        std::fs::read_to_string(net.join("50-admin.network")).unwrap(),
        "[Match]\nName=lo\n"
    );
}

#[tokio::test]
async fn unknown_timezone_is_refused_before_anything_changes() {
    let root = root();
    let host = RecordingHost::new();
    let err = apply(
        &cfg("version = 1\n[node]\nhostname = \"x\"\ntimezone = \"Mars/Olympus\"\n"),
        root.path(),
        &host,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("node.timezone = \"Mars/Olympus\": no such zone in "),
        "{err}"
    );
    assert!(!under(root.path(), "/etc/hostname").exists());
    assert!(host.take().is_empty());
}

#[tokio::test]
async fn admin_hash_is_private_and_dropping_ssh_keys_removes_only_our_file() {
    use argon2::password_hash::PasswordHasher;
    let root = root();
    let host = RecordingHost::new();
    let hash = argon2::Argon2::default()
        .hash_password_with_salt(b"pw", b"saltsaltsaltsalt")
        .unwrap()
        .to_string();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICRFRfS0d9jd0A9uawfS85b1ZlQOJnm+JghzcXpvN8Ix a@b";
    let with = format!("version = 1\n[admin]\npassword_hash = '{hash}'\nssh_authorized_keys = ['{key}']\n");
    let report = apply(&cfg(&with), root.path(), &host).await.unwrap();
    assert!(report.changes.contains(&"admin password".to_string()));
    let hash_path = under(root.path(), ADMIN_PASSWORD_HASH);
    assert_eq!(std::fs::read_to_string(&hash_path).unwrap(), hash);
    assert_eq!(mode(&hash_path), 0o600);

    let without = apply(&cfg("version = 1\n"), root.path(), &host).await.unwrap();
    assert_eq!(without.changes, ["ssh keys removed"]);
    assert!(
        hash_path.exists(),
        "the admin hash stays when the config no longer sets it"
    );
    // A file the admin wrote by hand is left alone.
    let keys = under(root.path(), AUTHORIZED_KEYS);
    std::fs::write(&keys, format!("{key}\n")).unwrap();
    assert!(
        apply(&cfg("version = 1\n"), root.path(), &host)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(keys.exists());
}

#[tokio::test]
async fn a_failing_live_action_is_reported() {
    let root = root();
    let host = RecordingHost::new();
    host.fail_on("reload_network");
    let err = apply(&cfg("version = 1\n"), root.path(), &host).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Cannot reload systemd-networkd: reload_network refused by the test"
    );
}

#[tokio::test]
async fn mac_matched_parent_is_resolved_from_sysfs() {
    let root = root();
    let nic = under(root.path(), SYS_CLASS_NET).join("ens3");
    std::fs::create_dir_all(nic.join("device")).unwrap();
    std::fs::write(nic.join("address"), "52:54:00:12:34:56\n").unwrap();
    let vlan = under(root.path(), SYS_CLASS_NET).join("vlan100");
    std::fs::create_dir_all(&vlan).unwrap();
    std::fs::write(vlan.join("address"), "52:54:00:12:34:56\n").unwrap();
    let c = cfg("version = 1\n[[network.interfaces]]\nmac = \"52:54:00:12:34:56\"\n\
                 [[network.vlans]]\nname = \"vlan100\"\nid = 100\nparent = \"ens3\"\n");
    let host = RecordingHost::new();
    apply(&c, root.path(), &host).await.unwrap();
    let net = under(root.path(), NETWORK_DIR);
    assert_eq!(
        names(&net),
        [
            "10-debvisor-mac-525400123456.network",
            "10-debvisor-vlan100.netdev",
            "10-debvisor-vlan100.network",
            "50-admin.network",
        ]
    );
    let mac_file = std::fs::read_to_string(net.join("10-debvisor-mac-525400123456.network")).unwrap();
    assert!(mac_file.ends_with("VLAN=vlan100\n"), "{mac_file}");
}
