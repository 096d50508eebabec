//! `vm list|watch|show|create|start|shutdown|stop|reboot|suspend|resume|autostart|
//! delete|clone|snapshot|volumes|console|display` (debvisor.vm.v1).

use anyhow::Context as _;
use debvisor_api::vm::v1::vm_service_client::VmServiceClient;
use debvisor_api::vm::v1::{
    self as pb, BootDevice, CloneVmRequest, CreateSnapshotRequest, CreateVmRequest, DeleteVmRequest, DiskSpec,
    Firmware, ListVmsRequest, ListVolumesRequest, NicSpec, SetAutostartRequest, SnapshotRef, VmRef, VmSpec,
    WatchVmsRequest, disk_spec,
};
use tonic::transport::Channel;

use crate::UsageError;
use crate::cli::{CreateVmArgs, SnapshotCmd, VmAction, VmCmd, WatchVmArgs};
use crate::output::{Table, bytes, or_dash, render_kv};
use crate::rpc::Ctx;
use crate::timefmt::format_unix_ms;

fn client(ctx: &Ctx) -> VmServiceClient<Channel> {
    VmServiceClient::new(ctx.channel.clone())
}

/// Runs one `vm` subcommand.
pub async fn run(ctx: &Ctx, cmd: &VmCmd) -> anyhow::Result<()> {
    let mut c = client(ctx);
    match cmd {
        VmCmd::List => {
            let r = ctx
                .call(c.list_vms(ctx.req(ListVmsRequest {})))
                .await
                .context("Cannot list the VMs")?;
            ctx.show(&r, || render_list(&r.vms))
        }
        VmCmd::Watch(a) => watch(ctx, &mut c, a).await,
        VmCmd::Show(a) => {
            let vm = ctx
                .call(c.get_vm(ctx.req(VmRef { name: a.name.clone() })))
                .await
                .with_context(|| format!("Cannot read VM {}", a.name))?;
            ctx.show(&vm, || render_vm(&vm))
        }
        VmCmd::Create(a) => {
            let spec = spec_of(a)?;
            let name = spec.name.clone();
            let vm = ctx
                .call(c.create_vm(ctx.req(CreateVmRequest { spec: Some(spec) })))
                .await
                .with_context(|| format!("Cannot create VM {name}"))?;
            ctx.show(&vm, || {
                format!(
                    "VM {name} created (off): `debvisorctl vm start {name}` starts it\n{}",
                    render_vm(&vm)
                )
            })
        }
        VmCmd::Start(a) => act(ctx, &mut c, VmAction::Start, &a.name).await,
        VmCmd::Shutdown(a) => act(ctx, &mut c, VmAction::Shutdown, &a.name).await,
        VmCmd::Stop(a) => act(ctx, &mut c, VmAction::Stop, &a.name).await,
        VmCmd::Reboot(a) => act(ctx, &mut c, VmAction::Reboot, &a.name).await,
        VmCmd::Suspend(a) => act(ctx, &mut c, VmAction::Suspend, &a.name).await,
        VmCmd::Resume(a) => act(ctx, &mut c, VmAction::Resume, &a.name).await,
        VmCmd::Autostart(a) => {
            let on = match a.state.as_str() {
                "on" => true,
                "off" => false,
                other => return Err(UsageError(format!("autostart takes on or off, not {other:?}")).into()),
            };
            let vm = ctx
                .call(c.set_autostart(ctx.req(SetAutostartRequest {
                    name: a.name.clone(),
                    autostart: on,
                })))
                .await
                .with_context(|| format!("Cannot set autostart of {}", a.name))?;
            ctx.show(&vm, || format!("{}: autostart {}\n", a.name, a.state))
        }
        VmCmd::Delete(a) => {
            let r = ctx
                .call(c.delete_vm(ctx.req(DeleteVmRequest {
                    name: a.name.clone(),
                    delete_disks: !a.keep_disks,
                })))
                .await
                .with_context(|| format!("Cannot delete VM {}", a.name))?;
            ctx.show(&r, || {
                if a.keep_disks {
                    format!("VM {} deleted; its disk volumes are kept\n", a.name)
                } else {
                    format!("VM {} deleted with its disks\n", a.name)
                }
            })
        }
        VmCmd::Clone(a) => {
            let vm = ctx
                .call(c.clone_vm(ctx.req(CloneVmRequest {
                    name: a.name.clone(),
                    new_name: a.new_name.clone(),
                })))
                .await
                .with_context(|| format!("Cannot clone {} as {}", a.name, a.new_name))?;
            ctx.show(&vm, || {
                format!("VM {} cloned as {}\n{}", a.name, a.new_name, render_vm(&vm))
            })
        }
        VmCmd::Snapshot(s) => snapshot(ctx, &mut c, s).await,
        VmCmd::Volumes => {
            let r = ctx
                .call(c.list_volumes(ctx.req(ListVolumesRequest {})))
                .await
                .context("Cannot list the storage pool's volumes")?;
            ctx.show(&r, || render_volumes(&r.volumes))
        }
        VmCmd::Console(a) => crate::console::run(ctx, &a.name).await,
        VmCmd::Display(a) => crate::display::run(ctx, &a.name, a.listen).await,
    }
}

