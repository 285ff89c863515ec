//! CoAP over UDP for LwM2M devices (`--coap-addr`): the LwM2M registration interface
//! (register, update, de-register on `/rd`, with lifetime, binding and queue mode) and
//! the server-initiated requests operations become (Read, Write, Execute, Observe).
//!
//! The host owns the transport; the device type's plugin (the one whose `describe` lists
//! `delivery: coap`) validates registrations (`enroll` with the CoAP channel), encodes
//! operations as CoAP requests and decodes the responses, exactly as for HTTP and MQTT.
//! Each request carries a fresh token; the response (piggybacked on the ACK, or separate)
//! and every Observe notification come back with it and are decoded for the operation
//! the token was made for. Confirmable requests are retransmitted (RFC 7252: 2 s, doubling,
//! 4 times); a request never answered puts its operation back in the queue (NOTNOW), to
//! be sent again at the device's next update.
//!
//! A confirmable message that arrives again from the same endpoint with the same message
//! id (the peer did not get Drover's ACK, or the network duplicated it) is not handled
//! again: Drover answers with the bytes it answered the first time (RFC 7252 §4.5), so a
//! retransmitted Register does not make a second registration and a retransmitted
//! notification is not recorded twice.
//!
//! Registrations are soft state, kept in memory: after a restart an update gets 4.04 and
//! the client registers again (as the LwM2M specification has it). A device in queue
//! mode (`b=UQ`) is sent to only right after it registered or updated, when it listens.

use crate::core::Core;
use crate::delivery::{Queue, encode_queued, receive};
use crate::error::Kind;
use crate::plugins::types::{Channel, ChannelKind, CoapMessage, CoapMethod, CoapRequest, Delivery, Outbound, Reply};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Why an update or de-registration from an address other than the registration's is refused.
const MOVED: &str = "this registration was made from another host: only that host may update or end it";

/// RFC 7252 transmission parameters.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;

/// A registration lives `lt` seconds (default 86400) after its last update.
const DEFAULT_LIFETIME: u64 = 86_400;

/// Largest datagram read (CoAP over UDP stays well under it).
const MAX_DATAGRAM: usize = 64 * 1024;

/// How long a peer's confirmable message id is remembered for deduplication: RFC 7252's
/// EXCHANGE_LIFETIME, the longest a retransmission of it can arrive.
const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

/// The same for a non-confirmable message id: RFC 7252's NON_LIFETIME. A peer may use the
/// id again after it, so it must not be remembered longer.
const NON_LIFETIME: Duration = Duration::from_secs(145);

/// At most this many message ids are remembered; past it (a flood of datagrams from
/// ever-new addresses) new ones are handled without deduplication rather than growing
/// memory without bound.
const MAX_SEEN: usize = 200_000;

/// A message received from a peer, and what Drover answered (`None` while it is still
/// being handled, or for a non-confirmable message, which gets no ACK: a duplicate then
/// gets nothing).
struct Seen {
    at: Instant,
    /// How long its id is remembered: [`EXCHANGE_LIFETIME`] or [`NON_LIFETIME`].
    lifetime: Duration,
    answer: Option<Vec<u8>>,
}

/// What the server keeps per registered endpoint.
#[derive(Debug, Clone)]
struct Registration {
    device: i64,
    device_type: String,
    device_id: String,
    addr: SocketAddr,
    lifetime: Duration,
    binding: String,
    updated: Instant,
}

impl Registration {
    fn queue_mode(&self) -> bool {
        self.binding.contains('Q')
    }
}

/// A request Drover sent, awaiting its response (or, for an Observe, its notifications).
#[derive(Debug, Clone)]
struct Exchange {
    device: i64,
    request: CoapRequest,
    addr: SocketAddr,
    message_id: u16,
    bytes: Vec<u8>,
    /// An ACK (empty or piggybacked) arrived: no more retransmissions.
    acked: bool,
    tries: u32,
    next_at: Instant,
    timeout: Duration,
}

