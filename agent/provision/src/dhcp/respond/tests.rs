use std::path::Path;

use dhcproto::v4::{Architecture, DhcpOption, Message, OptionCode};

use super::*;
use crate::config::Mac;
use crate::dhcp::packet::encode;

const CFG: &str = r#"
state_dir = "/nonexistent"
[[network]]
interface = "prov0"
address = "198.51.100.1/24"
mode = "server"
range = ["198.51.100.100", "198.51.100.101"]
router = "198.51.100.1"
lease_secs = 600
[[network]]
interface = "site0"
address = "203.0.113.5/24"
mode = "proxy"
[[reservation]]
mac = "02:00:00:00:00:99"
ip = "198.51.100.20"
hostname = "node-a"
"#;

const S: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SRC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);

fn cfg() -> Config {
    Config::parse(CFG, Path::new("t")).unwrap()
}

fn msg(mac: u8, kind: MessageType, opts: Vec<DhcpOption>) -> Request {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(42, u, u, u, u, &[2, 0, 0, 0, 0, mac]);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o);
    }
    Request::parse(&encode(&m)).unwrap()
}

/// `respond` on network `net` of the test config, port 67.
fn ask(c: &Config, net: usize, req: &Request, src: SocketAddrV4, t: &mut LeaseTable, now: u64) -> Outcome {
    respond(c, &c.networks[net], Port::Dhcp, req, src, t, now)
}

fn kind(out: &Outcome) -> Option<MessageType> {
    out.reply.as_ref().and_then(|(m, _)| m.opts().msg_type())
}

fn yiaddr(out: &Outcome) -> Ipv4Addr {
    out.reply.as_ref().unwrap().0.yiaddr()
}

fn pxe_opts() -> Vec<DhcpOption> {
    vec![
        DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
        DhcpOption::ClientSystemArchitecture(Architecture(7)),
        DhcpOption::ClientMachineIdentifier(vec![0; 17]),
    ]
}

#[test]
fn discover_request_ack_binds_a_lease_stored_before_the_ack() {
    let c = cfg();
    let mut t = LeaseTable::default();
    let offer = ask(&c, 0, &msg(1, MessageType::Discover, vec![]), SRC, &mut t, 0);
    assert_eq!(kind(&offer), Some(MessageType::Offer));
    let ip = yiaddr(&offer);
    assert_eq!(ip, Ipv4Addr::new(198, 51, 100, 100));
    let (m, dest) = offer.reply.as_ref().unwrap();
    assert_eq!(*dest, Dest::Broadcast);
    assert_eq!(
        m.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    assert_eq!(
        m.opts().get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        m.opts().get(OptionCode::BootfileName),
        None,
        "a plain client gets no boot file"
    );
    assert_eq!(offer.change, None, "an offer is not stored");

    let req = msg(
        1,
        MessageType::Request,
        vec![DhcpOption::ServerIdentifier(S), DhcpOption::RequestedIpAddress(ip)],
    );
    let ack = ask(&c, 0, &req, SRC, &mut t, 1);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert!(matches!(&ack.change, Some(Change::Bind(l)) if l.ip == ip && l.expires == 601));

    // Another client cannot take it; the second gets the other address, a third nothing.
    let req2 = msg(
        2,
        MessageType::Request,
        vec![DhcpOption::ServerIdentifier(S), DhcpOption::RequestedIpAddress(ip)],
    );
    assert_eq!(kind(&ask(&c, 0, &req2, SRC, &mut t, 2)), Some(MessageType::Nak));
    let o2 = ask(&c, 0, &msg(2, MessageType::Discover, vec![]), SRC, &mut t, 2);
    assert_eq!(yiaddr(&o2), Ipv4Addr::new(198, 51, 100, 101));
    let o3 = ask(&c, 0, &msg(3, MessageType::Discover, vec![]), SRC, &mut t, 2);
    assert!(o3.reply.is_none());
    assert_eq!(o3.ignored, Some("pool exhausted"));

    // RELEASE frees it for the next client.
    let mut rel = msg(1, MessageType::Release, vec![DhcpOption::ServerIdentifier(S)]);
    rel.msg.set_ciaddr(ip);
    let out = ask(&c, 0, &rel, SRC, &mut t, 3);
    assert!(matches!(out.change, Some(Change::Release(_))));
    assert!(t.free_for(ip, Mac([2, 0, 0, 0, 0, 3]), 3));
}

#[test]
fn a_reserved_client_gets_its_address_and_name_and_renews_by_unicast() {
    let c = cfg();
    let mut t = LeaseTable::new([], c.reservations.iter().map(|r| (r.ip, r.mac)));
    let offer = ask(&c, 0, &msg(0x99, MessageType::Discover, vec![]), SRC, &mut t, 0);
    assert_eq!(yiaddr(&offer), Ipv4Addr::new(198, 51, 100, 20));
    let m = &offer.reply.as_ref().unwrap().0;
    assert_eq!(
        m.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("node-a".into()))
    );
    // Asking for another address gets a NAK (it must use its reservation).
    let wrong = msg(
        0x99,
        MessageType::Request,
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(198, 51, 100, 100))],
    );
    assert_eq!(kind(&ask(&c, 0, &wrong, SRC, &mut t, 0)), Some(MessageType::Nak));
    let mut renew = msg(0x99, MessageType::Request, vec![]);
    renew.msg.set_ciaddr(Ipv4Addr::new(198, 51, 100, 20));
    let ack = ask(&c, 0, &renew, SRC, &mut t, 5);
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(
        ack.reply.unwrap().1,
        Dest::Unicast(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 20), 68))
    );
}

