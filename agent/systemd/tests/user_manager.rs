//! `SystemdUnits` against a real systemd: a user manager (`systemd --user`)
//! started for the test in a private mount namespace, on its own bus, with
//! its own unit files in a temporary directory. It never touches the host's
//! units. Needs root (for the namespace), `unshare`, `/lib/systemd/systemd`
//! and `dbus-daemon`; elsewhere it prints why it skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use debvisor_api::validate::UnitName;
use debvisor_systemd::{SystemdUnits, UnitFilter, Units, UnitsError};
use tokio::time::timeout;

/// Mounts a tmpfs on /run/systemd in the namespace so that the user manager
/// believes the system runs systemd, then becomes the user manager.
const START: &str = "mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/system \
                     && exec /lib/systemd/systemd --user --log-target=console";

const SLEEPER: &str = "[Unit]\nDescription=DebVisor test sleeper\n\n[Service]\nExecStart=/bin/sleep 600\n\n\
                       [Install]\nWantedBy=default.target\n";
const FAILING: &str =
    "[Unit]\nDescription=DebVisor failing test unit\n\n[Service]\nType=oneshot\nExecStart=/bin/false\n";

fn missing_prerequisite() -> Option<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let runs = |p: &str| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !root {
        Some("needs root for a private mount namespace")
    } else if !runs("unshare") {
        Some("needs unshare(1) (util-linux)")
    } else if !runs("dbus-daemon") || !Path::new("/lib/systemd/systemd").exists() {
        Some("needs dbus-daemon and /lib/systemd/systemd (apt install dbus systemd)")
    } else if !Path::new("/run/systemd").is_dir() {
        Some("needs the directory /run/systemd to mount over")
    } else {
        None
    }
}

/// The user manager; sent SIGTERM on drop so that it stops its units.
struct UserManager {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl UserManager {
    fn start() -> UserManager {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("config/systemd/user");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::write(units.join("debvisor-test.service"), SLEEPER).unwrap();
        std::fs::write(units.join("debvisor-fail.service"), FAILING).unwrap();
        std::os::unix::fs::symlink("/dev/null", units.join("debvisor-masked.service")).unwrap();
        let child = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "/bin/sh", "-c", START])
            .env("XDG_RUNTIME_DIR", dir.path().join("run"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("HOME", dir.path())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        UserManager { child, dir }
    }

    fn bus(&self) -> PathBuf {
        self.dir.path().join("run/bus")
    }

    /// Connects once the manager's bus answers.
    async fn connect(&self) -> SystemdUnits {
        let address = format!("unix:path={}", self.bus().display());
        for _ in 0..100 {
            if self.bus().exists()
                && let Ok(conn) = zbus::connection::Builder::address(address.as_str()).build().await
                && let Ok(units) = SystemdUnits::connect_to(conn).await
            {
                return units.with_job_timeout(Duration::from_secs(20));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the user manager's bus {} did not come up", self.bus().display());
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn name(s: &str) -> UnitName {
    UnitName::try_from(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_user_manager_runs_jobs_and_reports_changes() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: {why}");
        return;
    }
    let manager = UserManager::start();
    let units = manager.connect().await;
    let test = name("debvisor-test.service");

    // Installed but not loaded: only in the list with unit files.
    let filter = UnitFilter {
        patterns: vec!["debvisor-*".try_into().unwrap()],
        include_inactive: true,
        ..UnitFilter::default()
    };
    let listed = units.list(&filter).await.unwrap();
    let entry = listed
        .iter()
        .find(|u| u.name == "debvisor-test.service")
        .expect("unit file listed");
    assert_eq!(entry.unit_file_state.as_deref(), Some("disabled"));
    assert_eq!(entry.active_state, "inactive");

    let detail = units.get(&test).await.unwrap();
    assert_eq!(
        (detail.load_state.as_str(), detail.active_state.as_str()),
        ("loaded", "inactive")
    );
    assert_eq!(detail.description, "DebVisor test sleeper");
    assert!(
        detail
            .fragment_path
            .unwrap()
            .ends_with("config/systemd/user/debvisor-test.service")
    );
    assert_eq!(detail.main_pid, None);

    let mut changes = units.subscribe();
    let job = units.start(&test).await.unwrap();
    assert_eq!(job.result, "done", "{job:?}");
    let running = units.get(&test).await.unwrap();
    assert_eq!(
        (running.active_state.as_str(), running.sub_state.as_str()),
        ("active", "running")
    );
    let pid = running.main_pid.expect("main PID");
    assert!(running.active_enter_timestamp_us.is_some() && running.exec_main_start_timestamp_us.is_some());
    assert_eq!(running.n_restarts, Some(0));
    let change = timeout(Duration::from_secs(10), async {
        loop {
            let c = changes.recv().await.unwrap();
            if c.name == "debvisor-test.service" && c.active_state == "active" {
                return c;
            }
        }
    })
    .await
    .expect("an ActiveState change of debvisor-test.service");
    assert_eq!(change.sub_state, "running");

    assert!(
        units
            .list(&UnitFilter::default())
            .await
            .unwrap()
            .iter()
            .any(|u| u.name == "debvisor-test.service")
    );

    units.restart(&test).await.unwrap();
    assert_ne!(units.get(&test).await.unwrap().main_pid, Some(pid));
    let stopped = units.stop(&test).await.unwrap();
    assert_eq!(stopped.result, "done");
    assert_eq!(units.get(&test).await.unwrap().active_state, "inactive");

    let failed = units.start(&name("debvisor-fail.service")).await.unwrap();
    assert_eq!(failed.result, "failed");
    let failed_state = units.get(&name("debvisor-fail.service")).await.unwrap();
    assert_eq!(failed_state.active_state, "failed");

    let masked = units.start(&name("debvisor-masked.service")).await.unwrap_err();
    assert!(matches!(masked, UnitsError::Refused { .. }), "{masked:?}");
    assert!(masked.to_string().contains("masked"), "{masked}");
    let missing = name("debvisor-no-such-unit.service");
    for e in [
        units.get(&missing).await.unwrap_err(),
        units.start(&missing).await.unwrap_err(),
    ] {
        assert!(matches!(e, UnitsError::NotFound { .. }), "{e:?}");
    }

    let enabled = units.enable(&test).await.unwrap();
    assert_eq!(enabled.len(), 1, "{enabled:?}");
    assert_eq!(enabled[0].kind, "symlink");
    assert!(
        enabled[0].path.ends_with("default.target.wants/debvisor-test.service"),
        "{enabled:?}"
    );
    assert!(
        enabled[0].source.ends_with("config/systemd/user/debvisor-test.service"),
        "{enabled:?}"
    );
    assert_eq!(
        units.get(&test).await.unwrap().unit_file_state.as_deref(),
        Some("enabled")
    );
    let disabled = units.disable(&test).await.unwrap();
    assert_eq!(disabled[0].kind, "unlink");
    assert_eq!(
        units.get(&test).await.unwrap().unit_file_state.as_deref(),
        Some("disabled")
    );
    let e = units.enable(&missing).await.unwrap_err();
    assert!(matches!(e, UnitsError::NotFound { .. }), "{e:?}");
}