async fn watch(ctx: &Ctx, c: &mut VmServiceClient<Channel>, a: &WatchVmArgs) -> anyhow::Result<()> {
    let what = a.name.as_deref().map_or("the VMs".to_string(), |n| format!("VM {n}"));
    let mut stream = ctx
        // No grpc-timeout: the stream runs until Ctrl-C (only opening it is
        // bounded, by `call`).
        .call(c.watch_vms(tonic::Request::new(WatchVmsRequest {
            name: a.name.clone().unwrap_or_default(),
            initial: true,
        })))
        .await
        .with_context(|| format!("Cannot watch {what}"))?;
    let mut ctrl_c = crate::rpc::interrupts()?;
    loop {
        let next = tokio::select! {
            _ = ctrl_c.recv() => return Ok(()),
            e = ctx.next_follow(&mut stream) => e.with_context(|| format!("Watching {what} failed"))?,
        };
        let Some(e) = next else {
            if !ctx.json {
                eprintln!("The agent ended the VM event stream.");
            }
            return Ok(());
        };
        if ctx.json {
            crate::output::json(&e)?;
        } else {
            crate::output::out(&event_line(&e, time::OffsetDateTime::now_utc()))?;
        }
    }
}

/// One event as a line: `12:01:02  web-1  stopped (destroyed)  now shutoff`.
fn event_line(e: &pb::VmEvent, at: time::OffsetDateTime) -> String {
    let what = match e.detail.as_str() {
        "" => e.event.clone(),
        d => format!("{} ({d})", e.event),
    };
    let now = match &e.vm {
        Some(v) => format!("  now {}", v.state_text),
        None if e.event == "undefined" => "  (gone)".to_string(),
        None => String::new(),
    };
    format!("{}  {}  {what}{now}\n", crate::timefmt::format_instant(at), e.name)
}

async fn act(ctx: &Ctx, c: &mut VmServiceClient<Channel>, action: VmAction, name: &str) -> anyhow::Result<()> {
    let req = ctx.req(VmRef { name: name.into() });
    let call = match action {
        VmAction::Start => ctx.call(c.start_vm(req)).await,
        VmAction::Shutdown => ctx.call(c.shutdown_vm(req)).await,
        VmAction::Stop => ctx.call(c.stop_vm(req)).await,
        VmAction::Reboot => ctx.call(c.reboot_vm(req)).await,
        VmAction::Suspend => ctx.call(c.suspend_vm(req)).await,
        VmAction::Resume => ctx.call(c.resume_vm(req)).await,
    };
    let vm = call.with_context(|| format!("Cannot {} {name}", action.verb()))?;
    let state = vm.summary.as_ref().map_or("?", |s| s.state_text.as_str()).to_string();
    ctx.show(&vm, || format!("{name}: {} ({state})\n", action.done()))
}

