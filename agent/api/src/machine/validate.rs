//! Checks of every machine config value, with errors that name the key path
//! and the value.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::shape::{
    is_argon2id, is_host, is_host_port, is_hostname, is_http_url, is_ifname, is_mac, is_ssh_key, is_timezone_shape,
    parse_cidr,
};

use super::network::LinkAddressing;
use super::{MachineConfig, RoleKind, SUPPORTED_VERSION};
use crate::validate::UnitName;

/// Why a machine config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineConfigError {
    /// TOML syntax, a wrong type or an unknown key; toml's message names the
    /// line, column and key.
    #[error("Machine config does not parse: {0}")]
    Syntax(String),
    /// No `version` key.
    #[error("version is missing: add `version = {SUPPORTED_VERSION}` (the version this DebVisor reads)")]
    MissingVersion,
    /// A `version` other than [`SUPPORTED_VERSION`].
    #[error("version = {0}: unsupported; this DebVisor reads version = {SUPPORTED_VERSION}")]
    UnsupportedVersion(String),
    /// A value that breaks a rule.
    #[error("{key} = {value}: {reason}")]
    Invalid {
        /// Key path, e.g. `network.vlans[0].id`.
        key: String,
        /// The value as written in TOML.
        value: String,
        /// The rule, saying what is allowed.
        reason: String,
    },
}

type Result<T = ()> = std::result::Result<T, MachineConfigError>;