#[test]
fn pxe_firmware_gets_the_ipxe_binary_and_is_recorded() {
    let c = cfg();
    let mut t = LeaseTable::default();
    let offer = ask(&c, 0, &msg(5, MessageType::Discover, pxe_opts()), SRC, &mut t, 0);
    let m = &offer.reply.as_ref().unwrap().0;
    assert_eq!(m.fname(), Some(&b"snponly.efi"[..]));
    assert_eq!(m.siaddr(), S);
    assert_eq!(
        m.opts().get(OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(vec![0; 17]))
    );
    let seen = offer.seen.unwrap();
    assert_eq!((seen.client, seen.arch), ("pxe-uefi", Some(7)));
}

#[test]
fn proxy_mode_answers_pxe_clients_only_without_an_address() {
    let c = cfg();
    let net = &c.networks[1];
    let mut t = LeaseTable::default();
    let plain = respond(
        &c,
        net,
        Port::Dhcp,
        &msg(6, MessageType::Discover, vec![]),
        SRC,
        &mut t,
        0,
    );
    assert!(plain.reply.is_none(), "plain clients are the site server's");
    let offer = respond(
        &c,
        net,
        Port::Dhcp,
        &msg(6, MessageType::Discover, pxe_opts()),
        SRC,
        &mut t,
        0,
    );
    let (m, dest) = offer.reply.as_ref().unwrap();
    assert_eq!(*dest, Dest::Broadcast);
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.opts().get(OptionCode::AddressLeaseTime), None);
    assert_eq!(
        m.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert!(m.flags().broadcast());
    // The REQUEST to port 4011 is answered by unicast to its source.
    let src = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 77), 4011);
    let ack = respond(
        &c,
        net,
        Port::Pxe,
        &msg(6, MessageType::Request, pxe_opts()),
        src,
        &mut t,
        0,
    );
    assert_eq!(kind(&ack), Some(MessageType::Ack));
    assert_eq!(ack.reply.as_ref().unwrap().1, Dest::Unicast(src));
    assert_eq!(ack.change, None, "proxy mode stores no lease");
    // A REQUEST on 67 is the site server's business.
    let r67 = respond(
        &c,
        net,
        Port::Dhcp,
        &msg(6, MessageType::Request, pxe_opts()),
        SRC,
        &mut t,
        0,
    );
    assert!(r67.reply.is_none());
}