struct Inner {
    socket: UdpSocket,
    registrations: Mutex<HashMap<String, Registration>>,
    /// Device key → registration id.
    by_device: Mutex<HashMap<i64, String>>,
    /// Token → exchange.
    exchanges: Mutex<HashMap<Vec<u8>, Exchange>>,
    /// Observe requests to re-establish when a device registers again: device key →
    /// (operation, request).
    observing: Mutex<HashMap<i64, Vec<CoapRequest>>>,
    next_message_id: AtomicU16,
    /// A registration for a live endpoint, an update or a de-registration from another
    /// address than the registration's is accepted (`--coap-allow-address-change`).
    allow_address_change: bool,
    /// (peer, message id) of confirmable messages received lately → Drover's answer.
    seen: Mutex<HashMap<(SocketAddr, u16), Seen>>,
}

/// The CoAP side of a server, cheap to clone.
#[derive(Clone)]
pub struct Coap {
    inner: Arc<Inner>,
}

/// Whether two addresses are the same host: the same IP, whatever the port. A client that
/// rebooted, or whose NAT mapping was renewed, comes back from a new port of the same
/// address; registrations, updates and de-registrations follow it there. (A response must
/// come from exactly where its request went.)
fn same_host(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip()
}

/// `N` bytes from the OS random source.
fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source");
    b
}

fn code_number(c: MessageClass) -> u16 {
    let raw: u8 = c.into();
    u16::from(raw >> 5) * 100 + u16::from(raw & 0x1f)
}

fn method(m: CoapMethod) -> RequestType {
    match m {
        CoapMethod::Get => RequestType::Get,
        CoapMethod::Post => RequestType::Post,
        CoapMethod::Put => RequestType::Put,
        CoapMethod::Delete => RequestType::Delete,
        CoapMethod::Fetch => RequestType::Fetch,
        CoapMethod::Ipatch => RequestType::IPatch,
    }
}

fn uri_path(p: &Packet) -> Vec<String> {
    p.get_option(CoapOption::UriPath)
        .map(|l| l.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        .unwrap_or_default()
}

fn uri_query(p: &Packet) -> Vec<String> {
    p.get_option(CoapOption::UriQuery)
        .map(|l| l.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        .unwrap_or_default()
}

fn uint_option(p: &Packet, o: CoapOption) -> Option<u32> {
    p.get_first_option(o).map(|v| v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)))
}