fn invalid(key: impl Into<String>, value: impl std::fmt::Display, reason: impl Into<String>) -> MachineConfigError {
    MachineConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A string value quoted as in TOML.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn check_str(key: &str, value: &str, ok: bool, reason: &str) -> Result {
    if ok {
        Ok(())
    } else {
        Err(invalid(key, q(value), reason))
    }
}

/// Runs every check of `cfg`.
pub(super) fn config(cfg: &MachineConfig) -> Result {
    if cfg.version != SUPPORTED_VERSION {
        return Err(MachineConfigError::UnsupportedVersion(cfg.version.to_string()));
    }
    node(cfg)?;
    if let Some(net) = &cfg.network {
        network(net)?;
    }
    admin(cfg)?;
    cluster(cfg)?;
    let mut seen = HashSet::new();
    for (i, unit) in cfg.services.supervise.iter().enumerate() {
        let key = format!("services.supervise[{i}]");
        UnitName::try_from(unit.as_str()).map_err(|e| invalid(&key, q(unit), e.to_string()))?;
        check_str(&key, unit, seen.insert(unit), "listed twice")?;
    }
    health(cfg)?;
    if let Some(install) = &cfg.install {
        install_disk(&install.disk)?;
    }
    for (i, hook) in cfg.alerts.webhooks.iter().enumerate() {
        let key = |k: &str| format!("alerts.webhooks[{i}].{k}");
        check_str(
            &key("url"),
            &hook.url,
            is_http_url(&hook.url),
            "an http:// or https:// URL with a host",
        )?;
        if hook.retries > 100 {
            return Err(invalid(key("retries"), hook.retries, "at most 100 retries"));
        }
        if !(1..=300).contains(&hook.timeout_seconds) {
            return Err(invalid(key("timeout_seconds"), hook.timeout_seconds, "1-300 seconds"));
        }
    }
    if cfg.boot.gate_deadline_seconds < 30 {
        return Err(invalid(
            "boot.gate_deadline_seconds",
            cfg.boot.gate_deadline_seconds,
            "at least 30 seconds, so that a healthy boot has time to settle",
        ));
    }
    Ok(())
}

fn node(cfg: &MachineConfig) -> Result {
    if let Some(h) = &cfg.node.hostname {
        check_str(
            "node.hostname",
            h,
            is_hostname(h),
            "an RFC 1123 host name: labels of 1-63 letters, digits and '-' (not at either end), \
             separated by '.', at most 253 characters",
        )?;
    }
    if let Some(tz) = &cfg.node.timezone {
        check_str(
            "node.timezone",
            tz,
            is_timezone_shape(tz),
            "an IANA time zone name such as UTC or Europe/Berlin",
        )?;
    }
    for (i, s) in cfg.node.ntp.iter().enumerate() {
        check_str(
            &format!("node.ntp[{i}]"),
            s,
            is_host(s),
            "an NTP server's host name or address",
        )?;
    }
    Ok(())
}

fn network(net: &super::NetworkConfig) -> Result {
    // Every link name declared, with the key that declared it.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut declare = |name: &str, key: String| -> Result {
        check_str(&key, name, is_ifname(name), IFNAME_RULE)?;
        if let Some(first) = names.insert(name.to_string(), key.clone()) {
            return Err(invalid(key, q(name), format!("the name is already used by {first}")));
        }
        Ok(())
    };
    let mut macs = HashSet::new();
    for (i, ifc) in net.interfaces.iter().enumerate() {
        let key = format!("network.interfaces[{i}]");
        match (&ifc.name, &ifc.mac) {
            (Some(name), None) => declare(name, format!("{key}.name"))?,
            (None, Some(mac)) => {
                check_str(
                    &format!("{key}.mac"),
                    mac,
                    is_mac(mac),
                    "a MAC address like 52:54:00:12:34:56",
                )?;
                check_str(
                    &format!("{key}.mac"),
                    mac,
                    macs.insert(mac.to_ascii_lowercase()),
                    "listed twice",
                )?;
            }
            _ => {
                return Err(invalid(
                    key,
                    "{ ... }",
                    "set exactly one of name (kernel interface name) and mac (MAC address)",
                ));
            }
        }
        addressing(&key, &ifc.addressing())?;
    }
    for (i, v) in net.vlans.iter().enumerate() {
        let key = format!("network.vlans[{i}]");
        declare(&v.name, format!("{key}.name"))?;
        if !(1..=4094).contains(&v.id) {
            return Err(invalid(format!("{key}.id"), v.id, "a VLAN id is 1-4094"));
        }
        addressing(&key, &v.addressing())?;
    }
    for (i, b) in net.bonds.iter().enumerate() {
        let key = format!("network.bonds[{i}]");
        declare(&b.name, format!("{key}.name"))?;
        if b.members.is_empty() {
            return Err(invalid(
                format!("{key}.members"),
                "[]",
                "a bond needs at least one member",
            ));
        }
        addressing(&key, &b.addressing())?;
    }
    for (i, b) in net.bridges.iter().enumerate() {
        let key = format!("network.bridges[{i}]");
        declare(&b.name, format!("{key}.name"))?;
        addressing(&key, &b.addressing())?;
    }
    // References: parents and members name a declared link or a plausible
    // interface name; a link is enslaved at most once.
    let mut enslaved: HashMap<&str, String> = HashMap::new();
    for (i, v) in net.vlans.iter().enumerate() {
        let key = format!("network.vlans[{i}].parent");
        check_str(&key, &v.parent, is_ifname(&v.parent), IFNAME_RULE)?;
        check_str(&key, &v.parent, v.parent != v.name, "a VLAN cannot be its own parent")?;
    }
    let members = net
        .bonds
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            b.members
                .iter()
                .enumerate()
                .map(move |(j, m)| (format!("network.bonds[{i}].members[{j}]"), m, &b.name))
        })
        .chain(net.bridges.iter().enumerate().flat_map(|(i, b)| {
            b.members
                .iter()
                .enumerate()
                .map(move |(j, m)| (format!("network.bridges[{i}].members[{j}]"), m, &b.name))
        }));
    for (key, member, master) in members {
        check_str(&key, member, is_ifname(member), IFNAME_RULE)?;
        check_str(&key, member, member != master, "a link cannot be a member of itself")?;
        if let Some(first) = enslaved.insert(member, key.clone()) {
            return Err(invalid(
                key,
                q(member),
                format!("already a member at {first}; a link joins one bond or bridge"),
            ));
        }
        let into_bond = key.starts_with("network.bonds");
        let refused = if net.bridges.iter().any(|b| b.name == *member) {
            Some("a bridge cannot be a member of a bond or bridge")
        } else if into_bond && net.bonds.iter().any(|b| b.name == *member) {
            Some("a bond cannot be a member of another bond")
        } else if into_bond && net.vlans.iter().any(|v| v.name == *member) {
            Some("a VLAN cannot be a bond member; put the VLAN on the bond instead")
        } else {
            None
        };
        if let Some(reason) = refused {
            return Err(invalid(key, q(member), reason));
        }
    }
    Ok(())
}

