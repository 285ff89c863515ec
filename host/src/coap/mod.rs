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
//! LwM2M devices with a pre-shared key talk over DTLS (`--coaps-addr`, `dtls.rs`): the
//! key's identity names the device, and only that device's endpoint registers through the
//! session. Plain CoAP (`--coap-addr`) takes registrations only when the admin opened it
//! for development (`--coap-nosec`), and never for a device that has a key.
//!
//! Registrations are stored (`store/registrations.rs`) and each replica keeps the ones it
//! serves in memory: a restarted server knows its devices' registrations, any replica
//! answers an update or a de-registration, and the replica that adds an activity sends it
//! to the registered devices (docs/lwm2m.md, "Registrations"). Requests in flight are
//! not stored: a restart loses them, and the answer timeout puts their operations back in
//! the queue (`--answer-timeout-secs`). A device in queue mode (`b=UQ`) is sent to only
//! right after it registered or updated, when it listens.
//!
//! By concern: this file holds the socket, the receive loop and the events it follows;
//! `packet.rs` the packet helpers, `dedup.rs` deduplication and sending,
//! `registration.rs` the `/rd` interface, `exchange.rs` the server-initiated requests,
//! `dtls.rs` the DTLS listener and its sessions.

use crate::core::Core;
use crate::delivery::{Queue, encode_queued, receive};
use crate::error::Kind;
use crate::plugins::types::{Channel, ChannelKind, CoapMessage, CoapMethod, CoapRequest, Delivery, Outbound, Reply};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

mod dedup;
mod dtls;
mod exchange;
mod packet;
mod registration;

use dedup::Seen;
use dtls::Dtls;
use exchange::Exchange;
use packet::*;
use registration::Registration;

/// Largest datagram read (CoAP over UDP stays well under it).
const MAX_DATAGRAM: usize = 64 * 1024;

/// Stored requests looked up at once for answers with a token not held here.
const STORED_LOOKUPS: usize = 4;

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
    seen: Mutex<HashMap<(Peer, u16), Seen>>,
    /// The DTLS listener, when served.
    dtls: Option<Dtls>,
    /// Plain CoAP takes registrations of devices without a key (`--coap-nosec`).
    nosec: bool,
    /// Database reads for answers whose token this replica does not hold, at once: anyone
    /// can send a response with a made-up token, and a flood of them must not become a
    /// flood of queries (`exchange.rs`, docs/security.md).
    stored_lookups: tokio::sync::Semaphore,
}

/// Where and how CoAP is served.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// Plain CoAP (`--coap-addr`).
    pub plain: SocketAddr,
    /// CoAP over DTLS (`--coaps-addr`); `None`: not served.
    pub secure: Option<SocketAddr>,
    /// See `ServeArgs::coap_nosec`.
    pub nosec: bool,
    /// See `ServeArgs::coap_allow_address_change`.
    pub allow_address_change: bool,
}

/// The CoAP side of a server, cheap to clone.
#[derive(Clone)]
pub struct Coap {
    inner: Arc<Inner>,
}