fn uint_bytes(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

/// An empty ACK or RST for message `message_id`: code 0.00, no token, no payload.
fn empty(kind: MessageType, message_id: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.code = MessageClass::Empty;
    p.header.message_id = message_id;
    p
}

impl Coap {
    /// Bind the UDP socket (a clear error naming the flag when the address is taken).
    pub async fn bind(addr: SocketAddr, allow_address_change: bool) -> anyhow::Result<Coap> {
        let socket = UdpSocket::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen for CoAP on {addr} (--coap-addr): {e}; choose another address")
        })?;
        let seed = random::<2>();
        Ok(Coap {
            inner: Arc::new(Inner {
                socket,
                registrations: Mutex::new(HashMap::new()),
                by_device: Mutex::new(HashMap::new()),
                exchanges: Mutex::new(HashMap::new()),
                observing: Mutex::new(HashMap::new()),
                next_message_id: AtomicU16::new(u16::from_be_bytes(seed)),
                allow_address_change,
                seen: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.socket.local_addr()
    }

    /// An activity was stored: send it to its registered devices that listen now.
    fn activity_added(&self, state: &Core, activity: i64) {
        // Most servers have no LwM2M device registered: then there is nobody to ask about.
        if self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return;
        }
        let (coap, state) = (self.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(devices) = state.store.activity_queued_devices(activity).await else { return };
            for (device, ..) in devices {
                let listening = {
                    let by_device = coap.inner.by_device.lock().unwrap_or_else(|p| p.into_inner());
                    let regs = coap.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
                    by_device.get(&device).and_then(|id| regs.get(id)).is_some_and(|r| !r.queue_mode())
                };
                if listening {
                    coap.deliver(&state, device).await;
                }
            }
        });
    }

    /// Receive datagrams and keep retransmitting until the server stops (the task is
    /// aborted).
    /// `events` is subscribed by the caller before the server takes requests.
    pub async fn run(self, state: Core, events: tokio::sync::broadcast::Receiver<crate::events::Event>) {
        if let Ok(addr) = self.local_addr() {
            tracing::info!(%addr, "CoAP listening");
        }
        tokio::join!(
            self.clone().retransmit(state.clone()),
            self.clone().follow(state.clone(), events),
            self.receive(state)
        );
    }

    /// A device whose credentials were revoked, or that was removed, loses its
    /// registration at once: nothing more is sent to it, and its pending exchanges and
    /// observations are forgotten. (A removed device that registers again is a new device,
    /// as the enrollment rule allows. Plain CoAP has no credential, so a revoked device,
    /// still enrolled, may register again: docs/security.md.)
    /// New activities go out to the registered devices that listen.
    async fn follow(self, state: Core, mut events: tokio::sync::broadcast::Receiver<crate::events::Event>) {
        use crate::events::Event;
        while let Some(event) = crate::events::next(&mut events, "coap").await {
            let device = match event {
                Event::CredentialsRevoked { device, .. } | Event::DeviceRemoved { device, .. } => device,
                Event::ActivityAdded { activity, .. } => {
                    self.activity_added(&state, activity);
                    continue;
                }
                _ => continue,
            };
            let id = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner()).remove(&device);
            if let Some(id) = id {
                self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                tracing::info!(device, "LwM2M registration ended: credentials revoked or device removed");
            }
            self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, x| x.device != device);
            self.inner.observing.lock().unwrap_or_else(|p| p.into_inner()).remove(&device);
        }
    }

    async fn receive(self, state: Core) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = match self.inner.socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("CoAP receive failed: {e}");
                    continue;
                }
            };
            let packet = match Packet::from_bytes(&buf[..n]) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(%from, "not a CoAP message: {e}");
                    continue;
                }
            };
            if self.duplicate(&packet, from).await {
                continue;
            }
            // Each datagram is handled on its own; a device's exchanges are short.
            let (coap, state) = (self.clone(), state.clone());
            tokio::spawn(async move { coap.datagram(&state, packet, from).await });
        }
    }

    /// Whether `packet` is a request or response already received from `from` (RFC 7252
    /// §4.5). A confirmable one gets the answer given to it then, again; a non-confirmable
    /// one is silently ignored. A new one is remembered as seen.
    async fn duplicate(&self, packet: &Packet, from: SocketAddr) -> bool {
        let lifetime = match packet.header.get_type() {
            MessageType::Confirmable => EXCHANGE_LIFETIME,
            MessageType::NonConfirmable => NON_LIFETIME,
            _ => return false,
        };
        if !matches!(packet.header.code, MessageClass::Request(_) | MessageClass::Response(_)) {
            return false;
        }
        let key = (from, packet.header.message_id);
        let now = Instant::now();
        let again = {
            let mut seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
            match seen.get(&key) {
                // Past its lifetime (not swept yet) the id may be in use again: a new message.
                Some(s) if now.duration_since(s.at) < s.lifetime => Some(s.answer.clone()),
                _ => {
                    if seen.len() < MAX_SEEN || seen.contains_key(&key) {
                        seen.insert(key, Seen { at: now, lifetime, answer: None });
                    }
                    None
                }
            }
        };
        let Some(answer) = again else { return false };
        tracing::debug!(%from, message_id = key.1, "duplicate CoAP message: answered as before");
        if let Some(bytes) = answer
            && let Err(e) = self.inner.socket.send_to(&bytes, from).await
        {
            tracing::warn!(%from, "CoAP send failed: {e}");
        }
        true
    }

    async fn send(&self, packet: &Packet, to: SocketAddr) {
        match packet.to_bytes() {
            Ok(bytes) => {
                // An ACK or RST carries the id of the peer's confirmable message it answers:
                // kept, a retransmission of that message gets these same bytes.
                if matches!(packet.header.get_type(), MessageType::Acknowledgement | MessageType::Reset)
                    && let Some(s) = self
                        .inner
                        .seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&(to, packet.header.message_id))
                {
                    s.answer = Some(bytes.clone());
                }
                if let Err(e) = self.inner.socket.send_to(&bytes, to).await {
                    tracing::warn!(%to, "CoAP send failed: {e}");
                }
            }
            Err(e) => tracing::warn!("CoAP message not encodable: {e:?}"),
        }
    }

    /// A piggybacked response to `request`.
    fn reply(request: &Packet, code: ResponseType) -> Packet {
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

    async fn datagram(&self, state: &Core, packet: Packet, from: SocketAddr) {
        match packet.header.code {
            MessageClass::Request(_) => {
                let (answer, listening) = self.registration_interface(state, &packet, from).await;
                self.send(&answer, from).await;
                // A device that just registered or updated listens now (queue mode: only now).
                if let Some(device) = listening {
                    self.deliver(state, device).await;
                }
            }
            MessageClass::Response(_) => self.response(state, packet, from).await,
            MessageClass::Empty if packet.header.get_type() == MessageType::Confirmable => {
                // An empty confirmable message is a "CoAP ping" (RFC 7252 §4.3): the answer
                // is a RST with its message id. Devices use it to check that the server
                // still knows them before they send anything that matters.
                self.send(&empty(MessageType::Reset, packet.header.message_id), from).await;
            }
            // An empty non-confirmable message means nothing (RFC 7252 §4.3): ignored.
            MessageClass::Empty if packet.header.get_type() == MessageType::NonConfirmable => {}
            MessageClass::Empty => {
                // An empty ACK (a separate response follows) or a RST (the device refused
                // the request or no longer wants an observation).
                let mut exchanges = self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner());
                let found = exchanges
                    .iter()
                    .find(|(_, x)| x.message_id == packet.header.message_id && x.addr == from)
                    .map(|(t, _)| t.clone());
                if let Some(token) = found {
                    if packet.header.get_type() == MessageType::Reset {
                        exchanges.remove(&token);
                    } else if let Some(x) = exchanges.get_mut(&token) {
                        x.acked = true;
                    }
                }
            }
            MessageClass::Reserved(_) => {}
        }
    }

    /// The device's current registration.
    fn registration_of(&self, device: i64) -> Option<Registration> {
        let by_device = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner());
        let regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
        by_device.get(&device).and_then(|id| regs.get(id)).cloned()
    }

    /// Drop the device's pointer to registration `id`, unless it registered anew since.
    fn forget(&self, device: i64, id: &str) {
        let mut by_device = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner());
        if by_device.get(&device).is_some_and(|current| current == id) {
            by_device.remove(&device);
        }
    }

    fn plugin_for_coap(state: &Core) -> Option<(String, Arc<crate::plugins::LoadedPlugin>)> {
        // The CoAP device type: `lwm2m` if it serves, else any serving type that says coap.
        if let Some(p) = state.registry.device_type("lwm2m") {
            return Some(("lwm2m".into(), p));
        }
        state.registry.names().into_iter().find_map(|name| {
            let p = state.registry.device_type(&name)?;
            p.device_type_info()?.delivery.contains(&Delivery::Coap).then_some((name, p))
        })
    }

    /// `POST /rd` (register), `POST /rd/{id}` (update), `DELETE /rd/{id}` (de-register).
    /// The answer, and the device that registered or updated (it listens now).
    async fn registration_interface(&self, state: &Core, packet: &Packet, from: SocketAddr) -> (Packet, Option<i64>) {
        let path = uri_path(packet);
        let query = uri_query(packet);
        let MessageClass::Request(m) = packet.header.code else { unreachable!("a request") };
        let answer = |code: ResponseType, diagnostic: &str| {
            let mut p = Coap::reply(packet, code);
            if !diagnostic.is_empty() {
                p.payload = diagnostic.as_bytes().to_vec();
            }
            p
        };
        match (m, path.iter().map(String::as_str).collect::<Vec<_>>().as_slice()) {
            (RequestType::Post, ["rd"]) => match self.register(state, packet, query, from).await {
                Ok((id, device)) => {
                    let mut p = answer(ResponseType::Created, "");
                    p.add_option(CoapOption::LocationPath, b"rd".to_vec());
                    p.add_option(CoapOption::LocationPath, id.into_bytes());
                    (p, Some(device))
                }
                Err((code, why)) => (answer(code, &why), None),
            },
            (RequestType::Post, ["rd", id]) => match self.update(state, id, &query, from).await {
                Ok(device) => (answer(ResponseType::Changed, ""), Some(device)),
                Err((code, why)) => (answer(code, &why), None),
            },
            (RequestType::Delete, ["rd", id]) => {
                let removed = {
                    let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
                    match regs.get(*id) {
                        Some(r) if !same_host(r.addr, from) && !self.inner.allow_address_change => {
                            return (answer(ResponseType::Forbidden, MOVED), None);
                        }
                        _ => regs.remove(*id),
                    }
                };
                match removed {
                    Some(r) => {
                        self.forget(r.device, id);
                        tracing::info!(device_type = %r.device_type, device_id = %r.device_id, "LwM2M de-registered");
                        (answer(ResponseType::Deleted, ""), None)
                    }
                    None => (answer(ResponseType::NotFound, "no such registration"), None),
                }
            }
            _ => (answer(ResponseType::NotFound, "Drover serves the registration interface on /rd"), None),
        }
    }

    async fn register(
        &self,
        state: &Core,
        packet: &Packet,
        query: Vec<String>,
        from: SocketAddr,
    ) -> Result<(String, i64), (ResponseType, String)> {
        let Some((device_type, plugin)) = Coap::plugin_for_coap(state) else {
            return Err((ResponseType::ServiceUnavailable, "no CoAP device type is loaded".into()));
        };
        let channel = Channel::Coap(CoapMessage {
            method: Some(CoapMethod::Post),
            code: 0,
            path: "rd".into(),
            query: query.clone(),
            content_format: uint_option(packet, CoapOption::ContentFormat).map(|v| v as u16),
            operation_id: None,
        });
        crate::bounds::check(&packet.payload).map_err(|e| (ResponseType::BadRequest, e.to_string()))?;
        let source = crate::plugins::Source::Peer(from.ip());
        let e = plugin.enroll(source, channel, packet.payload.clone()).await.map_err(|e| match e {
            crate::plugins::CallError::Rejected(p) => (ResponseType::BadRequest, p.message),
            crate::plugins::CallError::Fault(f) => match f.fault {
                crate::plugins::Fault::Held(_) => (ResponseType::TooManyRequests, f.to_string()),
                crate::plugins::Fault::Busy(_) => (ResponseType::ServiceUnavailable, f.to_string()),
                _ => (ResponseType::UnprocessableEntity, f.to_string()),
            },
            other => (ResponseType::InternalServerError, other.to_string()),
        })?;
        let internal = |e: crate::store::StoreError| (ResponseType::InternalServerError, e.to_string());
        let existing = state.store.device(&device_type, &e.device_id).await.map_err(internal)?;
        // A live registration of this endpoint from another address stands: without DTLS an
        // endpoint name is no credential, and the first registration's address is all that
        // tells the device from someone who learned its name.
        if let Some(d) = &existing
            && !self.inner.allow_address_change
            && let Some(r) = self.registration_of(d.id)
            && !same_host(r.addr, from)
            && r.updated.elapsed() <= r.lifetime
        {
            tracing::warn!(device_id = %d.device_id, %from, registered_from = %r.addr, "LwM2M registration from another address refused");
            return Err((
                ResponseType::Forbidden,
                format!(
                    "endpoint `{}` is registered from another host; it can register from here once that \
                     registration ends (de-registration or lifetime), or when the server allows address changes",
                    d.device_id
                ),
            ));
        }
        let metadata: Vec<(String, String)> = e.metadata.clone();
        let device = match existing {
            Some(d) if d.status == "active" || d.status == "unreachable" => {
                state.store.touch_device(d.id, &metadata, None).await.map_err(internal)?;
                crate::delivery::seen(state, &d);
                d
            }
            _ => {
                // LwM2M carries no enrollment token: the identity is claimed by the rule
                // for self-enrollment (a pre-registered one only if its import allowed it).
                crate::enrollment::admit(state, &device_type, &e, None, "coap").await.map_err(|err| {
                    let code = match err.kind {
                        Kind::Internal => ResponseType::InternalServerError,
                        _ => ResponseType::Forbidden,
                    };
                    (code, format!("endpoint `{}`: {}", e.device_id, err.message))
                })?
            }
        };
        let lifetime = query
            .iter()
            .find_map(|q| q.strip_prefix("lt="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(DEFAULT_LIFETIME);
        let binding = query.iter().find_map(|q| q.strip_prefix("b=")).unwrap_or("U").to_string();
        // Unguessable: whoever knows a registration's id could otherwise update it or end it.
        let id = hex::encode(random::<8>());
        let registration = Registration {
            device: device.id,
            device_type: device_type.clone(),
            device_id: device.device_id.clone(),
            addr: from,
            lifetime: Duration::from_secs(lifetime),
            binding,
            updated: Instant::now(),
        };
        let old = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner()).insert(device.id, id.clone());
        {
            let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = old {
                regs.remove(&old);
            }
            regs.insert(id.clone(), registration);
        }
        tracing::info!(device_type, device_id = %device.device_id, %from, lifetime, "LwM2M registered");
        // A new registration forgets the device's observations and exchanges (the client
        // starts afresh): drop their tokens, then re-establish the observations.
        let unanswered: Vec<u64> = {
            let mut exchanges = self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner());
            let lost = exchanges
                .values()
                .filter(|x| x.device == device.id && x.request.observe.is_none())
                .map(|x| x.request.operation_id)
                .collect();
            exchanges.retain(|_, x| x.device != device.id);
            lost
        };
        // Requests the device never answered go back to the queue and out again below.
        let note = serde_json::json!({"note": "the device registered again before answering"}).to_string();
        let back: Vec<_> =
            unanswered.iter().map(|op| (*op as i64, crate::ops::Reported::NotNow, Some(note.clone()))).collect();
        if !back.is_empty() {
            state.store.apply_results(device.id, &back).await.map_err(internal)?;
        }
        let observes = self.inner.observing.lock().unwrap_or_else(|p| p.into_inner()).remove(&device.id);
        for r in observes.unwrap_or_default() {
            self.request(device.id, r, from).await;
        }
        Ok((id, device.id))
    }

    async fn update(
        &self,
        state: &Core,
        id: &str,
        query: &[String],
        from: SocketAddr,
    ) -> Result<i64, (ResponseType, String)> {
        let device = {
            let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
            let Some(r) = regs.get_mut(id) else {
                // Unknown (expired, or the server restarted): the client registers again.
                return Err((ResponseType::NotFound, "no such registration: register again".into()));
            };
            if !same_host(r.addr, from) && !self.inner.allow_address_change {
                return Err((ResponseType::Forbidden, MOVED.into()));
            }
            r.addr = from;
            r.updated = Instant::now();
            for q in query {
                if let Some(lt) = q.strip_prefix("lt=").and_then(|v| v.parse().ok()) {
                    r.lifetime = Duration::from_secs(lt);
                }
                if let Some(b) = q.strip_prefix("b=") {
                    r.binding = b.to_string();
                }
            }
            r.device
        };
        state
            .store
            .touch_device(device, &[], None)
            .await
            .map_err(|e| (ResponseType::InternalServerError, e.to_string()))?;
        state.events.publish_with(|| crate::events::Event::DeviceSeen { device });
        Ok(device)
    }

    /// Send the device's queue as CoAP requests.
    async fn deliver(&self, state: &Core, device: i64) {
        let Ok(Some(row)) = state.store.device_by_key(device).await else { return };
        let Ok(plugin) = state.device_type(&row.device_type) else { return };
        let addr = {
            let by_device = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner());
            let regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
            by_device.get(&device).and_then(|id| regs.get(id)).map(|r| r.addr)
        };
        let Some(addr) = addr else { return };
        let queue = Queue { skip_empty: true, skip_not_now: false };
        match encode_queued(state, &plugin, &row, ChannelKind::Coap, "delivery:coap", queue, None).await {
            Ok(Some(Outbound::Coap(requests))) => {
                for r in requests {
                    self.request(device, r, addr).await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(device_id = %row.device_id, "CoAP delivery failed: {}", e.message),
        }
    }

    /// Send one request for an operation (confirmable, a fresh token), remembered until
    /// answered.
    async fn request(&self, device: i64, r: CoapRequest, addr: SocketAddr) {
        // Unguessable (RFC 7252 §5.3.1, RFC 9175): a response is matched by its token.
        let token = random::<8>().to_vec();
        let message_id = self.inner.next_message_id.fetch_add(1, Ordering::Relaxed);
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = message_id;
        p.header.code = MessageClass::Request(method(r.method));
        p.set_token(token.clone());
        if let Some(o) = r.observe {
            p.add_option(CoapOption::Observe, if o { vec![] } else { vec![1] });
        }
        for segment in r.path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
        }
        if let Some(cf) = r.content_format {
            p.add_option(CoapOption::ContentFormat, uint_bytes(u32::from(cf)));
        }
        if let Some(a) = r.accept {
            p.add_option(CoapOption::Accept, uint_bytes(u32::from(a)));
        }
        p.payload = r.payload.clone();
        let bytes = match p.to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(operation = r.operation_id, "CoAP request not encodable: {e:?}");
                return;
            }
        };
        match r.observe {
            Some(true) => {
                let mut observing = self.inner.observing.lock().unwrap_or_else(|p| p.into_inner());
                let list = observing.entry(device).or_default();
                list.retain(|o| !(o.operation_id == r.operation_id && o.path == r.path));
                list.push(r.clone());
            }
            Some(false) => {
                // Cancelling: forget the observation of that path, here and for re-registration.
                if let Some(list) = self.inner.observing.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&device) {
                    list.retain(|o| o.path != r.path);
                }
                self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, x| {
                    !(x.device == device && x.request.observe == Some(true) && x.request.path == r.path)
                });
            }
            None => {}
        }
        self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner()).insert(
            token,
            Exchange {
                device,
                request: r,
                addr,
                message_id,
                bytes: bytes.clone(),
                acked: false,
                tries: 0,
                next_at: Instant::now() + ACK_TIMEOUT,
                timeout: ACK_TIMEOUT,
            },
        );
        if let Err(e) = self.inner.socket.send_to(&bytes, addr).await {
            tracing::warn!(%addr, "CoAP send failed: {e}");
        }
    }

    /// A response (piggybacked, separate, or an Observe notification).
    async fn response(&self, state: &Core, packet: Packet, from: SocketAddr) {
        let token = packet.get_token().to_vec();
        let is_notification = packet.get_first_option(CoapOption::Observe).is_some();
        let exchange = {
            let mut exchanges = self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner());
            match exchanges.get_mut(&token) {
                // Only the address the request went to may answer it: a token is not a
                // credential, and another host that learned one must not answer for the device.
                Some(x) if x.addr != from => None,
                Some(x) if x.request.observe == Some(true) && is_notification => {
                    x.acked = true;
                    Some(x.clone())
                }
                Some(_) => exchanges.remove(&token),
                None => None,
            }
        };
        // A separate response or notification that is confirmable wants an empty ACK.
        if packet.header.get_type() == MessageType::Confirmable {
            let kind = if exchange.is_some() { MessageType::Acknowledgement } else { MessageType::Reset };
            self.send(&empty(kind, packet.header.message_id), from).await;
        }
        let Some(x) = exchange else {
            tracing::debug!(%from, "CoAP response with an unknown token: ignored");
            return;
        };
        let Ok(Some(device)) = state.store.device_by_key(x.device).await else { return };
        let Ok(plugin) = state.device_type(&device.device_type) else { return };
        let channel = Channel::Coap(CoapMessage {
            method: None,
            code: code_number(packet.header.code),
            path: x.request.path.clone(),
            query: vec![],
            content_format: uint_option(&packet, CoapOption::ContentFormat).map(|v| v as u16),
            operation_id: Some(x.request.operation_id),
        });
        match receive(state, &plugin, &device, channel, &packet.payload).await {
            Ok(message) => {
                if let Reply::Immediate(Outbound::Coap(requests)) = message.reply {
                    for r in requests {
                        self.request(device.id, r, from).await;
                    }
                }
            }
            // A payload the plugin refuses changes nothing; the operation waits as it was.
            Err(e) => tracing::warn!(
                device_id = %device.device_id, operation = x.request.operation_id,
                "CoAP response refused: {}", e.message
            ),
        }
    }

    /// Retransmit unacknowledged requests; give up after MAX_RETRANSMIT and put the
    /// operation back in the queue. Drop registrations past their lifetime.
    async fn retransmit(self, state: Core) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut sweeps: u32 = 0;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut resend = Vec::new();
            let mut given_up = Vec::new();
            {
                let mut exchanges = self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner());
                exchanges.retain(|_, x| {
                    if x.acked || x.next_at > now {
                        return true;
                    }
                    if x.tries >= MAX_RETRANSMIT {
                        given_up.push((x.device, x.request.operation_id));
                        return false;
                    }
                    x.tries += 1;
                    x.timeout *= 2;
                    x.next_at = now + x.timeout;
                    resend.push((x.bytes.clone(), x.addr));
                    true
                });
            }
            for (bytes, addr) in resend {
                let _ = self.inner.socket.send_to(&bytes, addr).await;
            }
            for (device, operation) in given_up {
                tracing::warn!(operation, "CoAP request never answered: the operation goes back to the queue");
                let note = serde_json::json!({"note": "the device did not answer the CoAP request"}).to_string();
                let _ = state
                    .store
                    .apply_results(device, &[(operation as i64, crate::ops::Reported::NotNow, Some(note))])
                    .await;
            }
            // One lock at a time (elsewhere `by_device` is taken before `registrations`).
            let expired: Vec<(String, Registration)> = {
                let mut regs = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner());
                let ids: Vec<String> = regs
                    .iter()
                    .filter(|(_, r)| now.duration_since(r.updated) > r.lifetime)
                    .map(|(k, _)| k.clone())
                    .collect();
                ids.into_iter().filter_map(|id| regs.remove(&id).map(|r| (id, r))).collect()
            };
            for (id, r) in expired {
                self.forget(r.device, &id);
                tracing::info!(device_id = %r.device_id, "LwM2M registration expired");
            }
            // Every 10 s is often enough to forget old message ids.
            sweeps += 1;
            if sweeps.is_multiple_of(40) {
                self.inner
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|_, s| now.duration_since(s.at) < s.lifetime);
            }
        }
    }
}