const IFNAME_RULE: &str = "a kernel interface name: 1-15 characters of letters, digits, '_', '-' and '.'";

fn addressing(key: &str, a: &LinkAddressing) -> Result {
    for (i, addr) in a.addresses.iter().enumerate() {
        check_str(
            &format!("{key}.addresses[{i}]"),
            addr,
            parse_cidr(addr).is_some(),
            "an address with prefix length, e.g. 10.0.0.5/24 or 2001:db8::5/64",
        )?;
    }
    if let Some(g) = &a.gateway4 {
        check_str(
            &format!("{key}.gateway4"),
            g,
            g.parse::<Ipv4Addr>().is_ok(),
            "an IPv4 address",
        )?;
    }
    if let Some(g) = &a.gateway6 {
        check_str(
            &format!("{key}.gateway6"),
            g,
            g.parse::<Ipv6Addr>().is_ok(),
            "an IPv6 address",
        )?;
    }
    for (i, r) in a.routes.iter().enumerate() {
        let dest = parse_cidr(&r.destination);
        let k = format!("{key}.routes[{i}]");
        check_str(
            &format!("{k}.destination"),
            &r.destination,
            dest.is_some(),
            "a prefix such as 10.1.0.0/16 or 2001:db8:1::/48",
        )?;
        let gw = r.gateway.parse::<IpAddr>().ok();
        check_str(&format!("{k}.gateway"), &r.gateway, gw.is_some(), "an IP address")?;
        let same_family = matches!((dest, gw), (Some((d, _)), Some(g)) if d.is_ipv4() == g.is_ipv4());
        check_str(
            &format!("{k}.gateway"),
            &r.gateway,
            same_family,
            "of the same IP family as the destination",
        )?;
    }
    for (i, d) in a.dns.iter().enumerate() {
        check_str(
            &format!("{key}.dns[{i}]"),
            d,
            d.parse::<IpAddr>().is_ok(),
            "a DNS server's IP address",
        )?;
    }
    for (i, d) in a.search.iter().enumerate() {
        check_str(
            &format!("{key}.search[{i}]"),
            d,
            is_hostname(d),
            "a domain name such as example.com",
        )?;
    }
    if let Some(mtu) = a.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(invalid(format!("{key}.mtu"), mtu, "an MTU of 68-65535 bytes"));
    }
    Ok(())
}

fn admin(cfg: &MachineConfig) -> Result {
    if let Some(h) = &cfg.admin.password_hash {
        check_str(
            "admin.password_hash",
            h,
            is_argon2id(h),
            "an argon2id PHC string ($argon2id$v=19$m=..,t=..,p=..$salt$hash), e.g. from `argon2` or the console",
        )?;
    }
    for (i, k) in cfg.admin.ssh_authorized_keys.iter().enumerate() {
        check_str(
            &format!("admin.ssh_authorized_keys[{i}]"),
            k,
            is_ssh_key(k),
            "one OpenSSH public key line: key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ...), \
             base64 key and an optional comment",
        )?;
    }
    Ok(())
}