#[test]
fn a_request_for_another_server_drops_our_offer() {
    let c = cfg();
    let mut t = LeaseTable::default();
    let offer = ask(&c, 0, &msg(7, MessageType::Discover, vec![]), SRC, &mut t, 0);
    let ip = yiaddr(&offer);
    let other = msg(
        7,
        MessageType::Request,
        vec![
            DhcpOption::ServerIdentifier(Ipv4Addr::new(198, 51, 100, 2)),
            DhcpOption::RequestedIpAddress(ip),
        ],
    );
    let out = ask(&c, 0, &other, SRC, &mut t, 1);
    assert!(out.reply.is_none());
    assert!(t.free_for(ip, Mac([2, 0, 0, 0, 0, 8]), 1), "the offer was withdrawn");
}

#[test]
fn rfc_2131_corner_cases() {
    let c = cfg();
    let mut t = LeaseTable::new([], c.reservations.iter().map(|r| (r.ip, r.mac)));
    let ip = |n| Ipv4Addr::new(198, 51, 100, n);

    // A DECLINE is believed only from the client the address was given to.
    let decline = |mac, a| {
        msg(
            mac,
            MessageType::Decline,
            vec![DhcpOption::ServerIdentifier(S), DhcpOption::RequestedIpAddress(a)],
        )
    };
    let out = ask(&c, 0, &decline(1, ip(100)), SRC, &mut t, 0);
    assert_eq!(
        out.ignored,
        Some("decline for another server or of an address not given to the client")
    );
    assert!(
        t.free_for(ip(100), Mac([2, 0, 0, 0, 0, 2]), 0),
        "a stranger cannot take addresses out of the pool"
    );
    let offer = ask(&c, 0, &msg(1, MessageType::Discover, vec![]), SRC, &mut t, 0);
    assert_eq!(yiaddr(&offer), ip(100));
    let out = ask(&c, 0, &decline(1, ip(100)), SRC, &mut t, 0);
    assert_eq!(out.ignored, Some("decline"));
    assert!(
        !t.free_for(ip(100), Mac([2, 0, 0, 0, 0, 2]), 1),
        "declined: kept out of the pool"
    );

    // INIT-REBOOT: silent without a record, NAK for another subnet.
    let reboot = |a| msg(3, MessageType::Request, vec![DhcpOption::RequestedIpAddress(a)]);
    assert_eq!(
        ask(&c, 0, &reboot(ip(101)), SRC, &mut t, 1).ignored,
        Some("INIT-REBOOT from a client without a record")
    );
    assert_eq!(
        kind(&ask(&c, 0, &reboot(Ipv4Addr::new(10, 0, 0, 5)), SRC, &mut t, 1)),
        Some(MessageType::Nak)
    );

    // A reserved address still leased dynamically to another client is not offered.
    t.bind(Mac([2, 0, 0, 0, 0, 4]), ip(20), 100, None);
    let out = ask(&c, 0, &msg(0x99, MessageType::Discover, vec![]), SRC, &mut t, 2);
    assert_eq!(out.ignored, Some("reserved address leased to another client"));

    // Relayed from another subnet: not ours to answer.
    let mut relayed = msg(5, MessageType::Discover, vec![]);
    relayed.msg.set_giaddr(Ipv4Addr::new(10, 9, 9, 1));
    assert_eq!(
        ask(&c, 0, &relayed, SRC, &mut t, 2).ignored,
        Some("relayed from another subnet")
    );
    // From a relay on the subnet (perfdhcp does this): answered through it.
    relayed.msg.set_giaddr(ip(2));
    let out = ask(&c, 0, &relayed, SRC, &mut t, 2);
    assert_eq!(out.reply.unwrap().1, Dest::Unicast(SocketAddrV4::new(ip(2), 67)));

    // INFORM: options, no address, no lease time.
    let mut inform = msg(6, MessageType::Inform, vec![]);
    inform.msg.set_ciaddr(ip(50));
    let out = ask(&c, 0, &inform, SRC, &mut t, 2);
    let (m, dest) = out.reply.unwrap();
    assert_eq!(
        (m.yiaddr(), m.opts().get(OptionCode::AddressLeaseTime)),
        (Ipv4Addr::UNSPECIFIED, None)
    );
    assert_eq!(dest, Dest::Unicast(SocketAddrV4::new(ip(50), 68)));
}
