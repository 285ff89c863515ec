//! The embedded MQTT broker: rumqttd's router (topics, sessions, QoS 1 queues) behind a
//! network front of our own, which authenticates every client and holds it to its own
//! topics.
//!
//! rumqttd's own listener authenticates at CONNECT but has no topic ACLs (its tenant
//! prefixes need TLS client certificates), and an ACL proxy in front of it would cost
//! three file descriptors per device where the process may hold 20,000. So each
//! connection here is one socket, read with rumqttd's MQTT 3.1.1 codec, checked, and fed
//! into the router through a local link: the path rumqttd's own listener takes.

use super::{Access, Gate};
use bytes::BytesMut;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, Protocol, SubAck,
    SubscribeReasonCode,
};
use rumqttd::{Notification, Router, RouterConfig};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest MQTT packet accepted from a client.
const MAX_PACKET: usize = 1 << 20;

/// A client must send CONNECT this soon after opening the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an admin session's token is checked again: a revoked or expired token's
/// session ends within this (on whichever replica it was revoked).
const ADMIN_RECHECK: Duration = Duration::from_secs(5);

/// Opens a session in the router: `(router client id, clean session)`. A closure, because
/// rumqttd does not export the type of the router's event channel.
type Connector = Arc<dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync>;

/// A running embedded broker.
pub struct EmbeddedBroker {
    connect: Connector,
    sessions: Arc<Sessions>,
    live: Arc<Live>,
    /// Client connections held at once; one more is refused at once.
    max_connections: usize,
}

/// CONNACK "server unavailable" (MQTT 3.1.1 §3.2.2.3, return code 3), for a connection over
/// the cap. Written without reading its CONNECT: a client reads it after sending one.
const UNAVAILABLE: [u8; 4] = [0x20, 0x02, 0x00, 0x03];

/// The live connections of each device, so that revoking its credentials or removing it
/// ends them at once (a connection was authenticated once, at CONNECT).
#[derive(Default)]
struct Live(Mutex<HashMap<(String, String), Vec<Kick>>>);

/// A connection's number, and how to end it.
type Kick = (u64, Arc<tokio::sync::Notify>);

impl Live {
    fn register(&self, access: &Access, owner: u64) -> Option<Arc<tokio::sync::Notify>> {
        let Access::Device { device_type, device_id } = access else { return None };
        let kick = Arc::new(tokio::sync::Notify::new());
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((device_type.clone(), device_id.clone())).or_default().push((owner, kick.clone()));
        Some(kick)
    }

    fn unregister(&self, access: &Access, owner: u64) {
        let Access::Device { device_type, device_id } = access else { return };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (device_type.clone(), device_id.clone());
        if let Some(list) = map.get_mut(&key) {
            list.retain(|(o, _)| *o != owner);
            if list.is_empty() {
                map.remove(&key);
            }
        }
    }

    /// End every connection of a device; how many there were. (`notify_one` keeps a
    /// permit, so a connection not waiting at this instant ends at its next turn.)
    fn kick(&self, device_type: &str, device_id: &str) -> usize {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get(&(device_type.to_string(), device_id.to_string()));
        list.iter().flat_map(|l| l.iter()).for_each(|(_, k)| k.notify_one());
        list.map_or(0, Vec::len)
    }
}

/// The subscription filters each session holds in the router, by the router's client id.
///
/// Why: a persistent session that the router resumes (`session_present`) is reachable at
/// once only if it holds a subscription; one that never subscribed is not, and a push to it
/// would be acknowledged by the router and reach nobody. The router does not say which
/// filters a resumed session holds, so the front keeps the count itself. A client that
/// reconnects with the same id takes the session over while the old connection is still
/// being torn down; `owner` makes the old connection's late changes no-ops.
#[derive(Default)]
struct Sessions(Mutex<HashMap<String, Held>>);

struct Held {
    owner: u64,
    filters: HashSet<String>,
}

