//! The answer to one request: RFC 2131 for server mode, the PXE
//! specification's proxyDHCP for proxy mode. Pure: the caller owns the
//! sockets, the lease table lock and the store.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};

use crate::config::{Config, Mode, Network};
use crate::dhcp::boot::{BootFile, Client, boot_file};
use crate::dhcp::leases::{Lease, LeaseTable, Pool};
use crate::dhcp::packet::Request;

/// The port a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67, the DHCP server port.
    Dhcp,
    /// 4011, the PXE boot server port (proxy mode).
    Pxe,
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// 255.255.255.255:68 on the request's interface.
    Broadcast,
    /// A unicast address and port.
    Unicast(SocketAddrV4),
}

/// What the store must record before (for leases) or after the reply goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A lease bound or renewed: stored before the ACK is sent.
    Bind(Lease),
    /// A lease ended (RELEASE or DECLINE).
    Release(Lease),
}

/// A network-booting client seen, for the machine record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its MAC.
    pub mac: crate::config::Mac,
    /// What it is (`pxe-bios`, `pxe-uefi`, `uefi-http`, `ipxe`).
    pub client: &'static str,
    /// Option 93.
    pub arch: Option<u16>,
    /// The boot file it was given.
    pub boot_file: Option<String>,
}

/// The outcome of one request.
#[derive(Debug)]
pub struct Outcome {
    /// The reply and where it goes; None when the request gets no answer.
    pub reply: Option<(Message, Dest)>,
    /// What to store; a reply with a `Bind` is sent only once it is stored.
    pub change: Option<Change>,
    /// A network-booting client to record.
    pub seen: Option<Seen>,
    /// Why there is no reply (for the debug log and the `dhcp_ignored_total` metric).
    pub ignored: Option<&'static str>,
}

impl Outcome {
    fn ignore(why: &'static str) -> Outcome {
        Outcome {
            reply: None,
            change: None,
            seen: None,
            ignored: Some(why),
        }
    }
}

/// Answers `req`, which arrived from `src` on `port` of `net`'s interface.
pub fn respond(
    cfg: &Config,
    net: &Network,
    port: Port,
    req: &Request,
    src: SocketAddrV4,
    table: &mut LeaseTable,
    now: u64,
) -> Outcome {
    let client = Client::of(req);
    let server = net.address.addr;
    let boot = boot_file(client, server, &cfg.boot);
    let seen = client.is_netboot().then(|| Seen {
        mac: req.mac,
        client: client.label(),
        arch: req.arch(),
        boot_file: boot.as_ref().map(|b| b.file.clone()),
    });
    let mut out = match net.mode {
        Mode::Server if port == Port::Dhcp => serve(cfg, net, req, client, boot.as_ref(), table, now),
        Mode::Server => Outcome::ignore("port 4011 in server mode"),
        Mode::Proxy => proxy(net, port, req, client, boot.as_ref(), src),
    };
    out.seen = seen;
    out
}