async fn snapshot(ctx: &Ctx, c: &mut VmServiceClient<Channel>, cmd: &SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::List(a) => {
            let r = ctx
                .call(c.list_snapshots(ctx.req(VmRef { name: a.name.clone() })))
                .await
                .with_context(|| format!("Cannot list the snapshots of {}", a.name))?;
            ctx.show(&r, || render_snapshots(&a.name, &r.snapshots))
        }
        SnapshotCmd::Create(a) => {
            let s = ctx
                .call(c.create_snapshot(ctx.req(CreateSnapshotRequest {
                    name: a.name.clone(),
                    snapshot: a.snapshot.clone(),
                    description: a.description.clone().unwrap_or_default(),
                })))
                .await
                .with_context(|| format!("Cannot take snapshot {} of {}", a.snapshot, a.name))?;
            ctx.show(&s, || {
                format!("snapshot {} of {} taken ({})\n", s.name, a.name, s.vm_state)
            })
        }
        SnapshotCmd::Revert(a) => {
            let vm = ctx
                .call(c.revert_snapshot(ctx.req(SnapshotRef {
                    name: a.name.clone(),
                    snapshot: a.snapshot.clone(),
                })))
                .await
                .with_context(|| format!("Cannot revert {} to {}", a.name, a.snapshot))?;
            let state = vm.summary.as_ref().map_or("?", |s| s.state_text.as_str()).to_string();
            ctx.show(&vm, || format!("{} reverted to {} ({state})\n", a.name, a.snapshot))
        }
        SnapshotCmd::Delete(a) => {
            let r = ctx
                .call(c.delete_snapshot(ctx.req(SnapshotRef {
                    name: a.name.clone(),
                    snapshot: a.snapshot.clone(),
                })))
                .await
                .with_context(|| format!("Cannot delete snapshot {} of {}", a.snapshot, a.name))?;
            ctx.show(&r, || format!("snapshot {} of {} deleted\n", a.snapshot, a.name))
        }
    }
}

/// The spec of `vm create`'s arguments; a malformed `--disk`, `--nic` or
/// `--boot` is a usage error naming it (the agent checks the rest).
pub fn spec_of(a: &CreateVmArgs) -> Result<VmSpec, UsageError> {
    let disks = a.disk.iter().map(|d| disk_of(d)).collect::<Result<Vec<_>, _>>()?;
    let nics = a.nic.iter().map(|n| nic_of(n)).collect::<Result<Vec<_>, _>>()?;
    let mut boot = Vec::new();
    for b in a.boot.iter().flat_map(|b| b.split(',')) {
        boot.push(match b {
            "disk" | "hd" => BootDevice::Disk,
            "cdrom" => BootDevice::Cdrom,
            "network" | "net" => BootDevice::Network,
            other => {
                return Err(UsageError(format!(
                    "--boot {other:?}: give disk, cdrom or network, comma-separated, in order"
                )));
            }
        } as i32);
    }
    Ok(VmSpec {
        name: a.name.clone(),
        vcpus: a.vcpus,
        memory_mib: a.memory,
        firmware: if a.uefi { Firmware::Uefi } else { Firmware::Bios } as i32,
        disks,
        nics,
        boot,
        autostart: a.autostart,
    })
}

fn disk_of(text: &str) -> Result<DiskSpec, UsageError> {
    let bad = || {
        UsageError(format!(
            "--disk {text:?}: give new:SIZE (MiB, or with a G suffix for GiB), import:VOLUME or iso:VOLUME"
        ))
    };
    let (kind, value) = text.split_once(':').ok_or_else(bad)?;
    let source = match kind {
        "new" => {
            let mib = match value.strip_suffix(['G', 'g']) {
                Some(g) => g.parse::<u64>().map_err(|_| bad())?.checked_mul(1024).ok_or_else(bad)?,
                None => value
                    .strip_suffix(['M', 'm'])
                    .unwrap_or(value)
                    .parse()
                    .map_err(|_| bad())?,
            };
            disk_spec::Source::NewSizeMib(mib)
        }
        "import" => disk_spec::Source::ImportVolume(value.into()),
        "iso" => disk_spec::Source::IsoVolume(value.into()),
        _ => return Err(bad()),
    };
    Ok(DiskSpec { source: Some(source) })
}

