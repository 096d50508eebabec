//! The shape of single values: host names, interface names, addresses,
//! URLs, password hashes and SSH keys.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An RFC 1123 host name: a label or a dotted name, 1-253 characters.
pub fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A host name or an IP address.
pub(super) fn is_host(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok() || is_hostname(s)
}

/// `host:port` or `[v6]:port`.
pub(super) fn is_host_port(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once("]:") {
            Some((h, p)) if h.parse::<Ipv6Addr>().is_ok() => (h, p),
            _ => return false,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if is_hostname(h) || h.parse::<Ipv4Addr>().is_ok() => (h, p),
            _ => return false,
        }
    };
    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// The shape of an IANA zone name (its existence is checked when applied).
pub(super) fn is_timezone_shape(s: &str) -> bool {
    s.len() <= 64
        && s.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
                && !part.starts_with('-')
        })
        && s.as_bytes()[0].is_ascii_alphabetic()
}

/// A kernel interface name usable in a file name: 1-15 of `[A-Za-z0-9_.-]`.
pub fn is_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

pub(super) fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `address/prefix`, with the prefix in range for the family.
pub(super) fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l: &u8| len == l.to_string())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

pub(super) fn is_http_url(s: &str) -> bool {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match s.parse::<http::Uri>() {
        Ok(uri) => matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some_and(|h| !h.is_empty()),
        Err(_) => false,
    }
}

pub(super) fn is_argon2id(s: &str) -> bool {
    let Ok(hash) = argon2::PasswordHash::new(s) else {
        return false;
    };
    hash.algorithm.as_str() == "argon2id"
        && hash.version == Some(19)
        && hash.salt.is_some()
        && hash.hash.is_some()
        && argon2::Params::try_from(&hash).is_ok()
}

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

pub(super) fn is_ssh_key(s: &str) -> bool {
    if s.chars()
        .any(|c| c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}'))
    {
        return false;
    }
    let mut parts = s.split(' ');
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else {
        return false;
    };
    SSH_KEY_TYPES.contains(&kind)
        && body.len() >= 16
        && body.len().is_multiple_of(4)
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        && base64_decode(body).is_some_and(|blob| {
            // The blob starts with the key type as an SSH string.
            blob.len() > 4 + kind.len()
                && blob[..4] == u32::try_from(kind.len()).unwrap_or(0).to_be_bytes()
                && &blob[4..4 + kind.len()] == kind.as_bytes()
        })
}

/// Standard base64 with padding; `None` when malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let body = s.trim_end_matches('=');
    if bytes.len() - body.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in body.as_bytes() {
        acc = (acc << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}
