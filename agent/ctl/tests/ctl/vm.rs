//! Runs the built `debvisorctl vm …` with `--socket` against the real agent
//! server, in-process, whose VM service runs on libvirt's test driver (a
//! private host whose pool holds an ISO).

use crate::common;

use std::sync::Arc;

use common::{code, run_with_socket, stderr, stdout};
use debvisor_agent::config::AgentConfig;
use debvisor_agent::server;
use debvisor_agent::vm_service::Vmd;
use debvisor_telemetry::Metrics;
use debvisor_virt::{Libvirt, test_driver};
use debvisor_vmd::VmBackend;

struct Agent {
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Agent {
    async fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let opts = test_driver::host(dir.path(), &[("debian.iso", 310)]).unwrap();
        let lv = Libvirt::open(opts.clone()).unwrap();
        let (bound, mut backends) = common::sim_agent(dir.path(), "ctl-vm").await;
        let socket = dir.path().join("vmd.sock");
        debvisor_vmd::spawn(&socket, Arc::new(VmBackend::with(Arc::new(lv), opts))).unwrap();
        backends.vm = Some(Vmd::new(socket));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve(
            bound,
            backends,
            AgentConfig::default(),
            Metrics::new(),
            async {
                let _ = stopped.await;
            },
        ));
        Agent { dir, _stop: stop }
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        run_with_socket(&self.dir.path().join("agent.sock"), args).await
    }

    /// Runs `args`, which must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert_eq!(code(&o), 0, "{args:?}: {}{}", stdout(&o), stderr(&o));
        stdout(&o)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_from_the_command_line() {
    let a = Agent::start().await;
    assert!(a.ok(&["vm", "list"]).await.contains("no VMs"));
    let out = a
        .ok(&[
            "vm",
            "create",
            "web-1",
            "--vcpus",
            "2",
            "--memory",
            "512",
            "--disk",
            "new:1G",
            "--disk",
            "iso:debian.iso",
            "--nic",
            "nat",
            "--boot",
            "cdrom,disk",
        ])
        .await;
    assert!(
        out.contains("VM web-1 created (off): `debvisorctl vm start web-1` starts it"),
        "{out}"
    );
    assert!(
        out.contains("/data/vm/web-1-disk0.qcow2") && out.contains("1.0 GiB"),
        "{out}"
    );
    assert!(
        a.ok(&["vm", "start", "web-1"])
            .await
            .contains("web-1: started (running)")
    );
    let list = a.ok(&["vm", "list"]).await;
    assert!(
        list.contains("web-1") && list.contains("running") && list.contains("512 MiB"),
        "{list}"
    );
    let json: serde_json::Value = serde_json::from_str(&a.ok(&["--json", "vm", "show", "web-1"]).await).unwrap();
    assert_eq!(json["summary"]["state_text"], "running");
    assert_eq!(json["boot"], serde_json::json!(["cdrom", "hd"]));

    // The test driver has no consoles: the refusal says so (the console
    // itself is tested with a real libvirtd in qa's vm_console_host).
    let o = a.run(&["vm", "console", "web-1"]).await;
    assert_ne!(code(&o), 0);
    let err = stderr(&o);
    assert!(
        err.contains("Cannot open the console of VM web-1") && err.contains("no consoles"),
        "{err}"
    );

    // A refusal says why and what to do next, and exits non-zero.
    let o = a.run(&["vm", "delete", "web-1"]).await;
    assert_ne!(code(&o), 0);
    let err = stderr(&o);
    assert!(err.contains("Cannot delete VM web-1"), "{err}");
    assert!(err.contains("it is running: shut it down or stop it first"), "{err}");

    a.ok(&["vm", "snapshot", "create", "web-1", "s1", "-d", "before the upgrade"])
        .await;
    let snaps = a.ok(&["vm", "snapshot", "list", "web-1"]).await;
    assert!(snaps.contains("s1") && snaps.contains("before the upgrade"), "{snaps}");
    assert!(a.ok(&["vm", "stop", "web-1"]).await.contains("stopped (shutoff)"));
    assert!(
        a.ok(&["vm", "snapshot", "revert", "web-1", "s1"])
            .await
            .contains("web-1 reverted to s1 (running)")
    );
    a.ok(&["vm", "stop", "web-1"]).await;
    a.ok(&["vm", "clone", "web-1", "web-2"]).await;
    let vols = a.ok(&["vm", "volumes"]).await;
    assert!(
        vols.contains("web-2-disk0.qcow2") && vols.contains("debian.iso"),
        "{vols}"
    );
    assert!(
        a.ok(&["vm", "delete", "web-2"])
            .await
            .contains("deleted with its disks")
    );
    a.ok(&["vm", "delete", "web-1", "--keep-disks"]).await;
    let vols = a.ok(&["vm", "volumes"]).await;
    assert!(
        vols.contains("web-1-disk0.qcow2") && !vols.contains("web-2-disk0"),
        "{vols}"
    );

    // Malformed arguments never reach the agent.
    let o = a.run(&["vm", "create", "x", "--disk", "/etc/passwd"]).await;
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("--disk \"/etc/passwd\": give new:SIZE"),
        "{}",
        stderr(&o)
    );
    let o = a.run(&["vm", "show", "nope"]).await;
    assert!(stderr(&o).contains("No VM is called nope"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_watch_follows_events_until_ctrl_c() {
    use std::process::Stdio;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let a = Agent::start().await;
    a.ok(&["vm", "create", "db-1", "--memory", "256", "--disk", "new:64M"])
        .await;
    let socket = a.dir.path().join("agent.sock").display().to_string();
    let args = ["--socket", &socket, "vm", "watch"].map(String::from);
    let mut child = common::command(&args, &[]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .unwrap()
    };
    let first = next().await;
    assert!(first.ends_with("  db-1  present  now shutoff"), "{first}");
    a.ok(&["vm", "start", "db-1"]).await;
    let started = next().await;
    assert!(started.ends_with("  db-1  started (booted)  now running"), "{started}");
    a.ok(&["vm", "stop", "db-1"]).await;
    let stopped = next().await;
    assert!(
        stopped.ends_with("  db-1  stopped (destroyed)  now shutoff"),
        "{stopped}"
    );

    assert_eq!(common::interrupt(&mut child).await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_display_listens_for_viewers_and_says_why_a_display_did_not_open() {
    use std::process::Stdio;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    let a = Agent::start().await;
    a.ok(&["vm", "create", "gui-1", "--memory", "256", "--disk", "new:64M"])
        .await;
    a.ok(&["vm", "start", "gui-1"]).await;
    let socket = a.dir.path().join("agent.sock").display().to_string();
    let args = ["--socket", &socket, "vm", "display", "gui-1", "--listen", "127.0.0.1:0"].map(String::from);
    let mut child = common::command(&args, &[]).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .unwrap()
    };
    let first = next().await;
    let addr = first
        .strip_prefix("The display of gui-1 is on ")
        .and_then(|r| r.split(':').nth(1))
        .and_then(|p| p.split(':').next())
        .map(|p| format!("127.0.0.1:{p}"))
        .unwrap_or_else(|| panic!("{first}"));
    // A viewer connects; the test driver's VMs have no VNC server, so the
    // viewer is let go and the reason printed.
    let mut viewer = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(20), viewer.read_to_end(&mut buf))
        .await
        .expect("the viewer is let go")
        .unwrap();
    assert_eq!(n, 0);
    let why = next().await;
    assert!(
        why.contains("Cannot open the display of VM gui-1") && why.contains("no VNC display"),
        "{why}"
    );
    assert_eq!(common::interrupt(&mut child).await, Some(0));
}
