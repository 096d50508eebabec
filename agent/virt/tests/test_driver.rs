//! The libvirt backend against libvirt's own test driver: real libvirt
//! code (XML parsing and checks, the domain state machine, storage pools,
//! snapshots) with no QEMU. Each test loads its own node description
//! (`test:///FILE`), so tests never share VMs.

use debvisor_virt::{
    BootDevice, BridgeName, DiskSource, DiskSpec, Firmware, Hypervisor, Libvirt, MacAddr, NetworkKind, NicSpec,
    SnapshotName, VirtError, VmName, VmSpec, VmState, VolumeName, test_driver,
};

struct Host {
    _dir: tempfile::TempDir,
    lv: Libvirt,
}

/// A host with a 2 GiB image and a 310 MiB ISO in its pool.
fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let opts = test_driver::host(dir.path(), &[("debian-12.qcow2", 2048), ("installer.iso", 310)]).unwrap();
    let lv = Libvirt::open(opts).unwrap();
    Host { _dir: dir, lv }
}

fn name(n: &str) -> VmName {
    VmName::try_from(n).unwrap()
}

fn spec(n: &str) -> VmSpec {
    VmSpec {
        name: name(n),
        vcpus: 2,
        memory_mib: 512,
        firmware: Firmware::Bios,
        disks: vec![DiskSpec {
            source: DiskSource::New { size_mib: 1024 },
        }],
        nics: vec![NicSpec {
            network: NetworkKind::Nat,
            vlan: None,
            mac: Some(MacAddr::try_from("52:54:00:00:10:01").unwrap()),
        }],
        boot: Vec::new(),
        autostart: false,
    }
}

fn state(h: &Host, n: &str) -> VmState {
    h.lv.get(&name(n)).unwrap().info.state
}

#[test]
fn a_vm_goes_through_its_lifecycle() {
    let h = host();
    let mut s = spec("web-1");
    s.disks.push(DiskSpec {
        source: DiskSource::Iso {
            volume: VolumeName::try_from("installer.iso").unwrap(),
        },
    });
    s.boot = vec![BootDevice::Cdrom, BootDevice::Disk];
    s.autostart = true;
    let d = h.lv.create(&s).unwrap();
    assert_eq!(d.info.state, VmState::Shutoff);
    assert_eq!((d.info.vcpus, d.info.memory_mib), (2, 512));
    assert!(d.info.autostart);
    assert_eq!(d.boot, ["cdrom", "hd"]);
    assert_eq!(d.disks.len(), 2, "{:?}", d.disks);
    assert_eq!(d.disks[0].path, "/data/vm/web-1-disk0.qcow2");
    assert_eq!(d.disks[0].capacity, Some(1 << 30));
    assert!(d.disks[1].cdrom && d.disks[1].path == "/data/vm/installer.iso");
    assert_eq!(d.nics[0].mac, "52:54:00:00:10:01");
    assert_eq!(d.nics[0].network, "network:default");
    let vols: Vec<String> = h.lv.volumes().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(vols, ["debian-12.qcow2", "installer.iso", "web-1-disk0.qcow2"]);

    let n = name("web-1");
    h.lv.start(&n).unwrap();
    assert_eq!(state(&h, "web-1"), VmState::Running);
    let e = h.lv.start(&n).unwrap_err();
    assert!(matches!(e, VirtError::WrongState(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "Cannot start web-1: it is running: shut it down or stop it first"
    );
    h.lv.suspend(&n).unwrap();
    assert_eq!(state(&h, "web-1"), VmState::Paused);
    let e = h.lv.reboot(&n).unwrap_err();
    assert_eq!(e.to_string(), "Cannot reboot web-1: it is paused, not running");
    h.lv.resume(&n).unwrap();
    h.lv.reboot(&n).unwrap();
    assert_eq!(state(&h, "web-1"), VmState::Running);

    let e = h.lv.delete(&n, true).unwrap_err();
    assert!(matches!(e, VirtError::WrongState(_)), "{e}");
    h.lv.shutdown(&n).unwrap();
    assert!(!state(&h, "web-1").is_active());
    let e = h.lv.stop(&n).unwrap_err();
    assert!(e.to_string().contains("it is shutoff already"), "{e}");
    h.lv.set_autostart(&n, false).unwrap();
    assert!(!h.lv.get(&n).unwrap().info.autostart);

    h.lv.delete(&n, true).unwrap();
    let e = h.lv.get(&n).unwrap_err();
    assert!(matches!(e, VirtError::NotFound(_)), "{e}");
    assert_eq!(e.to_string(), "No VM is called web-1");
    let vols: Vec<String> = h.lv.volumes().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(
        vols,
        ["debian-12.qcow2", "installer.iso"],
        "the disk went, the ISO stayed"
    );
}

#[test]
fn snapshots_are_taken_listed_reverted_and_deleted() {
    let h = host();
    h.lv.create(&spec("db-1")).unwrap();
    let n = name("db-1");
    h.lv.start(&n).unwrap();
    let s1 = SnapshotName::try_from("before-upgrade").unwrap();
    let taken = h.lv.snapshot_create(&n, &s1, "before the <upgrade> & reboot").unwrap();
    assert_eq!(taken.name, "before-upgrade");
    assert_eq!(taken.description, "before the <upgrade> & reboot");
    assert_eq!(taken.state, "running");
    let e = h.lv.snapshot_create(&n, &s1, "").unwrap_err();
    assert!(matches!(e, VirtError::Exists(_)), "{e}");
    h.lv.stop(&n).unwrap();
    let s2 = SnapshotName::try_from("stopped").unwrap();
    h.lv.snapshot_create(&n, &s2, "").unwrap();
    let list = h.lv.snapshot_list(&n).unwrap();
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"before-upgrade") && names.contains(&"stopped"));
    assert!(list.iter().any(|s| s.name == "stopped" && s.current));

    // Back to the running snapshot: the VM runs again.
    h.lv.snapshot_revert(&n, &s1).unwrap();
    assert_eq!(state(&h, "db-1"), VmState::Running);
    h.lv.snapshot_delete(&n, &s2).unwrap();
    let e = h.lv.snapshot_revert(&n, &s2).unwrap_err();
    assert_eq!(e.to_string(), "VM db-1 has no snapshot stopped");
    h.lv.stop(&n).unwrap();
    // Deleting the VM takes its snapshots with it.
    h.lv.delete(&n, true).unwrap();
    assert!(h.lv.list().unwrap().iter().all(|v| v.name != "db-1"));
}

