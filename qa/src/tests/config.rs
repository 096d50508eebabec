//! VM tests of the machine config read from a config medium (a FAT disk
//! labelled DEBVISOR-CFG): a static address plus a VLAN applied through
//! systemd-networkd, and an invalid config that is refused on the serial
//! console while the node stays reachable on safe defaults.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use debvisor_api::health::v1::ListRequest;
use debvisor_api::health::v1::node_health_service_client::NodeHealthServiceClient;
use serde_json::Value;

use super::{CMD, Ctx};
use crate::node::{self, Node};
use crate::probes;
use crate::qemu::NIC_MAC;
use crate::serial::SerialGuest;
use crate::{cfgdisk, webhook};

/// The kernel's name for the QEMU NIC (virtio-net at PCI 00:01.0 on q35).
/// The static-address interface is matched by MAC; a VLAN's parent needs
/// the name, and the test checks it against the MAC.
pub const GUEST_NIC: &str = "enp0s1";
/// QEMU user networking: the guest's address, the gateway (the host) and
/// the DNS forwarder.
const GUEST_ADDR: &str = "10.0.2.15";
const DNS: &str = "10.0.2.3";
const VLAN_ID: u16 = 100;
const VLAN_NAME: &str = "vlan100";
const VLAN_ADDR: &str = "192.168.100.15";

/// A static address on the QEMU NIC (matched by MAC) and VLAN 100 on it,
/// as recipes/machine/static-vlan.toml does for real hardware.
pub fn static_vlan_config() -> String {
    format!(
        r#"version = 1

[node]
hostname = "qa-static-vlan"

[[network.interfaces]]
mac = "{NIC_MAC}"
addresses = ["{GUEST_ADDR}/24"]
gateway4 = "{gw}"
dns = ["{DNS}"]

[[network.vlans]]
name = "{VLAN_NAME}"
id = {VLAN_ID}
parent = "{GUEST_NIC}"
addresses = ["{VLAN_ADDR}/24"]
"#,
        gw = webhook::HOST_FROM_GUEST
    )
}

/// The same with a VLAN id out of range.
pub fn invalid_config() -> String {
    static_vlan_config().replace(&format!("id = {VLAN_ID}"), "id = 5000")
}

/// The IPv4 addresses (`addr/prefix`) of `ifname` in `ip -j addr` output.
pub fn ipv4_of(addrs: &Value, ifname: &str) -> Vec<String> {
    addrs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] == ifname)
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

/// True when `addr` on `ifname` is a dynamic (DHCP) address.
pub fn dynamic(addrs: &Value, ifname: &str, addr: &str) -> bool {
    addrs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] == ifname)
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .any(|a| a["local"] == addr && a["dynamic"] == true)
}

/// The link called `ifname` in `ip -d -j link` output.
pub fn link<'a>(links: &'a Value, ifname: &str) -> Option<&'a Value> {
    links.as_array()?.iter().find(|l| l["ifname"] == ifname)
}

fn guest_json(g: &mut SerialGuest, cmd: &str) -> Result<Value> {
    let (rc, out) = g.exec(cmd, CMD)?;
    ensure!(rc == 0, "`{cmd}` failed: {out}");
    serde_json::from_str(out.trim()).with_context(|| format!("`{cmd}` printed no JSON: {out}"))
}

/// Boots with `toml` on a config medium.
fn boot_with_config(ctx: &Ctx, toml: &str) -> Result<Node> {
    let medium = ctx.dir.join("config-medium.img");
    cfgdisk::build(&medium, toml)?;
    std::fs::write(ctx.dir.join("machine.toml"), toml)?;
    ctx.boot_with_drives(std::slice::from_ref(&medium))
}

/// The rest of the first `DEBVISOR: <marker>` line of the boot (printed
/// before ready, so it is already there), echoed to the test's output.
fn marker_line(n: &Node, marker: &str) -> Result<String> {
    let con = &n.vm.console;
    let m = con.wait_for(&format!("DEBVISOR: {marker}"), 0, Duration::from_secs(5))?;
    let (line, _) = con.next_line(m.end, Duration::from_secs(5))?;
    eprintln!("  DEBVISOR: {marker}{line}");
    Ok(line)
}

