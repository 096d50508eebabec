//! `debvisor.vm.v1` through the agent's Unix socket and on to the VM daemon
//! (in-process here), over libvirt's test driver (real libvirt: its XML
//! checks, state machine, storage pool and snapshots, without QEMU) with a
//! private node description per test, and a real audit log.

use std::sync::Arc;

use debvisor_agent::vm_service::{NO_VMS, Vmd};
use debvisor_api::vm::v1::vm_service_client::VmServiceClient;
use debvisor_api::vm::v1::{
    BootDevice, CloneVmRequest, ConsoleInput, CreateSnapshotRequest, CreateVmRequest, DeleteVmRequest, DiskSpec,
    ListVmsRequest, ListVolumesRequest, NicSpec, SetAutostartRequest, SnapshotRef, VmRef, VmSpec, VmState, disk_spec,
};
use debvisor_audit::{AuditLog, AuditRecord, Query};
use debvisor_virt::{Hypervisor as _, Libvirt, test_driver};
use tonic::Code;
use tonic::transport::Channel;

struct Agent {
    client: VmServiceClient<Channel>,
    /// The agent's libvirt (test driver), to act beside the API.
    hv: Option<Arc<Libvirt>>,
    audit: AuditLog,
    _served: crate::Served,
    _dir: tempfile::TempDir,
}