fn serve(
    cfg: &Config,
    net: &Network,
    req: &Request,
    client: Client,
    boot: Option<&BootFile>,
    table: &mut LeaseTable,
    now: u64,
) -> Outcome {
    let server = net.address.addr;
    let Some([first, last]) = net.range else {
        return Outcome::ignore("no range");
    };
    let pool = Pool { first, last };
    let giaddr = req.msg.giaddr();
    if giaddr != Ipv4Addr::UNSPECIFIED && !net.address.contains(giaddr) {
        // Addresses come from the interface's own subnet only.
        return Outcome::ignore("relayed from another subnet");
    }
    let reservation = cfg.reservation(req.mac).filter(|r| net.address.contains(r.ip));
    let reserved_ip = reservation.map(|r| r.ip);
    let hostname = reservation.and_then(|r| r.hostname.clone());
    let in_pool = |ip: Ipv4Addr| (u32::from(first)..=u32::from(last)).contains(&u32::from(ip));
    let allowed = |ip: Ipv4Addr, table: &LeaseTable| match reserved_ip {
        Some(r) => ip == r && table.free_for(ip, req.mac, now),
        None => in_pool(ip) && table.free_for(ip, req.mac, now),
    };
    let reply = |kind: MessageType, yiaddr: Ipv4Addr| {
        let mut m = base_reply(req, kind, server, yiaddr);
        if kind != MessageType::Nak {
            add_network_options(&mut m, net, kind != MessageType::Ack || yiaddr != Ipv4Addr::UNSPECIFIED);
            if let Some(h) = &hostname {
                m.opts_mut().insert(DhcpOption::Hostname(h.clone()));
            }
            if let Some(b) = boot {
                add_boot(&mut m, req, client, b, server);
            }
        } else {
            m.opts_mut()
                .insert(DhcpOption::Message("requested address not available".into()));
        }
        m
    };
    let dest = |kind| destination(req, kind);
    let ack = |table: &mut LeaseTable, ip: Ipv4Addr| {
        let lease = table.bind(req.mac, ip, now + u64::from(net.lease_secs), hostname.clone());
        Outcome {
            reply: Some((reply(MessageType::Ack, ip), dest(MessageType::Ack))),
            change: Some(Change::Bind(lease)),
            seen: None,
            ignored: None,
        }
    };
    let nak = || Outcome {
        reply: Some((
            {
                let mut m = reply(MessageType::Nak, Ipv4Addr::UNSPECIFIED);
                if giaddr != Ipv4Addr::UNSPECIFIED {
                    // RFC 2131 4.3.2: the relay broadcasts a NAK to the client.
                    m.set_flags(m.flags().set_broadcast());
                }
                m
            },
            dest(MessageType::Nak),
        )),
        change: None,
        seen: None,
        ignored: None,
    };
    match req.kind {
        MessageType::Discover => {
            if let Some(r) = reserved_ip
                && let Some(other) = table.held_by_other(r, req.mac, now)
            {
                tracing::warn!(mac = %req.mac, ip = %r, holder = %other.mac, expires = other.expires,
                    "reserved address still leased to another client: no offer until that lease ends");
                return Outcome::ignore("reserved address leased to another client");
            }
            let Some(ip) = table.pick(req.mac, &pool, reserved_ip, req.requested_ip(), now) else {
                tracing::warn!(mac = %req.mac, interface = %net.interface, "address pool exhausted");
                return Outcome::ignore("pool exhausted");
            };
            table.hold_offer(req.mac, ip, now);
            Outcome {
                reply: Some((reply(MessageType::Offer, ip), dest(MessageType::Offer))),
                change: None,
                seen: None,
                ignored: None,
            }
        }
        MessageType::Request => {
            let ciaddr = req.msg.ciaddr();
            match (req.server_id(), req.requested_ip()) {
                // SELECTING: the client answers an offer.
                (Some(sid), _) if sid != server => {
                    table.drop_offer(req.mac);
                    Outcome::ignore("client chose another server")
                }
                (Some(_), Some(ip)) => {
                    if net.address.contains(ip) && allowed(ip, table) {
                        ack(table, ip)
                    } else {
                        nak()
                    }
                }
                // INIT-REBOOT: a client reusing an address it had.
                (None, Some(ip)) => {
                    if !net.address.contains(ip) {
                        nak()
                    } else if table.lease(req.mac).is_none() && reserved_ip.is_none() {
                        // RFC 2131 4.3.2: no record of the client, stay silent.
                        Outcome::ignore("INIT-REBOOT from a client without a record")
                    } else if allowed(ip, table) {
                        ack(table, ip)
                    } else {
                        nak()
                    }
                }
                (Some(_), None) => Outcome::ignore("REQUEST without requested address"),
                // RENEWING or REBINDING: ciaddr is the client's address.
                (None, None) if ciaddr != Ipv4Addr::UNSPECIFIED => {
                    if !net.address.contains(ciaddr) {
                        Outcome::ignore("renewal of an address from another subnet")
                    } else if allowed(ciaddr, table) {
                        ack(table, ciaddr)
                    } else {
                        nak()
                    }
                }
                (None, None) => Outcome::ignore("REQUEST without address"),
            }
        }
        MessageType::Decline => match (req.server_id(), req.requested_ip()) {
            (Some(sid), Some(ip)) if sid == server && table.held_by(ip, req.mac) => {
                tracing::warn!(mac = %req.mac, %ip, "client declined an address: it is in use on the network");
                table.decline(ip, now);
                Outcome {
                    change: table.release(req.mac, ip).map(Change::Release),
                    ..Outcome::ignore("decline")
                }
            }
            _ => Outcome::ignore("decline for another server or of an address not given to the client"),
        },
        MessageType::Release => Outcome {
            change: table.release(req.mac, req.msg.ciaddr()).map(Change::Release),
            ..Outcome::ignore("release")
        },
        MessageType::Inform => {
            let ciaddr = req.msg.ciaddr();
            if ciaddr == Ipv4Addr::UNSPECIFIED || !net.address.contains(ciaddr) {
                return Outcome::ignore("INFORM without an address of this subnet");
            }
            Outcome {
                reply: Some((reply(MessageType::Ack, Ipv4Addr::UNSPECIFIED), dest(MessageType::Ack))),
                change: None,
                seen: None,
                ignored: None,
            }
        }
        _ => Outcome::ignore("message type"),
    }
}