fn nic_of(text: &str) -> Result<NicSpec, UsageError> {
    let bad = |why: &str| {
        UsageError(format!(
            "--nic {text:?}: {why}; give nat or bridge:NAME, then ,vlan=N and ,mac=52:54:00:..:..:.. if wanted"
        ))
    };
    let mut parts = text.split(',');
    let mut nic = NicSpec::default();
    match parts.next().unwrap_or_default() {
        "nat" => {}
        first => match first.strip_prefix("bridge:") {
            Some(br) if !br.is_empty() => nic.bridge = br.into(),
            _ => return Err(bad("the network comes first")),
        },
    }
    for p in parts {
        match p.split_once('=') {
            Some(("vlan", v)) => nic.vlan = v.parse().map_err(|_| bad("the VLAN is a number"))?,
            Some(("mac", m)) => nic.mac = m.into(),
            _ => return Err(bad(&format!("{p:?} is not vlan=N or mac=..."))),
        }
    }
    Ok(nic)
}

fn render_list(vms: &[pb::VmSummary]) -> String {
    if vms.is_empty() {
        return "no VMs: `debvisorctl vm create NAME --disk new:10G --nic nat` creates one\n".into();
    }
    let mut t = Table::new(&["NAME", "STATE", "VCPUS", "MEMORY", "AUTOSTART"]);
    for v in vms {
        t.row(vec![
            v.name.clone(),
            v.state_text.clone(),
            v.vcpus.to_string(),
            format!("{} MiB", v.memory_mib),
            if v.autostart { "yes" } else { "no" }.into(),
        ]);
    }
    t.render()
}