/// The agent and the console still answer through the forwarded ports.
fn reachable(ctx: &Ctx, n: &Node) -> Result<()> {
    let s = ctx
        .rt
        .block_on(probes::agent_status(&n.client))
        .context("The agent does not answer over mTLS from the host")?;
    ctx.rt
        .block_on(probes::console_healthz(n.vm.console_port, &n.fingerprint))
        .context("The console does not answer /healthz from the host")?;
    eprintln!("  agent and console answer from the host (hostname {:?})", s.hostname);
    Ok(())
}

pub(super) fn config_static_vlan(ctx: &Ctx) -> Result<()> {
    let n = boot_with_config(ctx, &static_vlan_config())?;
    let fail = |e: anyhow::Error| node::with_tail(e, &n.vm);
    marker_line(&n, "config-applied").map_err(|e| fail(e.context("The node did not apply the config medium")))?;
    static_vlan_steps(ctx, &n).map_err(fail)
}

fn static_vlan_steps(ctx: &Ctx, n: &Node) -> Result<()> {
    let pw = n.password()?;
    let mut g = SerialGuest::login(&n.vm.console, "root", &pw, Duration::from_secs(120))?;
    // networkd applies the files asynchronously: give it a moment.
    let (rc, out) = g.exec(
        &format!("/lib/systemd/systemd-networkd-wait-online -i {GUEST_NIC} -i {VLAN_NAME} --timeout=60"),
        Duration::from_secs(90),
    )?;
    if rc != 0 {
        eprintln!("  systemd-networkd-wait-online exited {rc}: {}", out.trim());
    }
    let links = guest_json(&mut g, "ip -d -j link")?;
    let nic = links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["address"].as_str().is_some_and(|a| a.eq_ignore_ascii_case(NIC_MAC)) && l["linkinfo"].is_null())
        .context("No link with the QEMU NIC's MAC")?;
    ensure!(
        nic["ifname"] == GUEST_NIC,
        "The QEMU NIC is called {} in the guest, not {GUEST_NIC}: fix GUEST_NIC",
        nic["ifname"]
    );
    let vlan = link(&links, VLAN_NAME).with_context(|| {
        let names: Vec<&Value> = links.as_array().into_iter().flatten().map(|l| &l["ifname"]).collect();
        format!("No link {VLAN_NAME}; links: {names:?}")
    })?;
    let info = &vlan["linkinfo"];
    ensure!(
        info["info_kind"] == "vlan" && info["info_data"]["id"] == VLAN_ID,
        "{VLAN_NAME} is not VLAN {VLAN_ID}: linkinfo {info}"
    );
    ensure!(
        vlan["link"] == GUEST_NIC,
        "{VLAN_NAME} sits on {}, not {GUEST_NIC}",
        vlan["link"]
    );
    let addrs = guest_json(&mut g, "ip -j addr")?;
    let on_nic = ipv4_of(&addrs, GUEST_NIC);
    let on_vlan = ipv4_of(&addrs, VLAN_NAME);
    eprintln!("  {GUEST_NIC}: {on_nic:?}; {VLAN_NAME} (id {VLAN_ID}): {on_vlan:?}");
    ensure!(
        on_nic.contains(&format!("{GUEST_ADDR}/24")),
        "{GUEST_NIC} lacks {GUEST_ADDR}/24: {on_nic:?}"
    );
    ensure!(
        on_vlan.contains(&format!("{VLAN_ADDR}/24")),
        "{VLAN_NAME} lacks {VLAN_ADDR}/24: {on_vlan:?}"
    );
    // Static, not a DHCP lease (which would give the same address here).
    ensure!(
        !dynamic(&addrs, GUEST_NIC, GUEST_ADDR),
        "{GUEST_ADDR} on {GUEST_NIC} is a DHCP lease (dynamic), not the static address"
    );
    let (rc, files) = g.exec("ls /run/systemd/network /etc/systemd/network 2>/dev/null", CMD)?;
    ensure!(
        rc == 0 && files.contains("10-debvisor-"),
        "No 10-debvisor-* networkd files: {files}"
    );
    let (_, route) = g.exec("ip -j route show default", CMD)?;
    ensure!(
        route.contains(webhook::HOST_FROM_GUEST),
        "The default route does not go through {}: {route}",
        webhook::HOST_FROM_GUEST
    );
    reachable(ctx, n)
}