impl Sessions {
    /// Connection `owner` opened session `id`; whether it holds a subscription already
    /// (only a resumed session can).
    fn open(&self, id: &str, owner: u64, resumed: bool) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(id) {
            Some(held) if resumed => {
                held.owner = owner;
                !held.filters.is_empty()
            }
            _ => {
                map.insert(id.to_string(), Held { owner, filters: HashSet::new() });
                false
            }
        }
    }

    /// Apply a SUBSCRIBE (`add`) or UNSUBSCRIBE; whether the session holds any filter after.
    fn change<'a>(&self, id: &str, owner: u64, filters: impl Iterator<Item = &'a str>, add: bool) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(held) = map.get_mut(id).filter(|h| h.owner == owner) else { return false };
        for f in filters {
            if add {
                held.filters.insert(f.to_string());
            } else {
                held.filters.remove(f);
            }
        }
        !held.filters.is_empty()
    }

    /// Connection `owner` ended: the router forgets a clean session, and a persistent one
    /// without filters needs no entry.
    fn close(&self, id: &str, owner: u64, clean: bool) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(id).is_some_and(|h| h.owner == owner && (clean || h.filters.is_empty())) {
            map.remove(id);
        }
    }
}

/// Numbers the connections, for [`Sessions`].
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

impl EmbeddedBroker {
    /// Start the router (on its own thread, as rumqttd does) for `max_connections` clients.
    pub fn start(max_connections: usize) -> EmbeddedBroker {
        let config = RouterConfig {
            // Drover's own delivery client, and the links that drop a removed device's
            // sessions, come on top of the clients.
            max_connections: max_connections + 16,
            // Undelivered QoS 1 messages a session may hold before the oldest are dropped.
            max_outgoing_packet_count: 200,
            max_segment_size: 16 << 20,
            max_segment_count: 8,
            ..Default::default()
        };
        let router_tx = Router::new(0, config).spawn();
        let connect: Connector = Arc::new(move |client_id, clean| {
            LinkBuilder::new(client_id, router_tx.clone()).clean_session(clean).build().map_err(|e| e.to_string())
        });
        EmbeddedBroker { connect, sessions: Arc::default(), live: Arc::default(), max_connections }
    }

    /// A device's credentials were revoked or it was removed: end its connections. A
    /// removed device's persistent sessions go too, with what is queued in them, so that
    /// nothing of them passes to whoever enrolls its id next.
    fn on_event(&self, event: &crate::events::Event) {
        use crate::events::Event;
        let (Event::CredentialsRevoked { device_type, device_id, .. }
        | Event::DeviceRemoved { device_type, device_id, .. }) = event
        else {
            return;
        };
        let (device_type, device_id) = (device_type.as_str(), device_id.as_str());
        let ended = self.live.kick(device_type, device_id);
        tracing::info!(device_type, device_id, connections = ended, "MQTT connections of the device ended");
        if let crate::events::Event::DeviceRemoved { .. } = event {
            let prefix =
                Access::Device { device_type: device_type.into(), device_id: device_id.into() }.session_prefix();
            let ids: Vec<String> = {
                let map = self.sessions.0.lock().unwrap_or_else(|p| p.into_inner());
                map.keys().filter(|k| k.starts_with(&prefix)).cloned().collect()
            };
            let connect = self.connect.clone();
            tokio::spawn(async move {
                // Let the kicked connections finish their teardown first.
                tokio::time::sleep(Duration::from_millis(200)).await;
                for id in ids {
                    // A clean session with the same id replaces the persistent one; its
                    // DISCONNECT then makes the router forget it.
                    if let Ok((mut tx, _rx, _)) = connect(&id, true) {
                        let disconnect = Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection };
                        let _ = tx.send(Packet::Disconnect(disconnect, None)).await;
                    }
                }
            });
        }
    }

    /// Accept MQTT clients on `listener` until the task is dropped, which also ends
    /// every connection (they live in a set owned by this task).
    pub async fn serve(
        self,
        listener: TcpListener,
        auth: Arc<Gate>,
        events: tokio::sync::broadcast::Receiver<crate::events::Event>,
        tls: Option<Arc<crate::tls::Tls>>,
    ) {
        let mut sessions = tokio::task::JoinSet::new();
        let mut events = Some(events);
        loop {
            // Reap finished sessions so the set does not grow with every connection.
            while sessions.try_join_next().is_some() {}
            let next_event = async {
                match events.as_mut() {
                    Some(rx) => crate::events::next(rx, "mqtt broker").await,
                    None => std::future::pending().await,
                }
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                event = next_event => {
                    match event {
                        Some(e) => self.on_event(&e),
                        None => events = None,
                    }
                    continue;
                }
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!("MQTT accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if sessions.len() >= self.max_connections {
                tracing::debug!(%peer, "MQTT connection over the cap: refused");
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&UNAVAILABLE)).await;
                });
                continue;
            }
            let _ = stream.set_nodelay(true);
            let connect = self.connect.clone();
            let held = self.sessions.clone();
            let live = self.live.clone();
            let auth = auth.clone();
            let tls = tls.clone();
            sessions.spawn(async move {
                // The handshake runs here, not in the accept loop, and counts against the
                // connection cap like any session.
                let (stream, client): (Box<dyn crate::tls::Io>, _) = match &tls {
                    None => (Box::new(stream), None),
                    Some(tls) => match tls.accept_mqtt(stream, CONNECT_TIMEOUT).await {
                        Ok(a) => (a.stream, a.client),
                        Err(e) => {
                            tracing::debug!(%peer, "MQTT TLS handshake failed: {e}");
                            return;
                        }
                    },
                };
                if let Err(e) = session(stream, client, connect, held, live, auth).await {
                    tracing::debug!(%peer, "MQTT connection ended: {e}");
                }
            });
        }
    }
}

