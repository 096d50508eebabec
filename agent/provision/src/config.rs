//! The provisioner's configuration (TOML): the networks it serves, static
//! reservations, and what it hands to network-booting firmware.
//!
//! ```toml
//! state_dir = "/var/lib/debvisor/provision"
//!
//! [[network]]
//! interface = "prov0"             # answer only on this interface
//! address = "198.51.100.1/24"     # ours on it; also the TFTP and HTTP server
//! mode = "server"                 # or "proxy": PXE answers beside a site DHCP server
//! range = ["198.51.100.100", "198.51.100.199"]
//! router = "198.51.100.1"
//! dns = ["198.51.100.1"]
//! lease_secs = 3600
//!
//! [[reservation]]
//! mac = "52:54:00:00:00:11"
//! ip = "198.51.100.20"
//! hostname = "node-a"
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use debvisor_api::machine::{is_hostname, is_ifname};

/// The most addresses one range hands out.
pub const MAX_RANGE: u32 = 1 << 17;

/// The longest boot file name the BOOTP `file` field holds, in bytes.
pub const MAX_BOOT_FILE: usize = 128;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;

    /// `52:54:00:ab:cd:ef` or `52-54-00-ab-cd-ef`, either case.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address: expected six hex pairs such as 52:54:00:ab:cd:ef");
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An IPv4 address with its prefix length (`198.51.100.1/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 1-30 (a DHCP subnet needs room for clients).
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The subnet mask.
    pub fn mask(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix)))
    }

    /// Whether `ip` is in this subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.mask());
        u32::from(ip) & m == u32::from(self.addr) & m
    }

    /// The subnet's broadcast address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !u32::from(self.mask()))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 address with a prefix length 1-30 such as 198.51.100.1/24");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(1..=30).contains(&prefix) || p != prefix.to_string() {
            return Err(bad());
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How the provisioner answers on a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The network's DHCP server: addresses from the range, boot files to
    /// network-booting firmware.
    Server,
    /// proxyDHCP (PXE specification 2.1): another server hands out the
    /// addresses; we answer only PXE clients, with boot files and no address,
    /// on ports 67 and 4011.
    Proxy,
}

fn default_lease_secs() -> u32 {
    3600
}

/// One network the provisioner serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The interface it answers on (and only there).
    pub interface: String,
    /// Our address on it with the subnet's prefix.
    pub address: Ipv4Cidr,
    /// Server or proxy.
    pub mode: Mode,
    /// First and last address handed out (server mode).
    #[serde(default)]
    pub range: Option<[Ipv4Addr; 2]>,
    /// The default gateway given to clients.
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    /// DNS servers given to clients.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// The DNS domain given to clients.
    #[serde(default)]
    pub domain: Option<String>,
    /// Lease length in seconds (60 s to 30 days).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
}

/// A fixed address (and optionally a host name) for one MAC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// The client's MAC.
    pub mac: Mac,
    /// Its address, inside a server-mode network (not necessarily in the range).
    pub ip: Ipv4Addr,
    /// The host name given in option 12.
    #[serde(default)]
    pub hostname: Option<String>,
}

fn default_tftp_root() -> PathBuf {
    PathBuf::from("/usr/lib/ipxe")
}

fn default_true() -> bool {
    true
}

/// The TFTP server: it serves the iPXE binaries to PXE firmware.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tftp {
    /// Whether to run it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The directory of the iPXE binaries (Debian's `ipxe` package).
    #[serde(default = "default_tftp_root")]
    pub root: PathBuf,
}

impl Default for Tftp {
    fn default() -> Self {
        Tftp {
            enabled: true,
            root: default_tftp_root(),
        }
    }
}

fn default_http_port() -> u16 {
    8080
}
fn default_bios() -> String {
    "undionly.kpxe".into()
}
fn default_efi_x64() -> String {
    "snponly.efi".into()
}

/// What network-booting firmware is told to load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// The port of the provisioner's HTTP server (iPXE scripts, images).
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// The iPXE binary for BIOS PXE ROMs (client architecture 0), by TFTP.
    #[serde(default = "default_bios")]
    pub bios: String,
    /// The iPXE binary for x64 UEFI (architectures 7 and 9), by TFTP, and by
    /// HTTP for UEFI HTTP boot (16).
    #[serde(default = "default_efi_x64")]
    pub efi_x64: String,
    /// The binary for arm64 UEFI (11, 19). Debian 12's ipxe has none, so
    /// such clients get no boot file unless this names one.
    #[serde(default)]
    pub efi_arm64: Option<String>,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            http_port: default_http_port(),
            bios: default_bios(),
            efi_x64: default_efi_x64(),
            efi_arm64: None,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the lease database lives.
    pub state_dir: PathBuf,
    /// The networks served.
    #[serde(default, rename = "network")]
    pub networks: Vec<Network>,
    /// Static reservations.
    #[serde(default, rename = "reservation")]
    pub reservations: Vec<Reservation>,
    /// The TFTP server.
    #[serde(default)]
    pub tftp: Tftp,
    /// Boot files.
    #[serde(default)]
    pub boot: Boot,
    /// The image sets served over HTTP, one directory per version holding
    /// vmlinuz, initrd.img, rootfs.squashfs, install.img and SHA256SUMS
    /// (default: `images` in the state directory).
    #[serde(default)]
    pub images_dir: Option<PathBuf>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("Cannot read the provisioner config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML or not the expected shape.
    #[error("Provisioner config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value breaks a rule.
    #[error("Provisioner config: {key} = {value}: {reason}")]
    Invalid {
        /// The key, e.g. `network[0].range`.
        key: String,
        /// The offending value.
        value: String,
        /// The rule and what to do.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, value: impl fmt::Debug, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: format!("{value:?}"),
        reason: reason.into(),
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.networks.is_empty() {
            return Err(invalid(
                "network",
                "[]",
                "no network to serve: add a [[network]] table with interface, address and mode",
            ));
        }
        let mut ifaces = HashSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            let key = |k: &str| format!("network[{i}].{k}");
            if !is_ifname(&n.interface) {
                return Err(invalid(
                    key("interface"),
                    &n.interface,
                    "not an interface name (1-15 of A-Z a-z 0-9 _ . -)",
                ));
            }
            if !ifaces.insert(&n.interface) {
                return Err(invalid(
                    key("interface"),
                    &n.interface,
                    "served twice: one [[network]] per interface",
                ));
            }
            for (j, other) in self.networks[..i].iter().enumerate() {
                if other.address.contains(n.address.addr) || n.address.contains(other.address.addr) {
                    return Err(invalid(
                        key("address"),
                        n.address.addr,
                        format!(
                            "overlaps network[{j}] ({}/{})",
                            other.address.addr, other.address.prefix
                        ),
                    ));
                }
            }
            let a = n.address;
            if a.addr == a.broadcast() || u32::from(a.addr) & !u32::from(a.mask()) == 0 {
                return Err(invalid(
                    key("address"),
                    a.addr,
                    "is the subnet's network or broadcast address",
                ));
            }
            if !(60..=30 * 86400).contains(&n.lease_secs) {
                return Err(invalid(
                    key("lease_secs"),
                    n.lease_secs,
                    "must be 60 (a minute) to 2592000 (30 days)",
                ));
            }
            if let Some(r) = n.router.filter(|r| !a.contains(*r)) {
                return Err(invalid(key("router"), r, "is outside the network's subnet"));
            }
            if let Some(d) = n.domain.as_deref().filter(|d| !is_hostname(d)) {
                return Err(invalid(key("domain"), d, "not a DNS domain name"));
            }
            match (n.mode, n.range) {
                (Mode::Server, None) => {
                    return Err(invalid(
                        key("range"),
                        "none",
                        "server mode hands out addresses: give range = [first, last]",
                    ));
                }
                (Mode::Proxy, Some(r)) => {
                    return Err(invalid(
                        key("range"),
                        r,
                        "proxy mode hands out no addresses (the site's DHCP server does): remove it",
                    ));
                }
                (Mode::Server, Some([first, last])) => {
                    if !a.contains(first) || !a.contains(last) {
                        return Err(invalid(
                            key("range"),
                            [first, last],
                            "must lie inside the network's subnet",
                        ));
                    }
                    if u32::from(first) > u32::from(last) {
                        return Err(invalid(key("range"), [first, last], "first address is after the last"));
                    }
                    if (u32::from(first)..=u32::from(last)).contains(&u32::from(a.addr)) {
                        return Err(invalid(
                            key("range"),
                            [first, last],
                            "contains the server's own address",
                        ));
                    }
                    let network = Ipv4Addr::from(u32::from(a.addr) & u32::from(a.mask()));
                    if first == network || last == a.broadcast() {
                        return Err(invalid(
                            key("range"),
                            [first, last],
                            "contains the network or broadcast address",
                        ));
                    }
                    if u32::from(last) - u32::from(first) >= MAX_RANGE {
                        return Err(invalid(
                            key("range"),
                            [first, last],
                            format!("more than {MAX_RANGE} addresses"),
                        ));
                    }
                }
                (Mode::Proxy, None) => {}
            }
        }
        let mut macs = HashSet::new();
        let mut ips = HashSet::new();
        for (i, r) in self.reservations.iter().enumerate() {
            let key = |k: &str| format!("reservation[{i}].{k}");
            if !macs.insert(r.mac) {
                return Err(invalid(key("mac"), r.mac.to_string(), "reserved twice"));
            }
            if !ips.insert(r.ip) {
                return Err(invalid(key("ip"), r.ip, "reserved for two MACs"));
            }
            let Some(net) = self
                .networks
                .iter()
                .find(|n| n.mode == Mode::Server && n.address.contains(r.ip))
            else {
                return Err(invalid(key("ip"), r.ip, "is in no server-mode network's subnet"));
            };
            let network = Ipv4Addr::from(u32::from(net.address.addr) & u32::from(net.address.mask()));
            if r.ip == net.address.addr || r.ip == net.address.broadcast() || r.ip == network {
                return Err(invalid(
                    key("ip"),
                    r.ip,
                    "is the server's own, the network or the broadcast address",
                ));
            }
            if let Some(h) = r.hostname.as_deref().filter(|h| !is_hostname(h) || h.contains('.')) {
                return Err(invalid(
                    key("hostname"),
                    h,
                    "not a host name (one label of A-Z a-z 0-9 -)",
                ));
            }
        }
        for (k, v) in [
            ("boot.bios", Some(&self.boot.bios)),
            ("boot.efi_x64", Some(&self.boot.efi_x64)),
        ]
        .into_iter()
        .chain([("boot.efi_arm64", self.boot.efi_arm64.as_ref())])
        {
            if let Some(v) = v.filter(|v| !crate::tftp::is_plain_file_name(v)) {
                return Err(invalid(
                    k,
                    v,
                    format!("a file name in tftp.root: 1-{MAX_BOOT_FILE} bytes of A-Z a-z 0-9 _ . -, not . or .."),
                ));
            }
        }
        if self.boot.http_port == 0 {
            return Err(invalid("boot.http_port", 0, "must be 1-65535"));
        }
        Ok(())
    }

    /// Where the image sets are.
    pub fn images_dir(&self) -> PathBuf {
        self.images_dir.clone().unwrap_or_else(|| self.state_dir.join("images"))
    }

    /// The reservation for `mac`, if any.
    pub fn reservation(&self, mac: Mac) -> Option<&Reservation> {
        self.reservations.iter().find(|r| r.mac == mac)
    }
}

#[cfg(test)]
mod tests;
