//! `[network]`: interfaces, VLANs, bonds and bridges for systemd-networkd.
//!
//! Every kind of link carries the same addressing keys (`dhcp4`, `addresses`,
//! `gateway4`, `routes`, `dns`, ...) directly in its table. They are declared
//! once in [`link_struct!`] rather than through `#[serde(flatten)]`, which
//! would silently disable `deny_unknown_fields`.

use serde::{Deserialize, Serialize};

/// `[network]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Physical interfaces, matched by name or MAC address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceConfig>,
    /// 802.1Q VLANs on a parent link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<VlanConfig>,
    /// Bonds of several interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bonds: Vec<BondConfig>,
    /// Bridges (for VMs) over interfaces, bonds or VLANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<BridgeConfig>,
}

/// `[[...routes]]`: a static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Destination prefix in CIDR form (`10.1.0.0/16`, `2001:db8:1::/48`).
    pub destination: String,
    /// Next hop address.
    pub gateway: String,
    /// Route metric (lower wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// The addressing of one link, as shared by every kind of link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkAddressing {
    /// Run a DHCPv4 client.
    pub dhcp4: bool,
    /// Run a DHCPv6 client.
    pub dhcp6: bool,
    /// Accept IPv6 router advertisements (`None`: networkd's default).
    pub ipv6_accept_ra: Option<bool>,
    /// Static addresses in CIDR form, IPv4 and IPv6.
    pub addresses: Vec<String>,
    /// IPv4 default gateway.
    pub gateway4: Option<String>,
    /// IPv6 default gateway.
    pub gateway6: Option<String>,
    /// Static routes.
    pub routes: Vec<RouteConfig>,
    /// DNS servers.
    pub dns: Vec<String>,
    /// DNS search domains.
    pub search: Vec<String>,
    /// MTU in bytes.
    pub mtu: Option<u32>,
}

impl LinkAddressing {
    /// True when nothing but the defaults is set: no address is configured
    /// on the link.
    pub fn is_unconfigured(&self) -> bool {
        *self == Self::default()
    }
}

/// Declares a link table: its own fields followed by the addressing keys,
/// with `deny_unknown_fields`, and `addressing()` returning them as a
/// [`LinkAddressing`].
macro_rules! link_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Run a DHCPv4 client.
            #[serde(default, skip_serializing_if = "is_false")]
            pub dhcp4: bool,
            /// Run a DHCPv6 client.
            #[serde(default, skip_serializing_if = "is_false")]
            pub dhcp6: bool,
            /// Accept IPv6 router advertisements (unset: networkd's default).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub ipv6_accept_ra: Option<bool>,
            /// Static addresses in CIDR form, IPv4 and IPv6.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub addresses: Vec<String>,
            /// IPv4 default gateway.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub gateway4: Option<String>,
            /// IPv6 default gateway.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub gateway6: Option<String>,
            /// Static routes.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub routes: Vec<RouteConfig>,
            /// DNS servers.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub dns: Vec<String>,
            /// DNS search domains.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub search: Vec<String>,
            /// MTU in bytes (68-65535).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub mtu: Option<u32>,
        }

        impl $name {
            /// The link's addressing keys.
            pub fn addressing(&self) -> LinkAddressing {
                LinkAddressing {
                    dhcp4: self.dhcp4,
                    dhcp6: self.dhcp6,
                    ipv6_accept_ra: self.ipv6_accept_ra,
                    addresses: self.addresses.clone(),
                    gateway4: self.gateway4.clone(),
                    gateway6: self.gateway6.clone(),
                    routes: self.routes.clone(),
                    dns: self.dns.clone(),
                    search: self.search.clone(),
                    mtu: self.mtu,
                }
            }
        }
    };
}

fn is_false(b: &bool) -> bool {
    !*b
}

link_struct! {
    /// `[[network.interfaces]]`: a physical interface, matched by exactly one
    /// of `name` and `mac`.
    pub struct InterfaceConfig {
        /// Kernel interface name (`enp0s2`, `eth0`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        /// MAC address (`52:54:00:12:34:56`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub mac: Option<String>,
    }
}

link_struct! {
    /// `[[network.vlans]]`: an 802.1Q VLAN on `parent`.
    pub struct VlanConfig {
        /// The VLAN link's name (`vlan100`).
        pub name: String,
        /// VLAN id, 1-4094.
        pub id: u16,
        /// The link carrying the VLAN: an interface, bond or bridge name.
        pub parent: String,
    }
}

link_struct! {
    /// `[[network.bonds]]`: a bond of `members`.
    pub struct BondConfig {
        /// The bond's name (`bond0`).
        pub name: String,
        /// Bonding mode.
        pub mode: BondMode,
        /// Interface names enslaved to the bond.
        pub members: Vec<String>,
    }
}

link_struct! {
    /// `[[network.bridges]]`: a bridge over `members` (may be empty for a
    /// VM-only bridge).
    pub struct BridgeConfig {
        /// The bridge's name (`br0`).
        pub name: String,
        /// Interfaces, bonds or VLANs attached to the bridge.
        #[serde(default)]
        pub members: Vec<String>,
    }
}

impl InterfaceConfig {
    /// The name by which other links refer to this interface (its `name`,
    /// if matched by name).
    pub fn ifname(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// Linux bonding modes, spelled as in systemd.netdev(5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BondMode {
    /// Round robin.
    #[serde(rename = "balance-rr")]
    BalanceRr,
    /// One active member, the others on standby.
    #[serde(rename = "active-backup")]
    ActiveBackup,
    /// Transmit hash policy.
    #[serde(rename = "balance-xor")]
    BalanceXor,
    /// Everything on every member.
    #[serde(rename = "broadcast")]
    Broadcast,
    /// IEEE 802.3ad LACP.
    #[serde(rename = "802.3ad")]
    Lacp,
    /// Adaptive transmit load balancing.
    #[serde(rename = "balance-tlb")]
    BalanceTlb,
    /// Adaptive load balancing.
    #[serde(rename = "balance-alb")]
    BalanceAlb,
}

impl BondMode {
    /// The mode's name in systemd.netdev(5) and in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            BondMode::BalanceRr => "balance-rr",
            BondMode::ActiveBackup => "active-backup",
            BondMode::BalanceXor => "balance-xor",
            BondMode::Broadcast => "broadcast",
            BondMode::Lacp => "802.3ad",
            BondMode::BalanceTlb => "balance-tlb",
            BondMode::BalanceAlb => "balance-alb",
        }
    }
}