/// One client connection's packet reader and writer.
struct Wire {
    stream: Box<dyn crate::tls::Io>,
    read: BytesMut,
    write: BytesMut,
}

impl Wire {
    /// The next packet; `None` when the peer closed the connection.
    async fn next(&mut self) -> Result<Option<Packet>, String> {
        loop {
            match V4.read_mut(&mut self.read, MAX_PACKET) {
                Ok(p) => return Ok(Some(p)),
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(format!("malformed MQTT packet: {e}")),
            }
            if self.stream.read_buf(&mut self.read).await.map_err(|e| e.to_string())? == 0 {
                return Ok(None);
            }
        }
    }

    fn queue(&mut self, packet: Packet) -> Result<(), String> {
        V4.write(packet, &mut self.write).map(|_| ()).map_err(|e| format!("cannot encode MQTT packet: {e}"))
    }

    async fn flush(&mut self) -> Result<(), String> {
        if !self.write.is_empty() {
            self.stream.write_all(&self.write).await.map_err(|e| e.to_string())?;
            self.write.clear();
        }
        Ok(())
    }
}

fn refuse(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(ConnAck { session_present: false, code }, None)
}

async fn session(
    stream: Box<dyn crate::tls::Io>,
    client: Option<crate::tls::ClientCertificate>,
    connect: Connector,
    held: Arc<Sessions>,
    live: Arc<Live>,
    auth: Arc<Gate>,
) -> Result<(), String> {
    let mut wire = Wire { stream, read: BytesMut::with_capacity(1024), write: BytesMut::with_capacity(1024) };
    let first = tokio::time::timeout(CONNECT_TIMEOUT, wire.next()).await.map_err(|_| "no CONNECT in time")??;
    let Some(Packet::Connect(c, _, will, _, login)) = first else {
        return Err("the first packet was not CONNECT".into());
    };
    // A verified client certificate is the device's credential; a user name, if the
    // client also sends one, must then be that device's.
    let access = match (&client, &login) {
        (Some(cert), login) => auth
            .authenticate_certificate(&cert.0)
            .await
            .filter(|a| login.as_ref().is_none_or(|l| l.username.is_empty() || l.username == a.name())),
        (None, Some(l)) => auth.authenticate(&l.username, &l.password).await,
        (None, None) => None,
    };
    let Some(access) = access else {
        wire.queue(refuse(ConnectReturnCode::BadUserNamePassword))?;
        wire.flush().await?;
        return Err(format!("client `{}` refused: bad user name or password", c.client_id));
    };
    if let Some(w) = &will
        && !access.may_publish(&String::from_utf8_lossy(&w.topic))
    {
        wire.queue(refuse(ConnectReturnCode::NotAuthorized))?;
        wire.flush().await?;
        return Err(format!("{}: will topic outside its own topics", access.name()));
    }
    // The router's client id starts with the authenticated identity, so one device cannot
    // take over another's session by reusing its client id.
    let router_id = access.session_id(&c.client_id);
    let (mut tx, mut rx, ack) = connect(&router_id, c.clean_session).map_err(|e| format!("router: {e}"))?;
    let ack = Option::<Packet>::from(ack);
    // A persistent session the router kept (`session_present`) keeps the device's
    // subscriptions: if it holds one, the device is reachable from now on without
    // subscribing again, as MQTT clients resuming a session do not (MQTT 3.1.1 §3.1.2.4).
    let resumed = matches!(&ack, Some(Packet::ConnAck(ConnAck { session_present: true, .. }, _)));
    if let Some(p) = ack {
        wire.queue(p)?;
    }
    wire.flush().await?;
    tracing::debug!(client = %router_id, resumed, "MQTT client connected");

    let keep_alive = match c.keep_alive {
        0 => Duration::from_secs(24 * 3600),
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    let owner = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let kick = live.register(&access, owner);
    let subscribed = held.open(&router_id, owner, resumed);
    if subscribed {
        auth.subscribed(&access);
    }
    let mut link = Link { id: router_id, owner, held, access: &access, auth: &auth, subscribed };
    let result = run(&mut wire, &mut tx, &mut rx, &mut link, keep_alive, kick.as_deref()).await;
    live.unregister(&access, owner);
    let clean_end = matches!(result, Ok(true));
    if !clean_end && let Some(w) = will {
        // A client that vanished without DISCONNECT leaves its will (checked above).
        publish_will(&mut tx, w);
    }
    // DISCONNECT ends the session in the router (rumqttd keeps a persistent one).
    let _ =
        tx.send(Packet::Disconnect(Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection }, None)).await;
    link.held.close(&link.id, link.owner, c.clean_session);
    if link.subscribed {
        auth.left(&access);
    }
    result.map(|_| ())
}

