//! `network/gateway` (the default route's gateway answers ICMP echo, or
//! its neighbour entry completes) and `dns` (the configured resolvers
//! answer).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::time::Instant;

use super::{Check, Outcome};

/// A default route: its gateway and interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    /// The gateway.
    pub gateway: IpAddr,
    /// The interface.
    pub iface: String,
}

/// The IPv4 default route with a gateway in `/proc/net/route` text.
pub fn parse_route(text: &str) -> Option<DefaultRoute> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (iface, dest, gw, flags) = (f.first()?, f.get(1)?, f.get(2)?, f.get(3)?);
        let flags = u16::from_str_radix(flags, 16).ok()?;
        // RTF_UP | RTF_GATEWAY
        if *dest != "00000000" || flags & 0x3 != 0x3 {
            return None;
        }
        let gw = u32::from_str_radix(gw, 16).ok()?;
        Some(DefaultRoute {
            gateway: IpAddr::V4(Ipv4Addr::from(gw.swap_bytes())),
            iface: iface.to_string(),
        })
    })
}

/// The IPv6 default route with a gateway in `/proc/net/ipv6_route` text.
pub fn parse_ipv6_route(text: &str) -> Option<DefaultRoute> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[0] != "0".repeat(32) || f[1] != "00" {
            return None;
        }
        let flags = u32::from_str_radix(f[8], 16).ok()?;
        let gw = u128::from_str_radix(f[4], 16).ok()?;
        if flags & 0x3 != 0x3 || gw == 0 {
            return None;
        }
        Some(DefaultRoute {
            gateway: IpAddr::V6(Ipv6Addr::from(gw)),
            iface: f[9].to_string(),
        })
    })
}

/// Whether `/proc/net/arp` text has a complete entry (flags 0x2) for `ip`.
pub fn arp_complete(text: &str, ip: Ipv4Addr) -> bool {
    let ip = ip.to_string();
    text.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.first() == Some(&ip.as_str())
            && f.get(2)
                .and_then(|fl| u32::from_str_radix(fl.trim_start_matches("0x"), 16).ok())
                .is_some_and(|fl| fl & 0x2 != 0)
    })
}

/// The Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one ICMP echo to `route.gateway` and waits until `wait` for the
/// reply; the round trip on success. Tries an unprivileged ICMP socket, then
/// a raw one (root).
fn ping(route: &DefaultRoute, wait: Duration) -> std::io::Result<Duration> {
    let (domain, proto, request) = match route.gateway {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8),
    };
    let (socket, raw) = match Socket::new(domain, Type::DGRAM, Some(proto)) {
        Ok(s) => (s, false),
        Err(_) => (Socket::new(domain, Type::RAW, Some(proto))?, true),
    };
    let id = (std::process::id() & 0xffff) as u16;
    let seq: u16 = rand::random();
    let mut packet = vec![request, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(b"debvisor-health");
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    let addr = match route.gateway {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V4(ip), 0),
        IpAddr::V6(ip) => {
            let scope = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", route.iface))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            SocketAddr::V6(std::net::SocketAddrV6::new(ip, 0, 0, scope))
        }
    };
    // std's datagram socket reads into initialised buffers; an ICMP socket
    // is a datagram socket to it.
    let socket = std::net::UdpSocket::from(socket);
    let start = std::time::Instant::now();
    socket.send_to(&packet, addr)?;
    let mut buf = [0u8; 1500];
    loop {
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        socket.set_read_timeout(Some(left))?;
        let (n, from) = socket.recv_from(&mut buf)?;
        let data = &buf[..n];
        // A raw IPv4 socket hands over the IP header too.
        let icmp = match (raw, route.gateway) {
            (true, IpAddr::V4(_)) => data.get(usize::from(data.first().copied().unwrap_or(0) & 0xf) * 4..),
            _ => Some(data),
        };
        let Some(icmp) = icmp.filter(|i| i.len() >= 8) else {
            continue;
        };
        let reply = if request == 8 { 0 } else { 129 };
        let same_seq = icmp[6..8] == seq.to_be_bytes();
        if icmp[0] == reply && same_seq && from.ip() == route.gateway {
            return Ok(start.elapsed());
        }
    }
}

/// `network/gateway`.
#[derive(Debug, Default)]
pub struct GatewayCheck {
    /// Where to read the tables (`/proc/net` in production).
    pub proc_net: String,
}

impl GatewayCheck {
    /// Reads `/proc/net`.
    pub fn new() -> Self {
        Self {
            proc_net: "/proc/net".to_string(),
        }
    }

    fn default_route(&self) -> Option<DefaultRoute> {
        let read = |f: &str| std::fs::read_to_string(format!("{}/{f}", self.proc_net)).unwrap_or_default();
        parse_route(&read("route")).or_else(|| parse_ipv6_route(&read("ipv6_route")))
    }
}