/// proxyDHCP: boot information only, to network-booting clients only.
fn proxy(
    net: &Network,
    port: Port,
    req: &Request,
    client: Client,
    boot: Option<&BootFile>,
    src: SocketAddrV4,
) -> Outcome {
    if !client.is_netboot() {
        return Outcome::ignore("proxy mode: not a PXE client");
    }
    let Some(boot) = boot else {
        return Outcome::ignore("no boot file for this client");
    };
    let server = net.address.addr;
    let (kind, dest) = match (port, req.kind) {
        (Port::Dhcp, MessageType::Discover) => (MessageType::Offer, Dest::Broadcast),
        // The client asks the boot server directly and waits on its source port.
        (Port::Pxe, MessageType::Request | MessageType::Inform) => (MessageType::Ack, Dest::Unicast(src)),
        _ => return Outcome::ignore("proxy mode: the site's server handles this"),
    };
    let mut m = base_reply(req, kind, server, Ipv4Addr::UNSPECIFIED);
    if dest == Dest::Broadcast {
        m.set_flags(Flags::default().set_broadcast());
    }
    add_boot(&mut m, req, client, boot, server);
    Outcome {
        reply: Some((m, dest)),
        change: None,
        seen: None,
        ignored: None,
    }
}

fn base_reply(req: &Request, kind: MessageType, server: Ipv4Addr, yiaddr: Ipv4Addr) -> Message {
    let ciaddr = if kind == MessageType::Ack {
        req.msg.ciaddr()
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let mut m = Message::new_with_id(
        req.msg.xid(),
        ciaddr,
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        req.msg.giaddr(),
        &req.mac.0,
    );
    m.set_opcode(Opcode::BootReply).set_flags(req.msg.flags());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    m
}

fn add_network_options(m: &mut Message, net: &Network, with_lease: bool) {
    let o = m.opts_mut();
    if with_lease {
        o.insert(DhcpOption::AddressLeaseTime(net.lease_secs));
        o.insert(DhcpOption::Renewal(net.lease_secs / 2));
        o.insert(DhcpOption::Rebinding(net.lease_secs / 8 * 7));
    }
    o.insert(DhcpOption::SubnetMask(net.address.mask()));
    o.insert(DhcpOption::BroadcastAddr(net.address.broadcast()));
    if let Some(r) = net.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !net.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(net.dns.clone()));
    }
    if let Some(d) = &net.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
}

fn add_boot(m: &mut Message, req: &Request, client: Client, boot: &BootFile, server: Ipv4Addr) {
    m.set_siaddr(server);
    // Checked when configured: a name fits the 128-byte field; URLs may not.
    if boot.file.len() <= crate::config::MAX_BOOT_FILE {
        m.set_fname_str(&boot.file);
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::ClassIdentifier(boot.vendor_class.as_bytes().to_vec()));
    o.insert(DhcpOption::TFTPServerName(server.to_string().into_bytes()));
    o.insert(DhcpOption::BootfileName(boot.file.clone().into_bytes()));
    if let Some(id) = req.machine_id() {
        o.insert(id.clone());
    }
    if matches!(client, Client::Pxe { .. }) {
        // PXE discovery control: no boot server discovery, boot the file named.
        o.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
}

/// RFC 2131 4.1: through the relay if there is one; unicast to a client
/// that has an address; broadcast otherwise (we cannot ARP for yiaddr).
fn destination(req: &Request, kind: MessageType) -> Dest {
    let giaddr = req.msg.giaddr();
    let ciaddr = req.msg.ciaddr();
    if giaddr != Ipv4Addr::UNSPECIFIED {
        Dest::Unicast(SocketAddrV4::new(giaddr, 67))
    } else if kind != MessageType::Nak && ciaddr != Ipv4Addr::UNSPECIFIED {
        Dest::Unicast(SocketAddrV4::new(ciaddr, 68))
    } else {
        Dest::Broadcast
    }
}

#[cfg(test)]
mod tests;
