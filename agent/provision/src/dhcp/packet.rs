//! Turning a datagram into a checked DHCP request (dhcproto does the
//! decoding) and a reply into a datagram.

use std::net::Ipv4Addr;

use dhcproto::v4::{
    Decodable, Decoder, DhcpOption, Encodable, Encoder, HType, Message, MessageType, Opcode, OptionCode,
};

use crate::config::Mac;

/// The smallest BOOTP message: the fixed header (236 bytes) and the magic
/// cookie. Replies are padded to 300 bytes, the BOOTP size old PXE ROMs expect.
const HEADER_LEN: usize = 240;
const MIN_REPLY_LEN: usize = 300;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Why a datagram was dropped without an answer. Each is a label of the
/// `dhcp_malformed_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Shorter than a BOOTP header plus the magic cookie.
    #[error("shorter than a DHCP header")]
    Short,
    /// The magic cookie is not 99.130.83.99.
    #[error("no DHCP magic cookie")]
    Magic,
    /// The header did not decode.
    #[error("undecodable header")]
    Header,
    /// The decoder panicked (an option whose length it asserts).
    #[error("option lengths the decoder refuses")]
    Decoder,
    /// A BOOTREPLY sent to the server port.
    #[error("not a request")]
    NotRequest,
    /// Not Ethernet, or a hardware address length other than 6.
    #[error("not an Ethernet hardware address")]
    NotEthernet,
    /// No DHCP message type (option 53), or option decoding stopped early.
    #[error("no message type")]
    NoMessageType,
    /// A message type a server never receives (OFFER, ACK, ...).
    #[error("message type not sent by clients")]
    WrongType,
}

impl Malformed {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::Short => "short",
            Malformed::Magic => "magic",
            Malformed::Header => "header",
            Malformed::Decoder => "decoder",
            Malformed::NotRequest => "not_request",
            Malformed::NotEthernet => "not_ethernet",
            Malformed::NoMessageType => "no_message_type",
            Malformed::WrongType => "wrong_type",
        }
    }
}

/// A decoded client request whose header has been checked.
#[derive(Debug, Clone)]
pub struct Request {
    /// The message as dhcproto decoded it.
    pub msg: Message,
    /// DISCOVER, REQUEST, DECLINE, RELEASE or INFORM.
    pub kind: MessageType,
    /// The client's hardware address.
    pub mac: Mac,
}

impl Request {
    /// Checks and decodes one datagram received on a server port.
    pub fn parse(buf: &[u8]) -> Result<Request, Malformed> {
        if buf.len() < HEADER_LEN {
            return Err(Malformed::Short);
        }
        if buf[236..240] != MAGIC {
            return Err(Malformed::Magic);
        }
        // dhcproto checks some option lengths only with debug assertions
        // (a panic in debug builds, a decode error in release): a panic here
        // is a malformed datagram too.
        let decoded = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(buf)));
        let msg = decoded
            .map_err(|_| Malformed::Decoder)?
            .map_err(|_| Malformed::Header)?;
        if msg.opcode() != Opcode::BootRequest {
            return Err(Malformed::NotRequest);
        }
        // chaddr() slices by hlen: check it before calling it.
        if msg.htype() != HType::Eth || msg.hlen() != 6 {
            return Err(Malformed::NotEthernet);
        }
        let kind = msg.opts().msg_type().ok_or(Malformed::NoMessageType)?;
        match kind {
            MessageType::Discover
            | MessageType::Request
            | MessageType::Decline
            | MessageType::Release
            | MessageType::Inform => {}
            _ => return Err(Malformed::WrongType),
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(msg.chaddr());
        Ok(Request {
            msg,
            kind,
            mac: Mac(mac),
        })
    }

    /// Option 50, the address the client asks for.
    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        match self.msg.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        }
    }

    /// Option 54, the server the client chose.
    pub fn server_id(&self) -> Option<Ipv4Addr> {
        match self.msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        }
    }

    /// Option 93, the client system architecture (RFC 4578, IANA numbers).
    pub fn arch(&self) -> Option<u16> {
        match self.msg.opts().get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
            _ => None,
        }
    }

    /// Option 60, the vendor class identifier.
    pub fn vendor_class(&self) -> &[u8] {
        match self.msg.opts().get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => v,
            _ => &[],
        }
    }

    /// Option 77, the user class.
    pub fn user_class(&self) -> &[u8] {
        match self.msg.opts().get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(v)) => v,
            Some(DhcpOption::Unknown(o)) => o.data(),
            _ => &[],
        }
    }

    /// Whether option 175 (iPXE's encapsulated settings) is present.
    pub fn has_ipxe_options(&self) -> bool {
        self.msg.opts().get(OptionCode::from(175u8)).is_some()
    }

    /// Option 97, the client machine identifier (UUID), echoed back to PXE clients.
    pub fn machine_id(&self) -> Option<&DhcpOption> {
        self.msg.opts().get(OptionCode::ClientMachineIdentifier)
    }

    /// Option 12, the host name the client sent.
    pub fn hostname(&self) -> Option<&str> {
        match self.msg.opts().get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => Some(h),
            _ => None,
        }
    }
}

