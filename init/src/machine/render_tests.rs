use debvisor_api::machine::MachineConfig;

use super::*;

const H: &str = HEADER;

fn render(toml: &str) -> Vec<(String, String)> {
    render_with(toml, &BTreeMap::new())
}

fn render_with(toml: &str, macs: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let cfg = MachineConfig::from_toml(toml).unwrap();
    network_files(cfg.network.as_ref(), macs)
        .into_iter()
        .map(|f| (f.name, f.contents))
        .collect()
}

fn file(name: &str, body: &str) -> (String, String) {
    (name.to_string(), format!("{H}{body}"))
}

#[test]
fn no_network_section_is_dhcp_on_wired_interfaces() {
    assert_eq!(
        render("version = 1\n"),
        [file(
            "10-debvisor-default.network",
            "# No [network] section: DHCP on every wired interface.\n[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
        )]
    );
}

#[test]
fn static_address_with_a_vlan() {
    assert_eq!(
        render(include_str!("../../../recipes/machine/static-vlan.toml")),
        [
            file(
                "10-debvisor-enp0s2.network",
                "[Match]\nName=enp0s2\n\n[Network]\nDHCP=no\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n\
                 DNS=10.0.2.3\nDomains=lab.example\nVLAN=vlan100\n"
            ),
            file(
                "10-debvisor-vlan100.netdev",
                "[NetDev]\nName=vlan100\nKind=vlan\n\n[VLAN]\nId=100\n"
            ),
            file(
                "10-debvisor-vlan100.network",
                "[Match]\nName=vlan100\n\n[Network]\nDHCP=no\nIPv6AcceptRA=no\nAddress=192.168.100.10/24\n\
                 Address=2001:db8:100::10/64\n\n[Route]\nDestination=192.168.200.0/24\nGateway=192.168.100.1\n\
                 Metric=100\n"
            ),
        ]
    );
}

#[test]
fn bond_under_a_bridge_with_dhcp() {
    assert_eq!(
        render(include_str!("../../../recipes/machine/bond-bridge.toml")),
        [
            file(
                "10-debvisor-bond0.netdev",
                "[NetDev]\nName=bond0\nKind=bond\n\n[Bond]\nMode=active-backup\nMIIMonitorSec=100ms\n"
            ),
            file(
                "10-debvisor-bond0.network",
                "[Match]\nName=bond0\n\n[Network]\nDHCP=no\nBridge=br0\n"
            ),
            file("10-debvisor-br0.netdev", "[NetDev]\nName=br0\nKind=bridge\n"),
            file(
                "10-debvisor-br0.network",
                "[Match]\nName=br0\n\n[Network]\nDHCP=yes\nIPv6AcceptRA=yes\n"
            ),
            file(
                "10-debvisor-enp1s0.network",
                "[Match]\nName=enp1s0\n\n[Network]\nDHCP=no\nBond=bond0\n"
            ),
            file(
                "10-debvisor-enp2s0.network",
                "[Match]\nName=enp2s0\n\n[Network]\nDHCP=no\nBond=bond0\n"
            ),
        ]
    );
}

#[test]
fn mac_match_mtu_dhcp_variants_and_ipv6_gateway() {
    let toml = "version = 1\n\
        [[network.interfaces]]\nmac = \"52:54:00:AB:CD:EF\"\ndhcp6 = true\nmtu = 9000\n\
        addresses = [\"2001:db8::5/64\"]\ngateway6 = \"2001:db8::1\"\ndns = [\"2001:db8::53\"]\n\
        [[network.interfaces]]\nname = \"eth1\"\ndhcp4 = true\naddresses = [\"10.0.0.5/24\"]\n";
    assert_eq!(
        render(toml),
        [
            file(
                "10-debvisor-eth1.network",
                "[Match]\nName=eth1\n\n[Network]\nDHCP=ipv4\nAddress=10.0.0.5/24\n"
            ),
            file(
                "10-debvisor-mac-525400abcdef.network",
                "[Match]\nMACAddress=52:54:00:ab:cd:ef\nType=ether\n\n[Link]\nMTUBytes=9000\n\n[Network]\nDHCP=ipv6\n\
                 Address=2001:db8::5/64\nGateway=2001:db8::1\nDNS=2001:db8::53\n"
            ),
        ]
    );
}

#[test]
fn vlan_on_a_bond_member_of_a_declared_interface() {
    let toml = "version = 1\n\
        [[network.interfaces]]\nname = \"eth0\"\n\
        [[network.bonds]]\nname = \"bond0\"\nmode = \"802.3ad\"\nmembers = [\"eth0\"]\n\
        [[network.vlans]]\nname = \"bond0.7\"\nid = 7\nparent = \"bond0\"\ndhcp4 = true\n";
    let files = render(toml);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "10-debvisor-bond0.7.netdev",
            "10-debvisor-bond0.7.network",
            "10-debvisor-bond0.netdev",
            "10-debvisor-bond0.network",
            "10-debvisor-eth0.network",
        ]
    );
    assert_eq!(
        files[3].1,
        format!("{H}[Match]\nName=bond0\n\n[Network]\nDHCP=no\nVLAN=bond0.7\n")
    );
    assert_eq!(
        files[4].1,
        format!("{H}[Match]\nName=eth0\n\n[Network]\nDHCP=no\nBond=bond0\n")
    );
    assert!(files[2].1.contains("Mode=802.3ad\n"));
}

#[test]
fn timesyncd_dropin_only_with_servers() {
    assert_eq!(timesyncd_dropin(&[]), None);
    assert_eq!(
        timesyncd_dropin(&["0.pool.ntp.org".into(), "192.0.2.1".into()]).unwrap(),
        format!("{H}[Time]\nNTP=0.pool.ntp.org 192.0.2.1\n")
    );
}

#[test]
fn vlan_parent_matched_by_mac_is_attached_in_the_mac_file() {
    let toml = "version = 1\n\
        [[network.interfaces]]\nmac = \"52:54:00:12:34:56\"\naddresses = [\"10.0.2.15/24\"]\n\
        [[network.vlans]]\nname = \"vlan100\"\nid = 100\nparent = \"ens3\"\n";
    let macs = BTreeMap::from([("52:54:00:12:34:56".to_string(), "ens3".to_string())]);
    let files = render_with(toml, &macs);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "10-debvisor-mac-525400123456.network",
            "10-debvisor-vlan100.netdev",
            "10-debvisor-vlan100.network"
        ]
    );
    assert_eq!(
        files[0].1,
        format!(
            "{H}[Match]\nMACAddress=52:54:00:12:34:56\nType=ether\n\n[Network]\nDHCP=no\nAddress=10.0.2.15/24\nVLAN=vlan100\n"
        )
    );
    // Without the interface present, the parent gets a file of its own.
    let names: Vec<String> = render(toml).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"10-debvisor-ens3.network".to_string()), "{names:?}");
}
