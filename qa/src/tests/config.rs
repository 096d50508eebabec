//! VM tests of the machine config read from a config medium (a FAT disk
//! labelled DEBVISORCFG): a static address plus a VLAN applied through
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
use debvisor_api::machine::{MachineConfig, VlanConfig};
use std::path::Path;

/// The kernel's name for the QEMU NIC (virtio-net at PCI 00:01.0 on q35).
/// The static-address interface is matched by MAC; a VLAN's parent needs
/// the name, and the test checks it against the MAC.
pub const GUEST_NIC: &str = "enp0s1";
/// QEMU user networking: the guest's address, which the recipe must use
/// for the node to stay reachable through the forwarded ports.
const GUEST_ADDR: &str = "10.0.2.15";
/// The example config the static test boots with.
pub const RECIPE: &str = "recipes/machine/static-vlan.toml";

/// recipes/machine/static-vlan.toml made to fit the QEMU NIC: its first
/// interface matched by the NIC's MAC instead of a name, and every VLAN's
/// parent set to the NIC's kernel name. Fails unless the recipe has a VLAN
/// and puts 10.0.2.15/24 on its first interface.
pub fn static_vlan_config(root: &Path) -> Result<MachineConfig> {
    let path = root.join(RECIPE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("Cannot read {}", path.display()))?;
    let mut cfg = MachineConfig::from_toml(&text).with_context(|| format!("{} is not valid", path.display()))?;
    let net = cfg
        .network
        .as_mut()
        .with_context(|| format!("{RECIPE} has no [network]"))?;
    let nic = net
        .interfaces
        .first_mut()
        .with_context(|| format!("{RECIPE} has no [[network.interfaces]]"))?;
    ensure!(
        nic.addresses.iter().any(|a| a == &format!("{GUEST_ADDR}/24")),
        "{RECIPE}'s first interface has {:?}: QEMU's user network needs {GUEST_ADDR}/24",
        nic.addresses
    );
    nic.name = None;
    nic.mac = Some(NIC_MAC.into());
    ensure!(!net.vlans.is_empty(), "{RECIPE} has no [[network.vlans]]");
    for v in &mut net.vlans {
        v.parent = GUEST_NIC.into();
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The same with the first VLAN's id out of range (5000).
pub fn invalid_config(root: &Path) -> Result<String> {
    let mut cfg = static_vlan_config(root)?;
    if let Some(net) = cfg.network.as_mut() {
        net.vlans[0].id = 5000;
    }
    Ok(cfg.to_toml())
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

/// `e` with every `DEBVISOR:` marker line of the console so far and its
/// last 40 lines: the markers say what the supervisor did with the config.
pub(super) fn with_markers(e: anyhow::Error, n: &Node) -> anyhow::Error {
    let text = n.vm.console.text(0, usize::MAX);
    let markers: Vec<&str> = text.lines().filter(|l| l.contains("DEBVISOR:")).collect();
    node::with_tail(e.context(format!("Markers:\n{}", markers.join("\n"))), &n.vm)
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
    let cfg = static_vlan_config(&ctx.paths.root)?;
    let n = boot_with_config(ctx, &cfg.to_toml())?;
    let fail = |e: anyhow::Error| with_markers(e, &n);
    marker_line(&n, "config-applied").map_err(|e| fail(e.context("The node did not apply the config medium")))?;
    let vlan = cfg
        .network
        .as_ref()
        .map(|net| net.vlans[0].clone())
        .context("no VLAN")?;
    static_vlan_steps(ctx, &n, &vlan).map_err(fail)
}

fn static_vlan_steps(ctx: &Ctx, n: &Node, v: &VlanConfig) -> Result<()> {
    let (vlan_name, vlan_id) = (v.name.as_str(), v.id);
    let vlan_v4: Vec<&String> = v.addresses.iter().filter(|a| !a.contains(':')).collect();
    let pw = n.password()?;
    let mut g = SerialGuest::login(&n.vm.console, "root", &pw, Duration::from_secs(120))?;
    // networkd applies the files asynchronously: give it a moment.
    let (rc, out) = g.exec(
        &format!("/lib/systemd/systemd-networkd-wait-online -i {GUEST_NIC} -i {vlan_name} --timeout=60"),
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
    let vlan = link(&links, vlan_name).with_context(|| {
        let names: Vec<&Value> = links.as_array().into_iter().flatten().map(|l| &l["ifname"]).collect();
        format!("No link {vlan_name}; links: {names:?}")
    })?;
    let info = &vlan["linkinfo"];
    ensure!(
        info["info_kind"] == "vlan" && info["info_data"]["id"] == vlan_id,
        "{vlan_name} is not VLAN {vlan_id}: linkinfo {info}"
    );
    ensure!(
        vlan["link"] == GUEST_NIC,
        "{vlan_name} sits on {}, not {GUEST_NIC}",
        vlan["link"]
    );
    let addrs = guest_json(&mut g, "ip -j addr")?;
    let on_nic = ipv4_of(&addrs, GUEST_NIC);
    let on_vlan = ipv4_of(&addrs, vlan_name);
    eprintln!("  {GUEST_NIC}: {on_nic:?}; {vlan_name} (id {vlan_id}): {on_vlan:?}");
    ensure!(
        on_nic.contains(&format!("{GUEST_ADDR}/24")),
        "{GUEST_NIC} lacks {GUEST_ADDR}/24: {on_nic:?}"
    );
    for want in &vlan_v4 {
        ensure!(on_vlan.contains(want), "{vlan_name} lacks {want}: {on_vlan:?}");
    }
    let (_, routes) = g.exec(&format!("ip -j route show dev {vlan_name}"), CMD)?;
    for r in &v.routes {
        ensure!(
            routes.contains(&format!("\"dst\":\"{}\"", r.destination)) && routes.contains(&r.gateway),
            "No route to {} via {} on {vlan_name}: {routes}",
            r.destination,
            r.gateway
        );
    }
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
    let n = boot_with_config(ctx, &invalid_config(&ctx.paths.root)?)?;
    let fail = |e: anyhow::Error| with_markers(e, &n);
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
        let (_, vlan) = g.exec("ip -d -j link show type vlan", CMD)?;
        ensure!(
            !vlan.contains("\"ifname\""),
            "The refused config's VLAN exists anyway: {vlan}"
        );
        Ok(())
    })();
    checked.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    #[test]
    fn the_recipe_fits_the_qemu_nic() {
        let cfg = static_vlan_config(&root()).unwrap();
        let net = cfg.network.unwrap();
        assert_eq!(net.interfaces[0].mac.as_deref(), Some(NIC_MAC));
        assert!(net.interfaces[0].name.is_none());
        assert!(net.vlans.iter().all(|v| v.parent == GUEST_NIC));
    }

    #[test]
    fn invalid_config_names_the_vlan_id() {
        let e = MachineConfig::from_toml(&invalid_config(&root()).unwrap())
            .unwrap_err()
            .to_string();
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