#[test]
fn a_clone_gets_its_own_disks_and_macs() {
    let h = host();
    let mut s = spec("tmpl");
    s.disks = vec![DiskSpec {
        source: DiskSource::Import {
            volume: VolumeName::try_from("debian-12.qcow2").unwrap(),
        },
    }];
    s.firmware = Firmware::Uefi;
    let src = h.lv.create(&s).unwrap();
    assert!(src.uefi);
    assert_eq!(src.disks[0].capacity, Some(2 << 30), "the import has the image's size");
    let c = h.lv.clone_vm(&name("tmpl"), &name("tmpl-copy")).unwrap();
    assert_eq!(c.info.name, "tmpl-copy");
    assert!(c.uefi);
    assert_eq!(c.disks[0].path, "/data/vm/tmpl-copy-disk0.qcow2");
    assert_eq!(c.nics.len(), 1);
    assert_ne!(c.nics[0].mac, src.nics[0].mac);
    assert_ne!(c.info.uuid, src.info.uuid);
    let e = h.lv.clone_vm(&name("tmpl"), &name("tmpl-copy")).unwrap_err();
    assert!(matches!(e, VirtError::Exists(_)), "{e}");
    h.lv.start(&name("tmpl")).unwrap();
    let e = h.lv.clone_vm(&name("tmpl"), &name("tmpl-2")).unwrap_err();
    assert!(e.to_string().starts_with("Cannot clone tmpl: it is running"), "{e}");
}

