//! Pure rendering of the machine config into the files systemd reads:
//! systemd-networkd `.network` and `.netdev` files and a systemd-timesyncd
//! drop-in.
//!
//! Every network file is named `10-debvisor-*` so that it sorts before the
//! image's `80-debvisor-dhcp.network` and wins for the links it matches.

use std::collections::BTreeMap;
use std::fmt::Write;

use debvisor_api::machine::{LinkAddressing, NetworkConfig};

/// Prefix of every network file debvisor-init writes (and may remove).
pub const NETWORK_FILE_PREFIX: &str = "10-debvisor-";

/// First line of every rendered file.
const HEADER: &str = "# Written by debvisor-init from the machine config; local changes are overwritten.\n";

/// One rendered file: its name in the target directory and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// File name, e.g. `10-debvisor-vlan100.netdev`.
    pub name: String,
    /// Full content.
    pub contents: String,
}

/// The systemd-networkd files for `net`, sorted by name. With no
/// `[network]` section: DHCP on every wired interface (`en*`, `eth*`).
///
/// `mac_names` maps the (lowercase) MAC address of each physical interface
/// present to its kernel name: a VLAN parent or a bond or bridge member
/// named like an interface that the config matches by MAC is attached in
/// that interface's file, since networkd applies one `.network` per link.
pub fn network_files(net: Option<&NetworkConfig>, mac_names: &BTreeMap<String, String>) -> Vec<RenderedFile> {
    let Some(net) = net else {
        return vec![RenderedFile {
            name: format!("{NETWORK_FILE_PREFIX}default.network"),
            contents: format!(
                "{HEADER}# No [network] section: DHCP on every wired interface.\n\
                 [Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
            ),
        }];
    };

    // Links that other links attach to: parent or member name -> lines such
    // as `VLAN=vlan100`, `Bond=bond0`, `Bridge=br0`.
    let mut attach: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for v in &net.vlans {
        attach.entry(&v.parent).or_default().push(format!("VLAN={}", v.name));
    }
    for b in &net.bonds {
        for m in &b.members {
            attach.entry(m).or_default().push(format!("Bond={}", b.name));
        }
    }
    for b in &net.bridges {
        for m in &b.members {
            attach.entry(m).or_default().push(format!("Bridge={}", b.name));
        }
    }
    let mut take = |name: &str| attach.remove(name).unwrap_or_default();

    let mut files = Vec::new();
    let mut network = |stem: &str, matcher: String, a: &LinkAddressing, extra: Vec<String>| {
        files.push(RenderedFile {
            name: format!("{NETWORK_FILE_PREFIX}{stem}.network"),
            contents: network_unit(&matcher, a, &extra),
        });
    };
    for ifc in &net.interfaces {
        match (&ifc.name, &ifc.mac) {
            (Some(name), _) => network(name, format!("Name={name}"), &ifc.addressing(), take(name)),
            (None, Some(mac)) => {
                let mac = mac.to_ascii_lowercase();
                let stem = format!("mac-{}", mac.replace(':', ""));
                let extra = mac_names.get(&mac).map(|n| take(n)).unwrap_or_default();
                // Type=ether: VLANs and bonds share the MAC of their parent.
                network(&stem, format!("MACAddress={mac}\nType=ether"), &ifc.addressing(), extra);
            }
            (None, None) => {} // refused by validation
        }
    }
    let mut netdevs = Vec::new();
    for v in &net.vlans {
        netdevs.push(netdev(&v.name, "vlan", &format!("\n[VLAN]\nId={}\n", v.id)));
        network(&v.name, format!("Name={}", v.name), &v.addressing(), take(&v.name));
    }
    for b in &net.bonds {
        let section = format!("\n[Bond]\nMode={}\nMIIMonitorSec=100ms\n", b.mode.as_str());
        netdevs.push(netdev(&b.name, "bond", &section));
        network(&b.name, format!("Name={}", b.name), &b.addressing(), take(&b.name));
    }
    for b in &net.bridges {
        netdevs.push(netdev(&b.name, "bridge", ""));
        network(&b.name, format!("Name={}", b.name), &b.addressing(), take(&b.name));
    }
    // Parents and members that are not declared themselves: a file that only
    // attaches them.
    for (name, lines) in std::mem::take(&mut attach) {
        network(name, format!("Name={name}"), &LinkAddressing::default(), lines);
    }
    files.extend(netdevs);
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// A `.network` file: `[Match]`, `[Link]` (MTU), `[Network]` and one
/// `[Route]` per static route.
fn network_unit(matcher: &str, a: &LinkAddressing, attachments: &[String]) -> String {
    let mut s = format!("{HEADER}[Match]\n{matcher}\n");
    if let Some(mtu) = a.mtu {
        let _ = write!(s, "\n[Link]\nMTUBytes={mtu}\n");
    }
    let dhcp = match (a.dhcp4, a.dhcp6) {
        (true, true) => "yes",
        (true, false) => "ipv4",
        (false, true) => "ipv6",
        (false, false) => "no",
    };
    let _ = write!(s, "\n[Network]\nDHCP={dhcp}\n");
    if let Some(ra) = a.ipv6_accept_ra {
        let _ = writeln!(s, "IPv6AcceptRA={}", if ra { "yes" } else { "no" });
    }
    for addr in &a.addresses {
        let _ = writeln!(s, "Address={addr}");
    }
    for gw in a.gateway4.iter().chain(&a.gateway6) {
        let _ = writeln!(s, "Gateway={gw}");
    }
    for dns in &a.dns {
        let _ = writeln!(s, "DNS={dns}");
    }
    if !a.search.is_empty() {
        let _ = writeln!(s, "Domains={}", a.search.join(" "));
    }
    for line in attachments {
        let _ = writeln!(s, "{line}");
    }
    for r in &a.routes {
        let _ = write!(s, "\n[Route]\nDestination={}\nGateway={}\n", r.destination, r.gateway);
        if let Some(metric) = r.metric {
            let _ = writeln!(s, "Metric={metric}");
        }
    }
    s
}

fn netdev(name: &str, kind: &str, section: &str) -> RenderedFile {
    RenderedFile {
        name: format!("{NETWORK_FILE_PREFIX}{name}.netdev"),
        contents: format!("{HEADER}[NetDev]\nName={name}\nKind={kind}\n{section}"),
    }
}

/// The systemd-timesyncd drop-in for `ntp`, or `None` when no servers are
/// configured (timesyncd then uses the image's and DHCP's servers).
pub fn timesyncd_dropin(ntp: &[String]) -> Option<String> {
    (!ntp.is_empty()).then(|| format!("{HEADER}[Time]\nNTP={}\n", ntp.join(" ")))
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