impl Coap {
    /// Bind the UDP sockets (a clear error naming the flag when an address is taken).
    pub async fn bind(listen: Listen) -> anyhow::Result<Coap> {
        let addr = listen.plain;
        let socket = UdpSocket::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen for CoAP on {addr} (--coap-addr): {e}; choose another address")
        })?;
        let dtls = match listen.secure {
            Some(a) => Some(Dtls::bind(a).await?),
            None => None,
        };
        let seed = random::<2>();
        Ok(Coap {
            inner: Arc::new(Inner {
                socket,
                registrations: Mutex::new(HashMap::new()),
                by_device: Mutex::new(HashMap::new()),
                exchanges: Mutex::new(HashMap::new()),
                observing: Mutex::new(HashMap::new()),
                next_message_id: AtomicU16::new(u16::from_be_bytes(seed)),
                allow_address_change: listen.allow_address_change,
                seen: Mutex::new(HashMap::new()),
                dtls,
                nosec: listen.nosec,
                stored_lookups: tokio::sync::Semaphore::new(STORED_LOOKUPS),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.socket.local_addr()
    }

    /// The DTLS listener's address, when served.
    pub fn secure_addr(&self) -> Option<SocketAddr> {
        self.inner.dtls.as_ref().and_then(|d| d.local_addr().ok())
    }

    /// Receive datagrams and keep retransmitting until the server stops (the task is
    /// aborted).
    /// `events` is subscribed by the caller before the server takes requests.
    pub async fn run(self, state: Core, events: tokio::sync::broadcast::Receiver<crate::events::Event>) {
        if let Ok(addr) = self.local_addr() {
            tracing::info!(%addr, "CoAP listening");
        }
        self.restore(&state).await;
        tokio::join!(
            self.clone().retransmit(state.clone()),
            self.clone().follow(state.clone(), events),
            self.clone().receive_secure(state.clone()),
            self.receive(state)
        );
    }

    /// A device whose credentials were revoked, whose key was replaced, or that was
    /// removed loses its registration and DTLS sessions at once: nothing more is sent to
    /// it, and its pending exchanges and observations are forgotten. (A removed device that
    /// registers again is a new device, as the enrollment rule allows. Over plain CoAP a
    /// device has no credential, so a revoked device, still enrolled, may register again
    /// there when `--coap-nosec` allows it: docs/security.md.)
    /// New activities go out to the registered devices that listen.
    async fn follow(self, state: Core, mut events: tokio::sync::broadcast::Receiver<crate::events::Event>) {
        use crate::events::Event;
        while let Some(event) = crate::events::next(&mut events, "coap").await {
            let device = match event {
                Event::CredentialsRevoked { device, .. }
                | Event::DeviceRemoved { device, .. }
                | Event::PskProvisioned { device, .. } => device,
                Event::ActivityAdded { activity, .. } => {
                    self.activity_added(&state, activity);
                    continue;
                }
                _ => continue,
            };
            if let Some(dtls) = self.inner.dtls.as_ref() {
                dtls.end_device(device).await;
            }
            let id = self.inner.by_device.lock().unwrap_or_else(|p| p.into_inner()).remove(&device);
            if let Some(id) = id {
                self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                tracing::info!(device, "LwM2M registration ended: credentials revoked or device removed");
            }
            // The stored registration ended in the commit that revoked, keyed or removed
            // the device: an update this replica takes meanwhile finds it gone.
            self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, x| x.device != device);
            self.inner.observing.lock().unwrap_or_else(|p| p.into_inner()).remove(&device);
            if let Err(e) = state.store.delete_coap_exchanges_of(device).await {
                tracing::warn!(device, "the device's stored CoAP requests stay until the sweep: {e}");
            }
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
            let from = Peer::plain(from);
            if self.duplicate(&packet, from).await {
                continue;
            }
            // Each datagram is handled on its own; a device's exchanges are short.
            let (coap, state) = (self.clone(), state.clone());
            tokio::spawn(async move { coap.datagram(&state, packet, from).await });
        }
    }

    async fn datagram(&self, state: &Core, packet: Packet, from: Peer) {
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
                let refused = {
                    let mut exchanges = self.inner.exchanges.lock().unwrap_or_else(|p| p.into_inner());
                    let found = exchanges
                        .iter()
                        .find(|(_, x)| x.message_id == packet.header.message_id && x.addr == from)
                        .map(|(t, _)| t.clone());
                    match found {
                        Some(token) if packet.header.get_type() == MessageType::Reset => {
                            exchanges.remove(&token);
                            Some(token)
                        }
                        Some(token) => {
                            if let Some(x) = exchanges.get_mut(&token) {
                                x.acked = true;
                            }
                            None
                        }
                        None => None,
                    }
                };
                if let Some(token) = refused {
                    exchange::forget_stored(state, &hex::encode(token)).await;
                }
            }
            MessageClass::Reserved(_) => {}
        }
    }
}