#[test]
fn refusals_say_what_to_change_and_leave_nothing_behind() {
    let h = host();
    let before = h.lv.volumes().unwrap();
    h.lv.create(&spec("web-1")).unwrap();
    let e = h.lv.create(&spec("web-1")).unwrap_err();
    assert_eq!(e.to_string(), "A VM called web-1 exists already: pick another name");

    let mut s = spec("web-2");
    s.disks.push(DiskSpec {
        source: DiskSource::Import {
            volume: VolumeName::try_from("missing.qcow2").unwrap(),
        },
    });
    let e = h.lv.create(&s).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("disks[1].import_volume: the storage pool has no volume \"missing.qcow2\""),
        "{e}"
    );

    let mut s = spec("web-2");
    s.disks[0].source = DiskSource::New { size_mib: 200 << 10 };
    let e = h.lv.create(&s).unwrap_err();
    assert!(matches!(e, VirtError::Insufficient(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("disks: the new disks need 204800 MiB and storage pool vms has"),
        "{e}"
    );

    let mut s = spec("web-2");
    s.memory_mib = 64 << 10;
    let e = h.lv.create(&s).unwrap_err();
    assert!(matches!(e, VirtError::Insufficient(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "memory_mib: 65536 MiB is more than the 4096 MiB of memory the host has free: lower it, or stop another VM first"
    );
    // Running VMs hold their memory.
    let mut big = spec("big");
    big.memory_mib = 3 << 10;
    big.disks.clear();
    h.lv.create(&big).unwrap();
    h.lv.start(&name("big")).unwrap();
    let mut s = spec("web-2");
    s.memory_mib = 2 << 10;
    let e = h.lv.create(&s).unwrap_err();
    assert!(
        e.to_string().contains("than the 1024 MiB of memory the host has free"),
        "{e}"
    );

    let mut s = spec("web-2");
    s.vcpus = 0;
    let e = h.lv.create(&s).unwrap_err();
    assert!(matches!(e, VirtError::Invalid(_)), "{e}");

    // A NIC on a host bridge.
    let mut s = spec("web-3");
    s.nics[0].network = NetworkKind::Bridge(BridgeName::try_from("br0").unwrap());
    let d = h.lv.create(&s).unwrap();
    assert_eq!(d.nics[0].network, "bridge:br0");

    let after: Vec<String> = h.lv.volumes().unwrap().into_iter().map(|v| v.name).collect();
    let mut expect: Vec<String> = before.into_iter().map(|v| v.name).collect();
    expect.extend(["web-1-disk0.qcow2".to_string(), "web-3-disk0.qcow2".to_string()]);
    expect.sort();
    assert_eq!(after, expect, "refused creates left no volume");
}

#[test]
fn lifecycle_events_reach_the_subscribers() {
    use std::sync::mpsc;
    use std::time::Duration;

    use debvisor_virt::{VmEvent, VmEventKind};

    let h = host();
    let (tx, rx) = mpsc::channel::<VmEvent>();
    let tx = std::sync::Mutex::new(tx);
    h.lv.subscribe(Box::new(move |e| {
        let _ = tx.lock().unwrap().send(e.clone());
    }));
    let n = name("events-1");
    h.lv.create(&spec("events-1")).unwrap();
    h.lv.start(&n).unwrap();
    h.lv.suspend(&n).unwrap();
    h.lv.resume(&n).unwrap();
    h.lv.snapshot_create(&n, &SnapshotName::try_from("s1").unwrap(), "")
        .unwrap();
    h.lv.stop(&n).unwrap();
    h.lv.delete(&n, true).unwrap();
    let want = [
        (VmEventKind::Defined, "added"),
        (VmEventKind::Started, "booted"),
        (VmEventKind::Suspended, "paused"),
        (VmEventKind::Resumed, "unpaused"),
        (VmEventKind::Stopped, "destroyed"),
        (VmEventKind::Undefined, "removed"),
    ];
    let mut got = Vec::new();
    // Events arrive on libvirt's event thread; the last one ends the wait.
    while got.last().map(|(k, _)| *k) != Some(VmEventKind::Undefined) {
        let e = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("events so far: {got:?}"));
        assert_eq!(e.name, "events-1");
        got.push((e.kind, e.detail));
    }
    for w in want {
        assert!(got.contains(&w), "no {w:?} in {got:?}");
    }
    let order: Vec<_> = got.iter().map(|(k, _)| *k).collect();
    let pos = |k| order.iter().position(|x| *x == k).unwrap();
    assert!(pos(VmEventKind::Defined) < pos(VmEventKind::Started));
    assert!(pos(VmEventKind::Started) < pos(VmEventKind::Stopped));
}

#[test]
fn a_console_needs_a_running_vm_and_a_hypervisor_with_consoles() {
    let h = host();
    h.lv.create(&spec("con-1")).unwrap();
    let off =
        h.lv.console(&name("con-1"))
            .err()
            .expect("a VM that is off has no console");
    assert!(
        matches!(&off, VirtError::WrongState(m) if m.contains("con-1 is shutoff") && m.contains("start it")),
        "{off}"
    );
    h.lv.start(&name("con-1")).unwrap();
    // The test driver runs no QEMU, so it has no consoles to stream.
    let none =
        h.lv.console(&name("con-1"))
            .err()
            .expect("the test driver has no consoles");
    assert!(
        matches!(&none, VirtError::WrongState(m) if m.contains("no consoles")),
        "{none}"
    );
    let missing = h.lv.console(&name("nope")).err().expect("no such VM");
    assert!(matches!(missing, VirtError::NotFound(_)));
}
