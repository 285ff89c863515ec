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
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest MQTT packet accepted from a client.
const MAX_PACKET: usize = 1 << 20;

/// A client must send CONNECT this soon after opening the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a session in the router: `(router client id, clean session)`. A closure, because
/// rumqttd does not export the type of the router's event channel.
type Connector = Arc<dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync>;

/// A running embedded broker.
pub struct EmbeddedBroker {
    connect: Connector,
}

impl EmbeddedBroker {
    /// Start the router (on its own thread, as rumqttd does).
    pub fn start(max_connections: usize) -> EmbeddedBroker {
        let config = RouterConfig {
            max_connections,
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
        EmbeddedBroker { connect }
    }

    /// Accept MQTT clients on `listener` until the task is dropped, which also ends
    /// every connection (they live in a set owned by this task).
    pub async fn serve(self, listener: TcpListener, auth: Arc<Gate>) {
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            // Reap finished sessions so the set does not grow with every connection.
            while sessions.try_join_next().is_some() {}
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!("MQTT accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let connect = self.connect.clone();
            let auth = auth.clone();
            sessions.spawn(async move {
                if let Err(e) = session(stream, connect, auth).await {
                    tracing::debug!(%peer, "MQTT connection ended: {e}");
                }
            });
        }
    }
}

/// One client connection's packet reader and writer.
struct Wire {
    stream: TcpStream,
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

async fn session(stream: TcpStream, connect: Connector, auth: Arc<Gate>) -> Result<(), String> {
    let mut wire = Wire { stream, read: BytesMut::with_capacity(1024), write: BytesMut::with_capacity(1024) };
    let first = tokio::time::timeout(CONNECT_TIMEOUT, wire.next()).await.map_err(|_| "no CONNECT in time")??;
    let Some(Packet::Connect(c, _, will, _, login)) = first else {
        return Err("the first packet was not CONNECT".into());
    };
    let access = match &login {
        Some(l) => auth.authenticate(&l.username, &l.password).await,
        None => None,
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
    // A persistent session the router kept (`session_present`) holds the device's
    // subscriptions: it is reachable from now on without subscribing again, as MQTT
    // clients resuming a session do not (MQTT 3.1.1 §3.1.2.4).
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
    let mut subscribed = resumed;
    if resumed {
        auth.subscribed(&access);
    }
    let result = run(&mut wire, &mut tx, &mut rx, &access, &auth, keep_alive, &mut subscribed).await;
    let clean_end = matches!(result, Ok(true));
    if !clean_end && let Some(w) = will {
        // A client that vanished without DISCONNECT leaves its will (checked above).
        publish_will(&mut tx, w);
    }
    // DISCONNECT ends the session in the router (rumqttd keeps a persistent one).
    let _ =
        tx.send(Packet::Disconnect(Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection }, None)).await;
    if subscribed {
        auth.left(&access);
    }
    result.map(|_| ())
}

fn publish_will(tx: &mut LinkTx, w: LastWill) {
    let _ = tx.publish(w.topic, w.message);
}

/// Shuttle packets until the client leaves. `Ok(true)` when it sent DISCONNECT.
async fn run(
    wire: &mut Wire,
    tx: &mut LinkTx,
    rx: &mut LinkRx,
    access: &Access,
    auth: &Gate,
    keep_alive: Duration,
    subscribed: &mut bool,
) -> Result<bool, String> {
    loop {
        tokio::select! {
            packet = tokio::time::timeout(keep_alive, wire.next()) => {
                let Some(packet) = packet.map_err(|_| "keep-alive expired")?? else {
                    return Ok(false);
                };
                match packet {
                    Packet::Disconnect(..) => return Ok(true),
                    Packet::Publish(p, _) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        if !access.may_publish(&topic) {
                            tracing::warn!(client = %access.name(), topic, "publish outside the client's topics: disconnected");
                            return Err(format!("publish to `{topic}` is not allowed"));
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
                        tx.send(Packet::Subscribe(s, props)).await.map_err(|e| e.to_string())?;
                        if !*subscribed {
                            *subscribed = true;
                            auth.subscribed(access);
                        }
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