#[async_trait::async_trait]
impl Check for GatewayCheck {
    fn name(&self) -> &str {
        "network/gateway"
    }
    fn kind(&self) -> &'static str {
        "network"
    }
    fn required(&self) -> bool {
        false
    }
    async fn run(&self, deadline: Instant) -> Outcome {
        let Some(route) = self.default_route() else {
            return Outcome::fail("no default route");
        };
        let gw = route.gateway;
        let wait = deadline.saturating_duration_since(Instant::now()).mul_f32(0.5);
        let r = route.clone();
        let pinged = tokio::task::spawn_blocking(move || ping(&r, wait)).await;
        if let Ok(Ok(rtt)) = pinged {
            return Outcome::pass(format!(
                "gateway {gw} via {} answered ICMP echo in {:.1} ms",
                route.iface,
                rtt.as_secs_f64() * 1000.0
            ));
        }
        let IpAddr::V4(v4) = gw else {
            return Outcome::fail(format!("gateway {gw} via {} does not answer ICMP echo", route.iface));
        };
        // No echo reply (filtered?): the neighbour entry completing shows the
        // gateway is there.
        let start = Instant::now();
        if let Ok(sock) = tokio::net::UdpSocket::bind("0.0.0.0:0").await {
            let _ = sock.send_to(b"debvisor", (v4, 9)).await;
        }
        let arp = format!("{}/arp", self.proc_net);
        while Instant::now() + Duration::from_millis(100) < deadline {
            if arp_complete(&std::fs::read_to_string(&arp).unwrap_or_default(), v4) {
                return Outcome::pass(format!(
                    "gateway {gw} via {} is reachable (neighbour entry complete after {} ms; no ICMP echo reply)",
                    route.iface,
                    start.elapsed().as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Outcome::fail(format!(
            "gateway {gw} via {} does not answer (no ICMP echo reply, neighbour entry incomplete)",
            route.iface
        ))
    }
}

/// The `nameserver` addresses in resolv.conf text.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver"))
                .then(|| f.next())
                .flatten()
                .and_then(|a| a.split('%').next()?.parse().ok())
        })
        .collect()
}

/// Sends a root NS query to `server` over UDP; the answer's RCODE.
pub async fn query_root(server: SocketAddr) -> Result<String, String> {
    let id: u16 = rand::random();
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::root(), RecordType::NS));
    let bytes = msg.to_vec().map_err(|e| format!("cannot encode the query: {e}"))?;
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        if let Ok(answer) = Message::from_vec(&buf[..n])
            && answer.id() == id
            && answer.message_type() == MessageType::Response
        {
            return Ok(answer.response_code().to_string());
        }
    }
}

/// `dns`: the configured names resolve, or (none configured) each
/// nameserver answers a root NS query.
#[derive(Debug, Clone)]
pub struct DnsCheck {
    /// Names to resolve.
    pub names: Vec<String>,
    /// resolv.conf files to read nameservers from (missing ones skipped).
    pub resolv_confs: Vec<String>,
    /// The DNS port (53; another in tests).
    pub port: u16,
}

