//! CoAP packet helpers: options, codes, empty messages and piggybacked replies.

use super::*;

/// Whether two addresses are the same host: the same IP, whatever the port. A client that
/// rebooted, or whose NAT mapping was renewed, comes back from a new port of the same
/// address; registrations, updates and de-registrations follow it there. (A response must
/// come from exactly where its request went.)
pub(super) fn same_host(a: Peer, b: Peer) -> bool {
    a.secure == b.secure && a.addr.ip() == b.addr.ip()
}

/// Where a datagram came from or goes to: an address, on the plain CoAP socket or through
/// a DTLS session (the same address on the two is two peers: a plain datagram never
/// answers for a secure one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    pub(super) secure: bool,
}

impl Peer {
    pub(super) fn plain(addr: SocketAddr) -> Peer {
        Peer { addr, secure: false }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.secure { write!(f, "coaps://{}", self.addr) } else { write!(f, "coap://{}", self.addr) }
    }
}

/// `N` bytes from the OS random source.
pub(super) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source");
    b
}

pub(super) fn code_number(c: MessageClass) -> u16 {
    let raw: u8 = c.into();
    u16::from(raw >> 5) * 100 + u16::from(raw & 0x1f)
}

pub(super) fn method(m: CoapMethod) -> RequestType {
    match m {
        CoapMethod::Get => RequestType::Get,
        CoapMethod::Post => RequestType::Post,
        CoapMethod::Put => RequestType::Put,
        CoapMethod::Delete => RequestType::Delete,
        CoapMethod::Fetch => RequestType::Fetch,
        CoapMethod::Ipatch => RequestType::IPatch,
    }
}

pub(super) fn uri_path(p: &Packet) -> Vec<String> {
    p.get_option(CoapOption::UriPath)
        .map(|l| l.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        .unwrap_or_default()
}

pub(super) fn uri_query(p: &Packet) -> Vec<String> {
    p.get_option(CoapOption::UriQuery)
        .map(|l| l.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        .unwrap_or_default()
}

pub(super) fn uint_option(p: &Packet, o: CoapOption) -> Option<u32> {
    p.get_first_option(o).map(|v| v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)))
}

pub(super) fn uint_bytes(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

/// An empty ACK or RST for message `message_id`: code 0.00, no token, no payload.
pub(super) fn empty(kind: MessageType, message_id: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.code = MessageClass::Empty;
    p.header.message_id = message_id;
    p
}

impl Coap {
    /// A piggybacked response to `request`.
    pub(super) fn reply(request: &Packet, code: ResponseType) -> Packet {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(if request.header.get_type() == MessageType::Confirmable {
            MessageType::Acknowledgement
        } else {
            MessageType::NonConfirmable
        });
        p.header.message_id = request.header.message_id;
        p.header.code = MessageClass::Response(code);
        p.set_token(request.get_token().to_vec());
        p
    }
}