fn cluster(cfg: &MachineConfig) -> Result {
    match (&cfg.cluster, cfg.role.kind) {
        (None, RoleKind::Worker) => Err(invalid(
            "role.kind",
            q("worker"),
            "a worker needs [cluster] with controller = \"host:port\" and join_token",
        )),
        (Some(c), _) => {
            check_str(
                "cluster.controller",
                &c.controller,
                is_host_port(&c.controller),
                "host:port of the controller's agent, e.g. controller.example.com:7443 or [2001:db8::1]:7443",
            )?;
            let ok = (16..=256).contains(&c.join_token.len())
                && c.join_token
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._~+/=-".contains(ch));
            check_str(
                "cluster.join_token",
                &c.join_token,
                ok,
                "the controller's join token: 16-256 characters of letters, digits and . _ ~ + / = -",
            )
        }
        (None, _) => Ok(()),
    }
}

fn health(cfg: &MachineConfig) -> Result {
    let h = &cfg.health;
    let k = |f: &str| format!("health.{f}");
    let rule = |ok: bool, field: &str, value: &dyn std::fmt::Display, reason: &str| {
        if ok {
            Ok(())
        } else {
            Err(invalid(k(field), value, reason))
        }
    };
    rule(
        h.interval_seconds >= 1,
        "interval_seconds",
        &h.interval_seconds,
        "at least 1 second",
    )?;
    rule(
        h.timeout_seconds >= 1 && h.timeout_seconds < h.interval_seconds,
        "timeout_seconds",
        &h.timeout_seconds,
        &format!("at least 1 and below interval_seconds ({})", h.interval_seconds),
    )?;
    rule(
        (1..=10_000).contains(&h.history),
        "history",
        &h.history,
        "1-10000 results",
    )?;
    rule(
        h.disk_warn_percent >= 1 && h.disk_warn_percent < h.disk_fail_percent,
        "disk_warn_percent",
        &h.disk_warn_percent,
        &format!("at least 1 and below disk_fail_percent ({})", h.disk_fail_percent),
    )?;
    rule(
        h.disk_fail_percent <= 100,
        "disk_fail_percent",
        &h.disk_fail_percent,
        "at most 100",
    )?;
    rule(
        h.load_per_cpu_warn.is_finite() && h.load_per_cpu_warn > 0.0,
        "load_per_cpu_warn",
        &h.load_per_cpu_warn,
        "a positive number",
    )?;
    rule(
        h.cert_renew_days >= 1,
        "cert_renew_days",
        &h.cert_renew_days,
        "at least 1 day",
    )?;
    for (i, n) in h.dns_names.iter().enumerate() {
        check_str(
            &k(&format!("dns_names[{i}]")),
            n,
            is_hostname(n),
            "a host name to resolve",
        )?;
    }
    rule(
        h.failures_before_restart >= 1,
        "failures_before_restart",
        &h.failures_before_restart,
        "at least 1",
    )?;
    rule(h.restart_limit >= 1, "restart_limit", &h.restart_limit, "at least 1")?;
    rule(
        h.restart_window_seconds >= h.interval_seconds,
        "restart_window_seconds",
        &h.restart_window_seconds,
        &format!("at least interval_seconds ({})", h.interval_seconds),
    )
}

/// `install.disk`: what the installer's shell script accepts as
/// `debvisor.install_disk=`, so that a config that validates is one it can
/// act on.
fn install_disk(disk: &str) -> Result {
    const KEY: &str = "install.disk";
    if let Some(gb) = disk.strip_prefix("empty:") {
        let ok = !gb.is_empty() && gb.len() <= 7 && !gb.starts_with('0') && gb.bytes().all(|b| b.is_ascii_digit());
        return check_str(
            KEY,
            disk,
            ok,
            "empty:GB needs a number of gigabytes from 1 to 9999999, e.g. \"empty:16\"",
        );
    }
    let rest = disk.strip_prefix("/dev/disk/by-id/").unwrap_or_default();
    let ok = !rest.is_empty()
        && rest != "."
        && rest != ".."
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b','));
    check_str(
        KEY,
        disk,
        ok,
        "a disk by id (\"/dev/disk/by-id/NAME\", see ls -l /dev/disk/by-id) or \"empty:GB\" (the only empty disk of at least GB gigabytes)",
    )
}