impl DnsCheck {
    /// Resolves `names` (or queries the nameservers of /etc/resolv.conf and
    /// systemd-resolved's upstream list).
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            resolv_confs: vec![
                "/etc/resolv.conf".to_string(),
                "/run/systemd/resolve/resolv.conf".to_string(),
            ],
            port: 53,
        }
    }

    fn servers(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for path in &self.resolv_confs {
            for ip in parse_resolv_conf(&std::fs::read_to_string(path).unwrap_or_default()) {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        out
    }
}

#[async_trait::async_trait]
impl Check for DnsCheck {
    fn name(&self) -> &str {
        "dns"
    }
    fn kind(&self) -> &'static str {
        "dns"
    }
    fn required(&self) -> bool {
        false
    }
    async fn run(&self, deadline: Instant) -> Outcome {
        let wait = deadline - Duration::from_millis(100);
        if !self.names.is_empty() {
            let mut failed = Vec::new();
            for name in &self.names {
                let r = tokio::time::timeout_at(wait, tokio::net::lookup_host((name.as_str(), 0))).await;
                match r {
                    Ok(Ok(addrs)) => {
                        if addrs.count() == 0 {
                            failed.push(format!("{name}: no address"));
                        }
                    }
                    Ok(Err(e)) => failed.push(format!("{name}: {e}")),
                    Err(_) => failed.push(format!("{name}: no answer in time")),
                }
            }
            return match failed.len() {
                0 => Outcome::pass(format!("resolved {}", self.names.join(", "))),
                n if n == self.names.len() => Outcome::fail(format!("cannot resolve {}", failed.join("; "))),
                _ => Outcome::warn(format!("cannot resolve {}", failed.join("; "))),
            };
        }
        let servers = self.servers();
        if servers.is_empty() {
            return Outcome::fail(format!("no nameserver in {}", self.resolv_confs.join(" or ")));
        }
        let queries = servers.iter().map(|ip| {
            let addr = SocketAddr::new(*ip, self.port);
            async move { (addr, tokio::time::timeout_at(wait, query_root(addr)).await) }
        });
        let results = futures_util::future::join_all(queries).await;
        let mut answered = Vec::new();
        let mut silent = Vec::new();
        for (addr, r) in results {
            match r {
                Ok(Ok(rcode)) => answered.push(format!("{} ({rcode})", addr.ip())),
                Ok(Err(e)) => silent.push(format!("{} ({e})", addr.ip())),
                Err(_) => silent.push(format!("{} (no answer)", addr.ip())),
            }
        }
        match (answered.is_empty(), silent.is_empty()) {
            (true, _) => Outcome::fail(format!("no nameserver answers: {}", silent.join(", "))),
            (false, true) => Outcome::pass(format!("nameservers answer: {}", answered.join(", "))),
            (false, false) => Outcome::pass(format!(
                "nameservers answer: {}; silent: {}",
                answered.join(", "),
                silent.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t0202000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
";

    #[test]
    fn parses_the_default_routes() {
        let r = parse_route(ROUTE).unwrap();
        assert_eq!(r.gateway, "10.0.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(r.iface, "eth0");
        assert_eq!(parse_route(&ROUTE.lines().take(2).collect::<Vec<_>>().join("\n")), None);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        let r = parse_ipv6_route(v6).unwrap();
        assert_eq!(r.gateway, "fe80::1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_ipv6_route(""), None);
    }

    #[test]
    fn arp_flags() {
        let arp = "IP address       HW type     Flags       HW address            Mask     Device
10.0.2.2         0x1         0x2         52:55:0a:00:02:02     *        eth0
10.0.2.3         0x1         0x0         00:00:00:00:00:00     *        eth0
";
        assert!(arp_complete(arp, Ipv4Addr::new(10, 0, 2, 2)));
        assert!(!arp_complete(arp, Ipv4Addr::new(10, 0, 2, 3)));
        assert!(!arp_complete(arp, Ipv4Addr::new(10, 0, 2, 4)));
    }

    #[test]
    fn icmp_checksum() {
        // An echo request whose checksum field is filled sums to zero.
        let mut p = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b', b'c'];
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }

    #[tokio::test]
    async fn no_default_route_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("route"), ROUTE.lines().next().unwrap()).unwrap();
        let check = GatewayCheck {
            proc_net: dir.path().to_str().unwrap().to_string(),
        };
        let out = check.run(Instant::now() + Duration::from_secs(1)).await;
        assert_eq!(out, Outcome::fail("no default route"));
    }

    #[test]
    fn resolv_conf() {
        let text = "# x\nnameserver 127.0.0.53\noptions edns0\nnameserver fe80::1%eth0\nsearch lan\n";
        let got = parse_resolv_conf(text);
        assert_eq!(
            got,
            vec!["127.0.0.53".parse::<IpAddr>().unwrap(), "fe80::1".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn dns_query_against_a_local_server() {
        // A tiny DNS server on loopback answering REFUSED with hickory.
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(q.queries()[0].query_type(), RecordType::NS);
            let mut a = Message::error_msg(q.id(), OpCode::Query, hickory_proto::op::ResponseCode::Refused);
            a.add_query(q.queries()[0].clone());
            server.send_to(&a.to_vec().unwrap(), from).await.unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        std::fs::write(&conf, "nameserver 127.0.0.1\n").unwrap();
        let check = DnsCheck {
            names: Vec::new(),
            resolv_confs: vec![conf.to_str().unwrap().to_string()],
            port,
        };
        let out = check.run(Instant::now() + Duration::from_secs(3)).await;
        assert_eq!(out, Outcome::pass("nameservers answer: 127.0.0.1 (Query Refused)"));
        // Nobody listening: fails, naming the server.
        let out = check.run(Instant::now() + Duration::from_millis(600)).await;
        assert!(
            out.status == super::super::Status::Fail && out.message.contains("127.0.0.1"),
            "{out:?}"
        );
        let empty = DnsCheck {
            resolv_confs: vec![dir.path().join("none").to_str().unwrap().to_string()],
            ..check
        };
        let out = empty.run(Instant::now() + Duration::from_secs(1)).await;
        assert!(out.message.starts_with("no nameserver in"), "{out:?}");
    }
}