fn render_vm(vm: &pb::Vm) -> String {
    let s = vm.summary.clone().unwrap_or_default();
    let mut out = render_kv(&[
        ("name".into(), s.name.clone()),
        ("state".into(), s.state_text.clone()),
        ("uuid".into(), s.uuid.clone()),
        ("vcpus".into(), s.vcpus.to_string()),
        ("memory".into(), format!("{} MiB", s.memory_mib)),
        ("firmware".into(), if vm.uefi { "UEFI" } else { "BIOS" }.into()),
        ("boot".into(), or_dash(&vm.boot.join(", "))),
        ("autostart".into(), if s.autostart { "yes" } else { "no" }.into()),
        (
            "vnc".into(),
            if vm.vnc_port == 0 {
                "-".into()
            } else {
                format!("127.0.0.1:{}", vm.vnc_port)
            },
        ),
    ]);
    if !vm.disks.is_empty() {
        let mut t = Table::new(&["DISK", "KIND", "SIZE", "FILE"]);
        for d in &vm.disks {
            t.row(vec![
                d.target.clone(),
                if d.cdrom { "cdrom" } else { "disk" }.into(),
                if d.capacity_bytes == 0 {
                    "-".into()
                } else {
                    bytes(d.capacity_bytes)
                },
                d.path.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    if !vm.nics.is_empty() {
        let mut t = Table::new(&["NIC", "MAC", "NETWORK"]);
        for (i, n) in vm.nics.iter().enumerate() {
            t.row(vec![i.to_string(), n.mac.clone(), n.network.clone()]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

fn render_snapshots(vm: &str, snaps: &[pb::Snapshot]) -> String {
    if snaps.is_empty() {
        return format!("{vm} has no snapshots: `debvisorctl vm snapshot create {vm} NAME` takes one\n");
    }
    let mut t = Table::new(&["NAME", "TAKEN", "VM STATE", "CURRENT", "DESCRIPTION"]);
    for s in snaps {
        t.row(vec![
            s.name.clone(),
            format_unix_ms(s.created_unix.saturating_mul(1000)),
            s.vm_state.clone(),
            if s.current { "yes" } else { "" }.into(),
            or_dash(&s.description),
        ]);
    }
    t.render()
}

fn render_volumes(vols: &[pb::Volume]) -> String {
    if vols.is_empty() {
        return "the storage pool is empty\n".into();
    }
    let mut t = Table::new(&["NAME", "SIZE", "ON DISK", "FILE"]);
    for v in vols {
        t.row(vec![
            v.name.clone(),
            bytes(v.capacity_bytes),
            bytes(v.allocation_bytes),
            v.path.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_what_happened_and_the_state_after() {
        let at = time::OffsetDateTime::from_unix_timestamp(0).unwrap();
        let t = crate::timefmt::format_instant(at);
        let mut e = pb::VmEvent {
            name: "web-1".into(),
            event: "stopped".into(),
            detail: "destroyed".into(),
            vm: Some(pb::VmSummary {
                state_text: "shutoff".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            event_line(&e, at),
            format!("{t}  web-1  stopped (destroyed)  now shutoff\n")
        );
        e.event = "undefined".into();
        e.detail = String::new();
        e.vm = None;
        assert_eq!(event_line(&e, at), format!("{t}  web-1  undefined  (gone)\n"));
    }

    fn args(disk: &[&str], nic: &[&str], boot: &[&str]) -> CreateVmArgs {
        CreateVmArgs {
            name: "web-1".into(),
            vcpus: 2,
            memory: 1024,
            uefi: true,
            disk: disk.iter().map(|s| s.to_string()).collect(),
            nic: nic.iter().map(|s| s.to_string()).collect(),
            boot: boot.iter().map(|s| s.to_string()).collect(),
            autostart: false,
        }
    }

    #[test]
    fn create_arguments_become_a_spec() {
        let s = spec_of(&args(
            &["new:10G", "new:512", "import:debian.qcow2", "iso:debian.iso"],
            &["nat", "bridge:br0,vlan=20,mac=52:54:00:00:00:09"],
            &["cdrom,disk"],
        ))
        .unwrap();
        assert_eq!(s.firmware, Firmware::Uefi as i32);
        assert_eq!(s.disks[0].source, Some(disk_spec::Source::NewSizeMib(10240)));
        assert_eq!(s.disks[1].source, Some(disk_spec::Source::NewSizeMib(512)));
        assert_eq!(
            s.disks[2].source,
            Some(disk_spec::Source::ImportVolume("debian.qcow2".into()))
        );
        assert_eq!(
            s.disks[3].source,
            Some(disk_spec::Source::IsoVolume("debian.iso".into()))
        );
        assert_eq!(s.nics[0], NicSpec::default());
        assert_eq!(
            (s.nics[1].bridge.as_str(), s.nics[1].vlan, s.nics[1].mac.as_str()),
            ("br0", 20, "52:54:00:00:00:09")
        );
        assert_eq!(s.boot, [BootDevice::Cdrom as i32, BootDevice::Disk as i32]);
    }

    #[test]
    fn malformed_create_arguments_are_usage_errors_naming_them() {
        for (disk, nic, boot, needle) in [
            (&["10G"][..], &[][..], &[][..], "--disk \"10G\""),
            (&["new:ten"], &[], &[], "--disk \"new:ten\""),
            (&["file:/etc/passwd"], &[], &[], "--disk \"file:/etc/passwd\""),
            (&[], &["bridge:"], &[], "--nic \"bridge:\""),
            (&[], &["nat,vlan=x"], &[], "the VLAN is a number"),
            (&[], &["nat,speed=10"], &[], "\"speed=10\" is not vlan=N"),
            (&[], &[], &["floppy"], "--boot \"floppy\""),
        ] {
            let e = spec_of(&args(disk, nic, boot)).unwrap_err();
            assert!(e.0.contains(needle), "{} lacks {needle}", e.0);
        }
    }

    #[test]
    fn a_vm_reads_as_a_table() {
        let vm = pb::Vm {
            summary: Some(pb::VmSummary {
                name: "web-1".into(),
                state_text: "running".into(),
                vcpus: 2,
                memory_mib: 1024,
                ..Default::default()
            }),
            disks: vec![pb::VmDisk {
                target: "vda".into(),
                path: "/data/vm/web-1-disk0.qcow2".into(),
                cdrom: false,
                capacity_bytes: 10 << 30,
            }],
            nics: vec![pb::VmNic {
                mac: "52:54:00:00:00:09".into(),
                network: "network:default".into(),
            }],
            boot: vec!["hd".into()],
            vnc_port: 5900,
            ..Default::default()
        };
        let text = render_vm(&vm);
        for needle in [
            "running",
            "1024 MiB",
            "BIOS",
            "127.0.0.1:5900",
            "vda",
            "10.0 GiB",
            "network:default",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        assert!(render_list(&[]).contains("vm create"));
    }
}