/// One connection's session, as presence sees it.
struct Link<'a> {
    /// The router's client id.
    id: String,
    /// This connection's number.
    owner: u64,
    held: Arc<Sessions>,
    access: &'a Access,
    auth: &'a Gate,
    /// This connection counts the device online: its session holds a subscription.
    subscribed: bool,
}

impl Link<'_> {
    /// The router took a SUBSCRIBE (`add`) or UNSUBSCRIBE: tell delivery when the device
    /// became reachable here, or stopped being.
    fn changed<'f>(&mut self, filters: impl Iterator<Item = &'f str>, add: bool) {
        let holds = self.held.change(&self.id, self.owner, filters, add);
        if holds && !self.subscribed {
            self.subscribed = true;
            self.auth.subscribed(self.access);
        } else if !holds && self.subscribed {
            self.subscribed = false;
            self.auth.left(self.access);
        }
    }
}

fn publish_will(tx: &mut LinkTx, w: LastWill) {
    let _ = tx.publish(w.topic, w.message);
}

/// Shuttle packets until the client leaves. `Ok(true)` when it sent DISCONNECT.
async fn run(
    wire: &mut Wire,
    tx: &mut LinkTx,
    rx: &mut LinkRx,
    link: &mut Link<'_>,
    keep_alive: Duration,
    kick: Option<&tokio::sync::Notify>,
) -> Result<bool, String> {
    let (access, auth) = (link.access, link.auth);
    let kicked = async {
        match kick {
            Some(k) => k.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(kicked);
    let revoked = async {
        if !matches!(access, Access::Admin { .. }) {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(ADMIN_RECHECK).await;
            if !auth.still_admitted(access).await {
                return;
            }
        }
    };
    tokio::pin!(revoked);
    loop {
        tokio::select! {
            () = &mut kicked => {
                // Its credentials were revoked or it was removed: the connection ends now.
                return Err(format!("{}: credentials revoked or device removed", access.name()));
            }
            () = &mut revoked => {
                return Err(format!("{}: revoked or expired", access.name()));
            }
            packet = tokio::time::timeout(keep_alive, wire.next()) => {
                let Some(packet) = packet.map_err(|_| "keep-alive expired")?? else {
                    return Ok(false);
                };
                match packet {
                    Packet::Disconnect(..) => return Ok(true),
                    Packet::Publish(mut p, _) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        if !access.may_publish(&topic) {
                            tracing::warn!(client = %access.name(), topic, "publish outside the client's topics: disconnected");
                            return Err(format!("publish to `{topic}` is not allowed"));
                        }
                        // A device's message is for Drover, now: none is kept for later
                        // subscribers. Retained messages would pile up without bound and
                        // outlive the device (reaching whoever enrolls its id next).
                        if matches!(access, Access::Device { .. }) {
                            p.retain = false;
                        }
                        tx.send(Packet::Publish(p, None)).await.map_err(|e| e.to_string())?;
                    }
                    Packet::Subscribe(s, props) => {
                        if let Some(f) = s.filters.iter().find(|f| !access.may_subscribe(&f.path)) {
                            tracing::warn!(client = %access.name(), filter = %f.path, "subscription outside the client's topics refused");
                            let codes = vec![SubscribeReasonCode::Failure; s.filters.len()];
                            wire.queue(Packet::SubAck(SubAck { pkid: s.pkid, return_codes: codes }, None))?;
                            wire.flush().await?;
                            continue;
                        }
                        let filters: Vec<String> = s.filters.iter().map(|f| f.path.clone()).collect();
                        tx.send(Packet::Subscribe(s, props)).await.map_err(|e| e.to_string())?;
                        link.changed(filters.iter().map(String::as_str), true);
                    }
                    Packet::Unsubscribe(u, props) => {
                        let filters = u.filters.clone();
                        tx.send(Packet::Unsubscribe(u, props)).await.map_err(|e| e.to_string())?;
                        link.changed(filters.iter().map(String::as_str), false);
                    }
                    Packet::Connect(..) => return Err("a second CONNECT".into()),
                    other => {
                        tx.send(other).await.map_err(|e| e.to_string())?;
                    }
                }
            }
            n = rx.next() => {
                match n.map_err(|e| format!("router: {e}"))? {
                    Some(Notification::Unschedule) => rx.wake().await.map_err(|e| e.to_string())?,
                    Some(Notification::Disconnect(..)) => return Err("disconnected by the broker".into()),
                    Some(n) => {
                        if let Some(p) = Option::<Packet>::from(n) {
                            wire.queue(p)?;
                        }
                        wire.flush().await?;
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sessions;

    #[test]
    fn a_session_holds_what_it_subscribed_across_connections() {
        let s = Sessions::default();
        // A persistent session that never subscribed holds nothing when resumed.
        assert!(!s.open("android:A:c", 1, false));
        s.close("android:A:c", 1, false);
        assert!(!s.open("android:A:c", 2, true));
        assert!(s.change("android:A:c", 2, ["drover/android/A/operations"].into_iter(), true));
        s.close("android:A:c", 2, false);
        assert!(s.open("android:A:c", 3, true), "resumed with its subscription");
        // A reconnect with the same id takes the session over; the old connection's late
        // changes and its close leave the new one's alone.
        assert!(s.open("android:A:c", 4, true));
        assert!(!s.change("android:A:c", 3, ["drover/android/A/operations"].into_iter(), false));
        s.close("android:A:c", 3, true);
        assert!(
            !s.change("android:A:c", 4, ["drover/android/A/operations"].into_iter(), false),
            "unsubscribed: holds nothing"
        );
        assert!(s.change("android:A:c", 4, ["drover/android/A/#"].into_iter(), true));
        // A clean session starts empty and leaves nothing behind.
        assert!(!s.open("android:A:c", 5, false));
        s.close("android:A:c", 5, true);
        assert!(!s.open("android:A:c", 6, true));
    }
}
