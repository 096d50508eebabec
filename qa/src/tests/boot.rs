//! System tests of the boot itself: markers, the console login, GetStatus,
//! the read-only root and persistence across a reboot.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use debvisor_api::client::{connect_tls_pinned, parse_fingerprint};
use debvisor_api::node::v1::GetStatusRequest;
use debvisor_api::node::v1::node_service_client::NodeServiceClient;

use super::{CMD, Ctx};
use crate::node::Node;
use crate::probes;
use crate::serial::SerialGuest;

fn admin(n: &Node) -> Result<(String, String)> {
    n.admin
        .clone()
        .context("The first boot printed no `DEBVISOR: admin-password` line")
}

pub(super) fn boots_to_ready(ctx: &Ctx) -> Result<()> {
    let n = ctx.shared_node()?;
    let (user, pw) = admin(&n)?;
    ensure!(user == "admin", "The admin user is {user:?}, expected \"admin\"");
    ensure!(!pw.is_empty(), "The admin password is empty");
    ensure!(n.fingerprint.len() == 64, "Bad fingerprint {}", n.fingerprint);
    Ok(())
}

pub(super) fn console_login_https(ctx: &Ctx) -> Result<()> {
    let n = ctx.shared_node()?;
    let (user, pw) = admin(&n)?;
    let page = ctx
        .rt
        .block_on(probes::console_login(n.vm.console_port, &n.fingerprint, &user, &pw))?;
    ensure!(
        page.contains(&n.status.hostname),
        "The status page does not show the hostname {:?} that GetStatus reports",
        n.status.hostname
    );
    // A wrong password must not log in.
    let bad = ctx.rt.block_on(probes::console_login(
        n.vm.console_port,
        &n.fingerprint,
        &user,
        "wrong-password",
    ));
    ensure!(bad.is_err(), "The console accepted a wrong password");
    Ok(())
}

pub(super) fn agent_status_mtls(ctx: &Ctx) -> Result<()> {
    let n = ctx.shared_node()?;
    let s = &n.status;
    ensure!(!s.hostname.is_empty(), "Empty hostname");
    ensure!(
        s.image_version == ctx.version,
        "image_version {:?} differs from manifest.json's {:?}",
        s.image_version,
        ctx.version
    );
    ensure!(
        s.booted_slot == "A",
        "booted_slot is {:?}, expected \"A\"",
        s.booted_slot
    );
    ensure!(s.uptime_seconds > 0.0, "uptime_seconds is {}", s.uptime_seconds);
    let mem = s.memory.as_ref().map(|m| m.total_bytes).unwrap_or(0);
    ensure!(mem > 0, "memory.total_bytes is 0");
    ensure!(!s.simulated, "The agent runs in simulation mode");
    let root = s
        .disks
        .iter()
        .find(|d| d.name == "root")
        .with_context(|| format!("No root disk in {:?}", s.disks))?;
    ensure!(root.read_only, "The root disk is not reported read-only: {root:?}");
    ensure!(
        s.disks.iter().any(|d| d.name == "data" && d.total_bytes > 0),
        "No data disk in {:?}",
        s.disks
    );
    // Without a client certificate (the server pinned, as before mTLS) the
    // agent must refuse.
    let addr = format!("127.0.0.1:{}", n.vm.agent_port);
    let anonymous = ctx.rt.block_on(async {
        let pin = parse_fingerprint(&n.fingerprint)?;
        let ch = connect_tls_pinned(&addr, pin).await?;
        let r = NodeServiceClient::new(ch).get_status(GetStatusRequest {}).await?;
        anyhow::Ok(r.into_inner())
    });
    ensure!(
        anonymous.is_err(),
        "The agent answered GetStatus to a client without a certificate"
    );
    Ok(())
}

pub(super) fn root_read_only(ctx: &Ctx) -> Result<()> {
    let n = ctx.shared_node()?;
    let (_, pw) = admin(&n)?;
    let mut g = SerialGuest::login(&n.vm.console, "root", &pw, Duration::from_secs(120))?;
    let (rc, out) = g.exec("touch /usr/x 2>&1", CMD)?;
    ensure!(rc != 0, "touch /usr/x succeeded on the root file system");
    ensure!(
        out.contains("Read-only file system"),
        "touch /usr/x failed without \"Read-only file system\": {out}"
    );
    let (_, opts) = g.exec("findmnt -n -o OPTIONS /", CMD)?;
    ensure!(opts.trim().split(',').any(|o| o == "ro"), "/ is not mounted ro: {opts}");
    // /tmp is a writable tmpfs, so sandboxed services (PrivateDevices=,
    // PrivateTmp=) can set up their namespaces: timesyncd runs.
    let (_, fstype) = g.exec("findmnt -n -o FSTYPE /tmp", CMD)?;
    ensure!(fstype.trim() == "tmpfs", "/tmp is not a tmpfs: {fstype:?}");
    let (rc, out) = g.exec("touch /tmp/qa && rm /tmp/qa 2>&1", CMD)?;
    ensure!(rc == 0, "/tmp is not writable: {out}");
    let (rc, out) = g.exec(
        "systemctl start systemd-timesyncd.service 2>&1; systemctl is-active systemd-timesyncd.service; \
         journalctl -b -u systemd-timesyncd.service --no-pager -o cat | tail -n 3",
        CMD,
    )?;
    ensure!(
        rc == 0 && out.lines().any(|l| l.trim() == "active"),
        "systemd-timesyncd (a sandboxed service) does not run on the read-only root: {out}"
    );
    let (_, failed) = g.exec("systemctl --failed --no-legend --plain --no-pager", CMD)?;
    eprintln!(
        "  failed units: {}",
        if failed.trim().is_empty() {
            "none"
        } else {
            failed.trim()
        }
    );
    Ok(())
}

/// The VM daemon runs beside the agent, root's alone; a VM call through the
/// agent reaches it and says what is missing (the image has no libvirtd
/// yet), and the agent itself links no libvirt.
pub(super) fn vm_daemon(ctx: &Ctx) -> Result<()> {
    let n = ctx.shared_node()?;
    let (_, pw) = admin(&n)?;
    let mut g = SerialGuest::login(&n.vm.console, "root", &pw, Duration::from_secs(120))?;
    let (rc, out) = g.exec("systemctl is-active debvisor-vmd.service 2>&1", CMD)?;
    ensure!(
        rc == 0 && out.trim() == "active",
        "debvisor-vmd.service is not active: {out}"
    );
    let (_, mode) = g.exec("stat -c '%a %U' /run/debvisor/vmd.sock 2>&1", CMD)?;
    ensure!(
        mode.trim() == "600 root",
        "/run/debvisor/vmd.sock is not root's alone: {mode}"
    );
    let (_, libs) = g.exec(
        "ldd /usr/bin/debvisor-agent | grep -c libvirt; ldd /usr/bin/debvisor-vmd | grep -c libvirt",
        CMD,
    )?;
    ensure!(
        libs.split_whitespace().collect::<Vec<_>>() == ["0", "1"],
        "libvirt should be linked by debvisor-vmd alone (counts agent, vmd: {libs:?})"
    );
    let (rc, out) = g.exec("debvisorctl vm list 2>&1", CMD)?;
    ensure!(
        rc != 0 && out.contains("libvirtd") && !out.contains("debvisor-vmd"),
        "debvisorctl vm list should reach debvisor-vmd and report libvirtd missing: {out}"
    );
    Ok(())
}

/// A random token to write on the node and find again.
pub(super) fn token() -> String {
    let mut b = [0u8; 8];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if filled.is_err() {
        b = (std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64).to_le_bytes();
    }
    hex::encode(b)
}