/// Encodes `reply`, padded to the BOOTP minimum.
pub fn encode(reply: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(576);
    // Encoding into a Vec fails only on an option longer than 255 bytes,
    // which the replies built here never hold.
    if let Err(e) = reply.encode(&mut Encoder::new(&mut out)) {
        tracing::error!(error = %e, "encoding a DHCP reply failed");
        out.clear();
        return out;
    }
    if out.len() < MIN_REPLY_LEN {
        out.resize(MIN_REPLY_LEN, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover(mac: [u8; 6]) -> Message {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
        m
    }

    fn bytes(m: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out)).unwrap();
        out
    }

    #[test]
    fn parses_a_discover() {
        let r = Request::parse(&bytes(&discover([2, 0, 0, 0, 0, 1]))).unwrap();
        assert_eq!(r.kind, MessageType::Discover);
        assert_eq!(r.mac.to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert_eq!(Request::parse(&[0; 10]).unwrap_err(), Malformed::Short);
        let mut b = bytes(&discover([2, 0, 0, 0, 0, 1]));
        b[236] = 0;
        assert_eq!(Request::parse(&b).unwrap_err(), Malformed::Magic);
        let mut b = bytes(&discover([2, 0, 0, 0, 0, 1]));
        b[2] = 200; // hlen beyond chaddr's 16 bytes would make dhcproto panic
        assert_eq!(Request::parse(&b).unwrap_err(), Malformed::NotEthernet);
        let mut b = bytes(&discover([2, 0, 0, 0, 0, 1]));
        b[0] = 2;
        assert_eq!(Request::parse(&b).unwrap_err(), Malformed::NotRequest);
        let mut m = discover([2, 0, 0, 0, 0, 1]);
        m.opts_mut().remove(OptionCode::MessageType);
        assert_eq!(Request::parse(&bytes(&m)).unwrap_err(), Malformed::NoMessageType);
        let mut m = discover([2, 0, 0, 0, 0, 1]);
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Ack));
        assert_eq!(Request::parse(&bytes(&m)).unwrap_err(), Malformed::WrongType);
    }

    #[test]
    fn an_option_length_the_decoder_asserts_is_malformed_not_a_panic() {
        // Found by the dhcp_request fuzz target: option 81 (client FQDN) of
        // length 1. dhcproto debug-asserts >= 3 (a panic in debug builds); in
        // release builds its decoding stops there, before option 53.
        let mut b = bytes(&discover([2, 0, 0, 0, 0, 1]));
        b.truncate(HEADER_LEN);
        b.extend_from_slice(&[81, 1, 0, 53, 1, 1, 255]);
        let e = Request::parse(&b).unwrap_err();
        assert!(matches!(e, Malformed::Decoder | Malformed::NoMessageType), "{e:?}");
    }

    #[test]
    fn replies_are_padded() {
        assert_eq!(encode(&discover([2, 0, 0, 0, 0, 1])).len(), MIN_REPLY_LEN);
    }
}