pub(super) fn config_invalid(ctx: &Ctx) -> Result<()> {
    let n = boot_with_config(ctx, &invalid_config())?;
    let fail = |e: anyhow::Error| node::with_tail(e, &n.vm);
    let line = marker_line(&n, "config-error")
        .map_err(|e| fail(e.context("The node printed no config error for VLAN id 5000")))?;
    let checked = (|| {
        ensure!(
            line.contains("network.vlans[0].id") && line.contains("5000"),
            "The config error does not name network.vlans[0].id and 5000: {line:?}"
        );
        ensure!(
            !n.vm.console.text(0, usize::MAX).contains("DEBVISOR: config-applied"),
            "The node printed config-applied for a config it refused"
        );
        reachable(ctx, &n)?;
        let h = ctx.rt.block_on(async {
            let ch = probes::connect(&n.client).await?;
            anyhow::Ok(
                NodeHealthServiceClient::new(ch)
                    .list(ListRequest::default())
                    .await
                    .context("health List through the agent")?
                    .into_inner(),
            )
        })?;
        eprintln!(
            "  health: config_error {:?}, config_digest {:?}",
            h.config_error, h.config_digest
        );
        ensure!(
            h.config_error.contains("network.vlans[0].id") && h.config_error.contains("5000"),
            "health List's config_error does not name the key and value: {:?}",
            h.config_error
        );
        let pw = n.password()?;
        let mut g = SerialGuest::login(&n.vm.console, "root", &pw, Duration::from_secs(120))?;
        let (_, vlan) = g.exec(&format!("ip -j link show {VLAN_NAME} 2>&1"), CMD)?;
        ensure!(
            !vlan.contains(&format!("\"ifname\":\"{VLAN_NAME}\"")),
            "The refused config's VLAN exists anyway: {vlan}"
        );
        Ok(())
    })();
    checked.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use debvisor_api::machine::MachineConfig;

    #[test]
    fn static_vlan_config_is_valid() {
        let cfg = MachineConfig::from_toml(&static_vlan_config()).unwrap();
        let net = cfg.network.unwrap();
        assert_eq!(net.vlans[0].id, VLAN_ID);
        assert_eq!(net.interfaces[0].mac.as_deref(), Some(NIC_MAC));
    }

    #[test]
    fn invalid_config_names_the_vlan_id() {
        let e = MachineConfig::from_toml(&invalid_config()).unwrap_err().to_string();
        assert!(e.contains("network.vlans[0].id") && e.contains("5000"), "{e}");
    }

    #[test]
    fn ip_json_is_read() {
        let addrs: Value = serde_json::from_str(
            r#"[{"ifname":"enp0s1","addr_info":[{"family":"inet","local":"10.0.2.15","prefixlen":24},
                {"family":"inet6","local":"fe80::1","prefixlen":64}]},
               {"ifname":"vlan100","addr_info":[{"family":"inet","local":"192.168.100.15","prefixlen":24}]}]"#,
        )
        .unwrap();
        assert_eq!(ipv4_of(&addrs, "enp0s1"), ["10.0.2.15/24"]);
        assert_eq!(ipv4_of(&addrs, "vlan100"), ["192.168.100.15/24"]);
        assert!(ipv4_of(&addrs, "lo").is_empty());
        assert!(!dynamic(&addrs, "enp0s1", "10.0.2.15"));
        let leased: Value = serde_json::from_str(
            r#"[{"ifname":"enp0s1","addr_info":[{"family":"inet","local":"10.0.2.15","dynamic":true}]}]"#,
        )
        .unwrap();
        assert!(dynamic(&leased, "enp0s1", "10.0.2.15"));
        let links: Value = serde_json::from_str(r#"[{"ifname":"vlan100","linkinfo":{"info_kind":"vlan"}}]"#).unwrap();
        assert_eq!(link(&links, "vlan100").unwrap()["linkinfo"]["info_kind"], "vlan");
        assert!(link(&links, "x").is_none());
    }
}
