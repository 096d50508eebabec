//! Runs the built `debvisorctl update …` with `--socket` against the real
//! agent server (its update service on a fake RAUC), in-process.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{code, run_with_socket, stderr, stdout};
use debvisor_agent::config::AgentConfig;
use debvisor_agent::server;
use debvisor_agent::update_service::UpdateBackend;
use debvisor_rauc::Rauc;
use debvisor_rauc::fakes::FakeRauc;
use debvisor_telemetry::Metrics;

struct Agent {
    dir: tempfile::TempDir,
    rauc: FakeRauc,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Agent {
    async fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let (bound, backends) = common::sim_agent(dir.path(), "ctl-update").await;
        let rauc = FakeRauc::new("debvisor-node-x86_64").with_step(Duration::from_millis(5));
        let update = UpdateBackend::with_rauc(Arc::new(rauc.clone()), dir.path().join("updates"), true);
        let config = server::default_config_origin(backends.host.as_ref());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve_with_update(
            bound,
            backends,
            config,
            update,
            AgentConfig::default(),
            Metrics::new(),
            async {
                let _ = stopped.await;
            },
        ));
        Agent { dir, rauc, _stop: stop }
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        run_with_socket(&self.dir.path().join("agent.sock"), args).await
    }

    fn bundle(&self, name: &str, compatible: &str, version: &str) -> String {
        let mut b = format!("hsqs\0[update]\ncompatible={compatible}\nversion={version}\n").into_bytes();
        // More than one upload chunk (512 KiB).
        b.extend(std::iter::repeat_n(7u8, 1_300_000));
        let p = self.dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        p.display().to_string()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_install_watch_and_marks() {
    let agent = Agent::start().await;

    let o = agent.run(&["update", "status"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("*** SIMULATED NODE"), "{out}");
    assert!(out.contains("BOOTED      rootfs.0 (A), good"), "{out}");
    assert!(out.contains("NEXT BOOT   rootfs.0"), "{out}");
    assert!(out.contains("rootfs.1  B     inactive  bad"), "{out}");

    // An upload of a local file, followed to its end.
    let good = agent.bundle("good.raucb", "debvisor-node-x86_64", "0.2.0");
    let o = agent.run(&["update", "install", &good]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Installed 0.2.0 into rootfs.1 (1.2 MiB received). Reboot to run it: `debvisorctl reboot`.\n"
    );
    let st = agent.rauc.status().await.unwrap();
    assert_eq!(st.primary, "rootfs.1");
    assert_eq!(st.slots[1].size, 1_300_000 + 60);

    // The last install, watched afterwards, as JSON lines.
    let o = agent.run(&["--json", "update", "watch"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["phase"], 4);
    assert_eq!(v["source"], "upload:good.raucb");

    let o = agent.run(&["update", "status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["primary_slot"], "rootfs.1");
    assert_eq!(v["slots"][1]["bundle_version"], "0.2.0");

    // A bundle for another board: the class, the cause and the next step.
    let wrong = agent.bundle("wrong.raucb", "other-board", "1");
    let o = agent.run(&["update", "install", &wrong]).await;
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("failed (wrong compatible)"), "{err}");
    assert!(err.contains("other-board"), "{err}");
    assert!(err.contains("next: Build the bundle for this kind of node"), "{err}");

    // Nothing listens at the URL.
    let o = agent
        .run(&["update", "install", "http://127.0.0.1:1/update.raucb"])
        .await;
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("failed (download failed)"), "{err}");
    assert!(err.contains("http://127.0.0.1:1/update.raucb"), "{err}");

    // Usage errors.
    let o = agent.run(&["update", "install", "/nonexistent/update.raucb"]).await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("neither an http(s) URL nor a readable bundle file"),
        "{}",
        stderr(&o)
    );
    let o = agent.run(&["update", "install", &good, "--sha256", "xyz"]).await;
    assert_eq!(code(&o), 2);

    // Marks and rollback.
    let o = agent.run(&["update", "mark-bad", "other"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "marked slot rootfs.1 as bad.\nNext boot: rootfs.0.\n");
    let o = agent.run(&["update", "rollback"]).await;
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("rootfs.1 (B) is marked \"bad\""), "{}", stderr(&o));
    let o = agent.run(&["update", "mark-good", "rootfs.1"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = agent.run(&["update", "rollback"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Rolled back: activated slot rootfs.1.\nNext boot: rootfs.1.\n"
    );
    let o = agent.run(&["update", "mark-good"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "marked slot rootfs.0 as good.\nNext boot: rootfs.1.\n");
}