impl Agent {
    async fn vm_records(&self) -> Vec<AuditRecord> {
        self.audit
            .query(&Query {
                action: Some("vm.*".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .records
    }
}

async fn agent(with_vms: bool) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let audit = AuditLog::open_in_memory().await.unwrap();
    let mut backends = crate::sim_backends("vm-test", audit.clone(), None);
    let mut hv = None;
    if with_vms {
        let opts = test_driver::host(dir.path(), &[("installer.iso", 310)]).unwrap();
        let lv = Arc::new(Libvirt::open(opts.clone()).unwrap());
        hv = Some(lv.clone());
        let socket = dir.path().join("vmd.sock");
        debvisor_vmd::spawn(&socket, Arc::new(debvisor_vmd::VmBackend::with(lv, opts))).unwrap();
        backends.vm = Some(Vmd::new(socket));
    }
    let served = crate::serve(dir.path(), backends).await;
    let client = VmServiceClient::new(served.channel.clone());
    Agent {
        client,
        hv,
        audit,
        _served: served,
        _dir: dir,
    }
}

fn spec(name: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 256,
        disks: vec![
            DiskSpec {
                source: Some(disk_spec::Source::NewSizeMib(512)),
            },
            DiskSpec {
                source: Some(disk_spec::Source::IsoVolume("installer.iso".into())),
            },
        ],
        nics: vec![NicSpec::default()],
        boot: vec![BootDevice::Cdrom as i32, BootDevice::Disk as i32],
        ..Default::default()
    }
}

fn vm(name: &str) -> VmRef {
    VmRef { name: name.into() }
}

#[tokio::test]
async fn vms_are_created_run_snapshotted_cloned_and_deleted_with_every_change_audited() {
    let mut a = agent(true).await;
    let c = &mut a.client;
    let created = c
        .create_vm(CreateVmRequest {
            spec: Some(spec("web-1")),
        })
        .await
        .unwrap()
        .into_inner();
    let s = created.summary.clone().unwrap();
    assert_eq!((s.name.as_str(), s.state_text.as_str()), ("web-1", "shutoff"));
    assert_eq!(created.boot, ["cdrom", "hd"]);
    assert_eq!(created.disks[0].capacity_bytes, 512 << 20);
    assert!(created.disks[1].cdrom);

    let running = c.start_vm(vm("web-1")).await.unwrap().into_inner();
    assert_eq!(running.summary.unwrap().state, VmState::Running as i32);
    let e = c.start_vm(vm("web-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "Cannot start web-1: it is running: shut it down or stop it first"
    );
    let paused = c.suspend_vm(vm("web-1")).await.unwrap().into_inner();
    assert_eq!(paused.summary.unwrap().state_text, "paused");
    c.resume_vm(vm("web-1")).await.unwrap();

    let snap = c
        .create_snapshot(CreateSnapshotRequest {
            name: "web-1".into(),
            snapshot: "s1".into(),
            description: "before".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (snap.vm_state.as_str(), snap.description.as_str()),
        ("running", "before")
    );
    let e = c
        .create_snapshot(CreateSnapshotRequest {
            name: "web-1".into(),
            snapshot: "s2".into(),
            description: "two\nlines".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("description: "), "{}", e.message());
    c.stop_vm(vm("web-1")).await.unwrap();
    let back = c
        .revert_snapshot(SnapshotRef {
            name: "web-1".into(),
            snapshot: "s1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.summary.unwrap().state_text, "running");
    let snaps = c.list_snapshots(vm("web-1")).await.unwrap().into_inner().snapshots;
    assert_eq!(snaps.len(), 1);
    c.delete_snapshot(SnapshotRef {
        name: "web-1".into(),
        snapshot: "s1".into(),
    })
    .await
    .unwrap();

    let e = c
        .delete_vm(DeleteVmRequest {
            name: "web-1".into(),
            delete_disks: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    c.shutdown_vm(vm("web-1")).await.unwrap();
    let auto = c
        .set_autostart(SetAutostartRequest {
            name: "web-1".into(),
            autostart: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(auto.summary.unwrap().autostart);

    let copy = c
        .clone_vm(CloneVmRequest {
            name: "web-1".into(),
            new_name: "web-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(copy.disks[0].path, "/data/vm/web-2-disk0.qcow2");
    assert_eq!(copy.boot, ["cdrom", "hd"]);
    let names: Vec<String> = c
        .list_vms(ListVmsRequest {})
        .await
        .unwrap()
        .into_inner()
        .vms
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["web-1", "web-2"]);

    for n in ["web-1", "web-2"] {
        c.delete_vm(DeleteVmRequest {
            name: n.into(),
            delete_disks: true,
        })
        .await
        .unwrap();
    }
    let vols: Vec<String> = c
        .list_volumes(ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner()
        .volumes
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(vols, ["installer.iso"]);
    let e = c.get_vm(vm("web-1")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "No VM is called web-1"));

    let records = a.vm_records().await;
    let actions: Vec<(&str, bool)> = records.iter().map(|r| (r.action.as_str(), r.ok)).collect();
    for (action, ok) in [
        ("vm.create", true),
        ("vm.start", true),
        ("vm.start", false),
        ("vm.suspend", true),
        ("vm.resume", true),
        ("vm.snapshot.create", true),
        ("vm.snapshot.create", false),
        ("vm.stop", true),
        ("vm.snapshot.revert", true),
        ("vm.snapshot.delete", true),
        ("vm.delete", false),
        ("vm.shutdown", true),
        ("vm.autostart", true),
        ("vm.clone", true),
        ("vm.delete", true),
    ] {
        assert!(actions.contains(&(action, ok)), "no {action} ok={ok} in {actions:?}");
    }
    assert!(
        records
            .iter()
            .any(|r| r.action == "vm.snapshot.revert" && r.target == "vm:web-1/snapshot:s1")
    );
}

#[tokio::test]
async fn bad_specs_are_refused_naming_the_field() {
    let mut a = agent(true).await;
    let c = &mut a.client;
    let cases: Vec<(VmSpec, Code, &str)> = vec![
        (
            VmSpec {
                name: "web 1".into(),
                ..spec("x")
            },
            Code::InvalidArgument,
            "name: ",
        ),
        (
            VmSpec {
                memory_mib: 8,
                ..spec("web-1")
            },
            Code::InvalidArgument,
            "memory_mib: ",
        ),
        (
            VmSpec {
                disks: vec![DiskSpec {
                    source: Some(disk_spec::Source::ImportVolume("../../etc/shadow".into())),
                }],
                boot: Vec::new(),
                ..spec("web-1")
            },
            Code::InvalidArgument,
            "disks[0].import_volume: ",
        ),
        (
            VmSpec {
                disks: vec![DiskSpec {
                    source: Some(disk_spec::Source::ImportVolume("missing.img".into())),
                }],
                boot: Vec::new(),
                ..spec("web-1")
            },
            Code::InvalidArgument,
            "disks[0].import_volume: the storage pool has no volume \"missing.img\"",
        ),
        (
            VmSpec {
                memory_mib: 8192,
                ..spec("web-1")
            },
            Code::FailedPrecondition,
            "memory_mib: 8192 MiB is more than the 4096 MiB",
        ),
        (
            VmSpec {
                nics: vec![NicSpec {
                    vlan: 10,
                    ..Default::default()
                }],
                ..spec("web-1")
            },
            Code::InvalidArgument,
            "nics[0].vlan: the NAT network carries no VLANs",
        ),
    ];
    for (s, code, start) in cases {
        let e = c.create_vm(CreateVmRequest { spec: Some(s) }).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().starts_with(start),
            "{:?} does not start with {start:?}",
            e.message()
        );
    }
    let e = c.create_vm(CreateVmRequest { spec: None }).await.unwrap_err();
    assert!(e.message().starts_with("name: "), "{}", e.message());
    let e = c.get_vm(vm("a/b")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(c.list_vms(ListVmsRequest {}).await.unwrap().into_inner().vms.is_empty());
    let records = a.vm_records().await;
    assert_eq!(records.iter().filter(|r| !r.ok && r.action == "vm.create").count(), 7);
}

#[tokio::test]
async fn a_vm_daemon_that_is_down_is_named_and_reached_once_it_is_up() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let audit = AuditLog::open_in_memory().await.unwrap();
    let mut backends = crate::sim_backends("vm-test", audit.clone(), None);
    let socket = dir.path().join("vmd.sock");
    backends.vm = Some(Vmd::new(&socket));
    let served = crate::serve(dir.path(), backends).await;
    let mut c = VmServiceClient::new(served.channel.clone());

    let e = c.list_vms(ListVmsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let m = e.message();
    assert!(
        m.contains(&socket.display().to_string()) && m.contains("systemctl status debvisor-vmd"),
        "{m}"
    );
    // A change that could not be made is recorded as failed.
    assert_eq!(c.start_vm(vm("web-1")).await.unwrap_err().code(), Code::Unavailable);

    // The daemon starts after the agent: the next call reaches it.
    let opts = test_driver::host(dir.path(), &[]).unwrap();
    let lv = Arc::new(Libvirt::open(opts.clone()).unwrap());
    debvisor_vmd::spawn(&socket, Arc::new(debvisor_vmd::VmBackend::with(lv, opts))).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the daemon's socket is root's alone");
    assert!(c.list_vms(ListVmsRequest {}).await.unwrap().into_inner().vms.is_empty());

    let records = audit
        .query(&Query {
            action: Some("vm.*".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .records;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0].action.as_str(), records[0].target.as_str(), records[0].ok),
        ("vm.start", "vm:web-1", false)
    );
    assert!(records[0].error.contains("debvisor-vmd"), "{:?}", records[0].error);
}

#[tokio::test]
async fn an_agent_without_vms_says_so() {
    let mut a = agent(false).await;
    let e = a.client.list_vms(ListVmsRequest {}).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unavailable, NO_VMS));
}

#[tokio::test]
async fn watch_streams_the_present_vms_then_each_lifecycle_event() {
    use debvisor_api::vm::v1::{VmEvent, WatchVmsRequest};
    use std::time::Duration;

    let mut a = agent(true).await;
    a.client
        .create_vm(CreateVmRequest {
            spec: Some(spec("old-1")),
        })
        .await
        .unwrap();
    let mut all = a
        .client
        .watch_vms(WatchVmsRequest {
            name: String::new(),
            initial: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut one = a
        .client
        .watch_vms(WatchVmsRequest {
            name: "new-1".into(),
            initial: false,
        })
        .await
        .unwrap()
        .into_inner();
    async fn next(s: &mut tonic::Streaming<VmEvent>) -> VmEvent {
        tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("the stream is open")
    }
    let first = next(&mut all).await;
    assert_eq!((first.name.as_str(), first.event.as_str()), ("old-1", "present"));
    assert_eq!(first.vm.unwrap().state_text, "shutoff");

    a.client
        .create_vm(CreateVmRequest {
            spec: Some(spec("new-1")),
        })
        .await
        .unwrap();
    a.client.start_vm(vm("new-1")).await.unwrap();
    a.client.start_vm(vm("old-1")).await.unwrap();
    a.client.stop_vm(vm("new-1")).await.unwrap();
    a.client
        .delete_vm(DeleteVmRequest {
            name: "new-1".into(),
            delete_disks: true,
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 5 {
        let e = next(&mut all).await;
        seen.push((e.name, e.event, e.detail, e.vm.map(|v| v.state_text)));
    }
    let ev =
        |n: &str, e: &str, d: &str, s: Option<&str>| (n.to_string(), e.to_string(), d.to_string(), s.map(String::from));
    assert_eq!(seen[0], ev("new-1", "defined", "added", Some("shutoff")));
    assert_eq!(&seen[1].0[..], "new-1");
    assert_eq!((&seen[1].1[..], &seen[1].2[..]), ("started", "booted"));
    assert_eq!(seen[2].0, "old-1");
    assert_eq!(seen[3], ev("new-1", "stopped", "destroyed", Some("shutoff")));
    assert_eq!(seen[4], ev("new-1", "undefined", "removed", None));

    // The filtered watch saw only new-1, and no "present" (initial unset).
    let mut mine = Vec::new();
    while mine.len() < 4 {
        let e = next(&mut one).await;
        mine.push((e.name, e.event));
    }
    assert!(mine.iter().all(|(n, _)| n == "new-1"), "{mine:?}");
    let kinds: Vec<_> = mine.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(kinds, ["defined", "started", "stopped", "undefined"]);

    let bad = a
        .client
        .watch_vms(WatchVmsRequest {
            name: "../etc".into(),
            initial: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("name:"), "{}", bad.message());
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_told_to_resync_and_sent_the_vms() {
    use debvisor_api::vm::v1::WatchVmsRequest;
    use std::time::Duration;

    let mut a = agent(true).await;
    a.client
        .create_vm(CreateVmRequest {
            spec: Some(spec("busy-1")),
        })
        .await
        .unwrap();
    let mut slow = a
        .client
        .watch_vms(WatchVmsRequest {
            name: String::new(),
            initial: false,
        })
        .await
        .unwrap()
        .into_inner();
    // Far more events than the agent holds for one watcher (its queue of
    // 256 and the stream's own buffers), none read meanwhile; made on the
    // agent's libvirt directly (the API's rate limit would slow them).
    let hv = a.hv.clone().unwrap();
    tokio::task::spawn_blocking(move || {
        let n = debvisor_virt::VmName::try_from("busy-1").unwrap();
        for _ in 0..400 {
            hv.start(&n).unwrap();
            hv.stop(&n).unwrap();
        }
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    let resync_at = loop {
        let e = tokio::time::timeout(Duration::from_secs(30), slow.message())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("the stream is open");
        seen.push(e.event.clone());
        if e.event == "resync" {
            assert!(e.name.is_empty(), "{e:?}");
            break seen.len();
        }
        assert!(seen.len() < 2000, "no resync in {} events", seen.len());
    };
    // Then the VMs as they are when the resync is sent (the daemon may
    // still have been making events, and the stream's buffers between the
    // daemon, the agent and this client hold a few), ...
    let next = tokio::time::timeout(Duration::from_secs(30), slow.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((next.name.as_str(), next.event.as_str()), ("busy-1", "present"));
    assert!(resync_at < 800, "the watcher got {resync_at} events before the resync");
    // ... and whatever followed, to the end: busy-1 off.
    let mut last = next;
    while let Ok(e) = tokio::time::timeout(Duration::from_secs(2), slow.message()).await {
        last = e.unwrap().expect("the stream is open");
    }
    assert_eq!(last.name, "busy-1");
    assert_eq!(last.vm.unwrap().state_text, "shutoff", "the last event: {}", last.event);
}

/// Opens the console with `msgs` as the caller's side (which stays open
/// when `hold` is true), answering the first output item or the refusal.
async fn console(a: &mut Agent, msgs: Vec<ConsoleInput>, hold: bool) -> Result<Option<Vec<u8>>, tonic::Status> {
    use tokio_stream::StreamExt as _;
    let input = tokio_stream::iter(msgs);
    let input: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = ConsoleInput> + Send>> = if hold {
        Box::pin(input.chain(tokio_stream::pending()))
    } else {
        Box::pin(input)
    };
    let mut out = a.client.open_console(input).await?.into_inner();
    Ok(out.message().await?.map(|m| m.data))
}

#[tokio::test]
async fn a_console_is_refused_with_the_reason_and_the_attempt_is_audited() {
    let mut a = agent(true).await;
    a.client
        .create_vm(CreateVmRequest {
            spec: Some(spec("con-1")),
        })
        .await
        .unwrap();
    let named = |data: &[u8]| ConsoleInput {
        name: "con-1".into(),
        data: data.to_vec(),
    };

    // A VM that is off has no console to open.
    let off = console(&mut a, vec![named(b"")], true).await.unwrap_err();
    assert_eq!(off.code(), Code::FailedPrecondition, "{off:?}");
    assert!(
        off.message().contains("con-1 is shutoff") && off.message().contains("start it"),
        "{off:?}"
    );

    // The test driver runs no QEMU: a running VM has no console either.
    a.client.start_vm(vm("con-1")).await.unwrap();
    let none = console(&mut a, vec![named(b"ls\n")], true).await.unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition, "{none:?}");
    assert!(none.message().contains("no consoles"), "{none:?}");

    // A stream that names no VM, a bad name, one that ends at once, and
    // keystrokes over 64 KiB are refused, naming the field.
    let nameless = console(&mut a, vec![ConsoleInput::default()], true).await.unwrap_err();
    assert_eq!(nameless.code(), Code::InvalidArgument, "{nameless:?}");
    assert!(nameless.message().starts_with("name"), "{nameless:?}");
    let bad = console(
        &mut a,
        vec![ConsoleInput {
            name: "../x".into(),
            data: vec![],
        }],
        true,
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let empty = console(&mut a, vec![], false).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    assert!(empty.message().contains("ended before naming a VM"), "{empty:?}");
    let big = console(
        &mut a,
        vec![named(&vec![b'x'; debvisor_vmd::MAX_CONSOLE_INPUT + 1])],
        true,
    )
    .await
    .unwrap_err();
    assert_eq!(big.code(), Code::InvalidArgument, "{big:?}");
    assert!(big.message().contains("at most 65536"), "{big:?}");

    let records: Vec<_> = a
        .vm_records()
        .await
        .into_iter()
        .filter(|r| r.action == "vm.console")
        .map(|r| (r.target, r.ok))
        .collect();
    // The stream that ended before naming a VM never reached a VM.
    assert_eq!(records.len(), 5, "{records:?}");
    assert!(records.iter().all(|(_, ok)| !ok), "{records:?}");
    assert_eq!(records[0].0, "vm:con-1");
}

#[tokio::test]
async fn a_display_needs_a_running_vm_with_vnc_and_is_audited() {
    let mut a = agent(true).await;
    a.client
        .create_vm(CreateVmRequest {
            spec: Some(spec("dis-1")),
        })
        .await
        .unwrap();
    let client = a.client.clone();
    let open = |name: &str| {
        let mut c = client.clone();
        let first = ConsoleInput {
            name: name.into(),
            data: Vec::new(),
        };
        async move {
            let input = tokio_stream::StreamExt::chain(tokio_stream::iter(vec![first]), tokio_stream::pending());
            c.open_display(input).await.map(drop)
        }
    };
    let off = open("dis-1").await.unwrap_err();
    assert_eq!(off.code(), Code::FailedPrecondition, "{off:?}");
    assert!(
        off.message().contains("dis-1 is shutoff") && off.message().contains("start it"),
        "{off:?}"
    );
    a.client.start_vm(vm("dis-1")).await.unwrap();
    // The test driver's VMs have no VNC server.
    let none = open("dis-1").await.unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition, "{none:?}");
    assert!(none.message().contains("no VNC display"), "{none:?}");
    let missing = open("nope").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let records: Vec<_> = a
        .vm_records()
        .await
        .into_iter()
        .filter(|r| r.action == "vm.display")
        .map(|r| (r.target, r.ok))
        .collect();
    // Newest first.
    assert_eq!(
        records,
        [
            ("vm:nope".to_string(), false),
            ("vm:dis-1".to_string(), false),
            ("vm:dis-1".to_string(), false)
        ]
    );
}
