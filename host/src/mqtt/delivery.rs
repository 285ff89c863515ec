//! Drover's own MQTT client: it takes devices' messages (through the same decode path as
//! polling) and pushes operations to devices that are online.
//!
//! A device is online from the moment it subscribes on the embedded broker, or says
//! `online` on its `status` topic (any broker), until it disconnects or says `offline`.
//! Operations for an online device are encoded by its plugin, published at QoS 1 and
//! marked IN_PROGRESS (`delivery:push`); for the others they stay PENDING. When a device
//! comes online its queue is sent, and so is whatever is IN_PROGRESS without an answer
//! (the last send may have been lost with a broker or server restart): delivery is at
//! least once, and results are idempotent.

use super::{Presence, parse_topic};
use crate::core::Core;
use crate::delivery::{
    MAX_BATCH, Queue, encode_queued, plugin_device, plugin_operations, queue_limit, receive_noting, still_queued,
};
use crate::plugins::types::{Channel, ChannelKind, MqttMessage, Outbound, Reply};
use crate::store::{DeviceKey, DeviceRow, QueuedOperation};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Device messages are handled in order per device, in parallel across devices: each
/// device hashes to one of this many queues, each handled in order. (MQTT keeps one
/// client's order; handling every message in its own task did not: a firmware update's
/// `done` could be overtaken by the `downloading` sent before it.)
const SHARDS: usize = 256;

/// Messages of one device waiting in the intake at most. Past it the device's further
/// messages are dropped (counted as refused). A queue is shared by many devices, and a
/// queue with a fixed length would make the pump wait on the one device that filled it,
/// and every other device with it; so the queues are unbounded and each device's share is
/// bounded instead. A burst of a few hundred (firmware progress reports) passes whole.
const DEVICE_BACKLOG: usize = 256;

/// Bytes of device messages waiting in the intake, all devices together. Past it the pump
/// waits, and so does the broker (back-pressure): the server as a whole is behind.
const INTAKE_BYTES: usize = 256 << 20;

/// Devices of one activity pushed at once.
const PUSH_PARALLEL: usize = 32;

/// What a push takes from the queue: nothing to send is no message at all.
const PUSH_QUEUE: Queue = Queue { skip_empty: true, skip_not_now: false };

/// Who delivered, as transitions record it.
const PUSH_ACTOR: &str = "delivery:push";

/// The subscription every replica shares: each device message goes to one of them.
pub const SHARED_FILTER: &str = "$share/drover/drover/+/+/#";

/// Where Drover's client connects.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    /// TLS to the broker, and what its certificate is checked against.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", if self.tls.is_some() { "mqtts" } else { "mqtt" }, self.host, self.port)
    }
}

impl Endpoint {
    /// From `mqtt://[user:password@]host:port` (also `tcp://`), or `mqtts://…` (also
    /// `ssl://`) with `tls` as its TLS configuration. Port 1883 by default, 8883 over TLS.
    pub fn parse(url: &str, tls: impl FnOnce() -> Option<Arc<rustls::ClientConfig>>) -> Option<Endpoint> {
        let (rest, secure) = match url.split_once("://")? {
            ("mqtt" | "tcp", rest) => (rest, false),
            ("mqtts" | "ssl", rest) => (rest, true),
            _ => return None,
        };
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hp)) => {
                let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((u.to_string(), p.to_string())), hp)
            }
            None => (None, rest),
        };
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (hostport, if secure { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return None;
        }
        let tls = if secure { Some(tls()?) } else { None };
        Some(Endpoint { host: host.to_string(), port, credentials, tls })
    }

    /// A client's options for this broker: address, credentials, TLS.
    pub fn options(&self, client_id: String) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((u, p)) = &self.credentials {
            options.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())));
        }
        options
    }
}

/// What the broker's gate tells delivery: who came online or left.
#[derive(Debug)]
pub enum Job {
    Presence(Presence),
}

/// A handle to push delivery, cheap to clone.
#[derive(Clone)]
pub struct Push {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Push {
    pub fn channel() -> (Push, mpsc::UnboundedReceiver<Job>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        (Push { jobs }, rx)
    }

    pub fn presence(&self, p: Presence) {
        let _ = self.jobs.send(Job::Presence(p));
    }
}

/// Where presence is kept, and so who pushes to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKept {
    /// The embedded broker: its sessions are this process's, and so is presence.
    InProcess,
    /// An external broker with any number of replicas on it: the shared subscription
    /// gives a device's `online` to one replica and its `offline` perhaps to another, and
    /// any replica may publish to any device. Presence is in the database
    /// (`push_presence`), so the replica that adds an activity pushes it to every online
    /// device, whichever replica heard it come online.
    Shared,
}

struct Delivery {
    state: Core,
    kept: PresenceKept,
    /// Whether this process's client is connected to the broker. Presence in the database
    /// outlives a lost connection (the other replicas may still have theirs), but what this
    /// one would publish meanwhile reaches nobody: it pushes nothing until it is back.
    connected: std::sync::atomic::AtomicBool,
    /// Where `status` topics tell presence (as the embedded broker's gate does).
    presence: Push,
    client: AsyncClient,
    /// Topic suffixes Drover publishes on. Its own shared subscription hears them too, and
    /// such echoes are not device messages.
    downstream: RwLock<HashSet<String>>,
    /// Messages waiting in the intake, by a hash of the device (`drover/{type}/{id}`): no
    /// allocation per message; two devices sharing a hash would only share a share.
    backlog: Mutex<HashMap<u64, usize>>,
}

/// Which device a message is from, as a number: its queue (`key % SHARDS`) and its share of
/// the intake are kept by it.
fn device_hash(device: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(device)
}

/// `drover/{type}/{id}` of a device topic: whose message it is.
fn device_of(topic: &str) -> &str {
    match topic.match_indices('/').nth(2) {
        Some((i, _)) => &topic[..i],
        None => topic,
    }
}

/// Connect Drover's client and run delivery until the server stops: presence from `jobs`
/// (and `status` topics, through `push`), new activities from `events` (subscribed by the
/// caller before the server takes requests, so none is missed).
pub async fn run(
    state: Core,
    endpoint: Endpoint,
    kept: PresenceKept,
    push: Push,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut events: tokio::sync::broadcast::Receiver<crate::events::Event>,
) {
    let (client, mut eventloop) = AsyncClient::new(endpoint.options(client_id("drover")), 1024);
    // Small packets (publishes, acks) go out at once: with Nagle's algorithm each one
    // waits for the previous one's TCP acknowledgement.
    eventloop.network_options.set_tcp_nodelay(true);
    let delivery = Arc::new(Delivery {
        state,
        kept,
        connected: std::sync::atomic::AtomicBool::new(false),
        presence: push,
        client,
        downstream: RwLock::new(HashSet::new()),
        backlog: Mutex::new(HashMap::new()),
    });
    let pump = tokio::spawn(pump(delivery.clone(), eventloop, endpoint));
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            event = crate::events::next(&mut events, "mqtt push") => match event {
                // An activity was stored: push it to those of its devices that are online.
                Some(crate::events::Event::ActivityAdded { activity, .. }) => {
                    tokio::spawn(delivery.clone().push_activity(activity));
                    continue;
                }
                Some(_) => continue,
                None => None,
            },
        };
        let Some(job) = job else { break };
        let d = delivery.clone();
        match job {
            Job::Presence(p) => {
                let came = {
                    let mut online = d.state.stats.online_devices.lock().unwrap_or_else(|p| p.into_inner());
                    let came = match p {
                        Presence::Subscribed { device_type, device_id } => {
                            *online.entry((device_type.clone(), device_id.clone())).or_default() += 1;
                            Some((device_type, device_id))
                        }
                        Presence::Online { device_type, device_id } => {
                            online.entry((device_type.clone(), device_id.clone())).or_default();
                            Some((device_type, device_id))
                        }
                        Presence::Left { device_type, device_id } => {
                            let key = (device_type, device_id);
                            if let Some(n) = online.get_mut(&key) {
                                *n = n.saturating_sub(1);
                                if *n == 0 {
                                    online.remove(&key);
                                }
                            }
                            None
                        }
                        Presence::Offline { device_type, device_id } => {
                            online.remove(&(device_type, device_id));
                            None
                        }
                    };
                    d.state.stats.online.store(online.len() as i64, std::sync::atomic::Ordering::Relaxed);
                    came
                };
                if let Some((device_type, device_id)) = came {
                    tokio::spawn(async move { d.device_online(&device_type, &device_id).await });
                }
            }
        }
    }
    pump.abort();
}

/// A client id of our own on an external broker: `prefix` and 12 random hex digits, so
/// that replicas (and the event feed beside delivery) never take each other's session.
pub(super) fn client_id(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the OS random source");
    format!("{prefix}-{}", hex::encode(b))
}

/// Drive the client: (re)subscribe on every connection, hand device messages to
/// handlers. Reconnects by itself after errors, with a pause.
async fn pump(d: Arc<Delivery>, mut eventloop: EventLoop, endpoint: Endpoint) {
    // The queues end with this task: dropping the senders closes them.
    type Waiting = (u64, String, bytes::Bytes, tokio::sync::OwnedSemaphorePermit);
    // Counted in KiB, so a permit count stays small.
    let budget = Arc::new(tokio::sync::Semaphore::new(INTAKE_BYTES >> 10));
    let shards: Vec<mpsc::UnboundedSender<Waiting>> = (0..SHARDS)
        .map(|_| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Waiting>();
            let d = d.clone();
            tokio::spawn(async move {
                while let Some((device, topic, payload, permit)) = rx.recv().await {
                    d.device_message(&topic, &payload).await;
                    d.taken(device);
                    drop(permit);
                }
            });
            tx
        })
        .collect();
    let mut connected = false;
    let mut tls_said: Option<String> = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(broker = %format!("{}:{}", endpoint.host, endpoint.port), "MQTT delivery connected");
                connected = true;
                d.connected.store(true, std::sync::atomic::Ordering::Relaxed);
                // try_: the eventloop drives the request queue, so awaiting here would stall it.
                if let Err(e) = d.client.try_subscribe(SHARED_FILTER, QoS::AtLeastOnce) {
                    tracing::error!("cannot subscribe to device topics: {e}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(device) = d.admit(&p.topic) else { continue };
                let kib = u32::try_from(p.payload.len() >> 10).unwrap_or(u32::MAX).max(1);
                let Ok(permit) = budget.clone().acquire_many_owned(kib).await else { return };
                let shard = (device % SHARDS as u64) as usize;
                if shards[shard].send((device, p.topic, p.payload, permit)).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                d.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                if connected {
                    tracing::warn!("MQTT delivery lost the broker: {e}; reconnecting");
                    // Whoever was online is cut off too (on the embedded broker: gone with it)
                    // and announces itself again after reconnecting. Until then operations
                    // stay PENDING instead of being handed to a client that cannot send them.
                    d.state.stats.online_devices.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    d.state.stats.online.store(0, std::sync::atomic::Ordering::Relaxed);
                } else if matches!(e, rumqttc::ConnectionError::Tls(_)) {
                    // Not a broker still starting: a certificate or TLS setting is wrong,
                    // which an operator must see (once per distinct error, not twice a second).
                    let said = e.to_string();
                    if tls_said.as_deref() != Some(said.as_str()) {
                        tracing::warn!(broker = ?endpoint, "MQTT delivery cannot reach the broker: {said}");
                        tls_said = Some(said);
                    }
                } else {
                    tracing::debug!("MQTT delivery cannot reach the broker yet: {e}");
                }
                connected = false;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

impl Delivery {
    /// Count a device's message into the intake, unless it has [`DEVICE_BACKLOG`] waiting.
    /// Echoes of Drover's own publishes are not device messages: never admitted. The
    /// device's hash when admitted.
    fn admit(&self, topic: &str) -> Option<u64> {
        let device = device_of(topic);
        let suffix = topic.get(device.len() + 1..).unwrap_or_default();
        if self.downstream.read().unwrap_or_else(|p| p.into_inner()).contains(suffix) {
            return None;
        }
        let key = device_hash(device);
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        let n = backlog.entry(key).or_default();
        if *n >= DEVICE_BACKLOG {
            drop(backlog);
            self.state.stats.message(ChannelKind::Mqtt, true);
            tracing::debug!(topic, "device sends faster than it is served: message dropped");
            return None;
        }
        *n += 1;
        Some(key)
    }

    /// A message of device `key` left the intake.
    fn taken(&self, key: u64) {
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = backlog.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                backlog.remove(&key);
            }
        }
    }

    /// Whether the device is still online, as `push_activity` found it. In the database
    /// that was the read just made, so only this process's presence is asked again.
    fn still_online(&self, d: &DeviceRow) -> bool {
        match self.kept {
            PresenceKept::InProcess => self
                .state
                .stats
                .online_devices
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&(d.device_type.clone(), d.device_id.clone())),
            PresenceKept::Shared => true,
        }
    }

    async fn device_message(&self, topic: &str, payload: &[u8]) {
        let Some((device_type, device_id, suffix)) = parse_topic(topic) else { return };
        if suffix == "status" {
            let online = match payload {
                b"online" => true,
                b"offline" => false,
                _ => return,
            };
            // Shared presence is written here, in the device's own queue: in the order the
            // device said it, before anything is pushed for it, and a device that says it
            // over and over slows its own queue only, not everyone's presence.
            if self.kept == PresenceKept::Shared
                && let Err(e) = self.state.store.set_push_presence(device_type, device_id, online).await
            {
                tracing::warn!(device_id, "recording push presence failed: {e}");
            }
            let (device_type, device_id) = (device_type.to_string(), device_id.to_string());
            self.presence.presence(if online {
                Presence::Online { device_type, device_id }
            } else {
                Presence::Offline { device_type, device_id }
            });
            return;
        }
        if self.downstream.read().unwrap_or_else(|p| p.into_inner()).contains(suffix) {
            return;
        }
        let plugin = match self.state.device_type(device_type) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(topic, "MQTT message dropped: {}", e.message);
                return;
            }
        };
        // The device and its queue in one read, as a poll does (http/agent.rs).
        let limit = queue_limit(&plugin);
        let Ok(Some((device, queue))) =
            self.state.store.device_and_queue(DeviceKey::Name(device_type, device_id), limit).await
        else {
            tracing::debug!(topic, "MQTT message for an unknown device: dropped");
            return;
        };
        if device.status == crate::device::Status::Removed {
            return;
        }
        let channel = Channel::Mqtt(MqttMessage { topic_suffix: suffix.to_string() });
        let (message, queue_changed) = match receive_noting(&self.state, &plugin, &device, channel, payload).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(topic, code = e.code, "device message refused: {}", e.message);
                return;
            }
        };
        let result = match message.reply {
            Reply::None => Ok(()),
            Reply::Immediate(out) => self.publish(&device, out).await,
            Reply::PendingOperations => {
                let read = still_queued(queue, limit, queue_changed, PUSH_QUEUE, limit);
                self.push_queue(&device, read).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(topic, "answering a device over MQTT failed: {e}");
        }
    }

    async fn push_activity(self: Arc<Self>, activity: i64) {
        if !self.connected.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let devices: Vec<i64> = match self.kept {
            PresenceKept::InProcess => {
                if self.state.stats.online_devices.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                    return;
                }
                let devices = match self.state.store.activity_queued_devices(activity).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(activity, "push: cannot read the activity's devices: {e}");
                        return;
                    }
                };
                // Only the online ones are read further: an activity for a large fleet of
                // which a few are connected costs one read per connected device, not per device.
                let online = self.state.stats.online_devices.lock().unwrap_or_else(|p| p.into_inner());
                devices
                    .into_iter()
                    .filter(|(_, t, i)| online.contains_key(&(t.clone(), i.clone())))
                    .map(|(k, ..)| k)
                    .collect()
            }
            // The join is the database's: the fleet's presence, whichever replica heard it.
            PresenceKept::Shared => match self.state.store.activity_online_devices(activity).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(activity, "push: cannot read the activity's online devices: {e}");
                    return;
                }
            },
        };
        // Devices in parallel (each is a few queries and a plugin call), a bounded number
        // at once so one large activity does not starve device messages.
        let mut running = tokio::task::JoinSet::new();
        for key in devices {
            if running.len() >= PUSH_PARALLEL {
                running.join_next().await;
            }
            let d = self.clone();
            running.spawn(async move {
                // The device and its queue in one read. Its plugin (and so how many
                // operations one message may carry) is known only from the device, so
                // read as many as any plugin may take; `still_queued` cuts it down.
                let Ok(Some((device, queue))) = d.state.store.device_and_queue(DeviceKey::Key(key), MAX_BATCH).await
                else {
                    return;
                };
                let limit = d.state.registry.device_type(&device.device_type).map_or(MAX_BATCH, |p| queue_limit(&p));
                let read = still_queued(queue, MAX_BATCH, false, PUSH_QUEUE, limit);
                if d.still_online(&device)
                    && let Err(e) = d.push_queue(&device, read).await
                {
                    tracing::warn!(device_id = %device.device_id, "push failed: {e}");
                }
            });
        }
        while running.join_next().await.is_some() {}
    }

    /// A device came (back) online: re-send what it has not answered, then its queue.
    async fn device_online(&self, device_type: &str, device_id: &str) {
        let Ok(Some(device)) = self.state.store.device(device_type, device_id).await else { return };
        if let Err(e) = self.resend_in_progress(&device).await {
            tracing::warn!(device_id, "re-sending unanswered operations failed: {e}");
        }
        if let Err(e) = self.push_queue(&device, None).await {
            tracing::warn!(device_id, "push failed: {e}");
        }
    }

    async fn resend_in_progress(&self, device: &DeviceRow) -> Result<(), String> {
        let ops = self.state.store.in_progress(device.id, MAX_BATCH).await.map_err(|e| e.to_string())?;
        if ops.is_empty() {
            return Ok(());
        }
        let plugin = self.state.registry.device_type(&device.device_type).ok_or("no plugin")?;
        let encoded = plugin
            .encode(
                crate::plugins::Source::Device(device.id),
                plugin_device(device),
                plugin_operations(&ops),
                ChannelKind::Mqtt,
            )
            .await
            .map_err(|e| e.to_string())?;
        self.publish(device, encoded.output).await
    }

    /// Push the device's queue (`read`, when the caller has read it already).
    async fn push_queue(&self, device: &DeviceRow, read: Option<Vec<QueuedOperation>>) -> Result<(), String> {
        let plugin = self.state.registry.device_type(&device.device_type).ok_or("no plugin")?;
        let out = encode_queued(&self.state, &plugin, device, ChannelKind::Mqtt, PUSH_ACTOR, PUSH_QUEUE, read)
            .await
            .map_err(|e| e.message)?;
        match out {
            Some(out) => self.publish(device, out).await,
            None => Ok(()),
        }
    }

    async fn publish(&self, device: &DeviceRow, out: Outbound) -> Result<(), String> {
        let Outbound::Mqtt(messages) = out else {
            return Err("the plugin answered an MQTT message with a non-MQTT one".into());
        };
        for m in messages {
            if m.topic_suffix.is_empty() || m.topic_suffix.contains(['+', '#']) {
                return Err(format!("the plugin chose an invalid topic suffix `{}`", m.topic_suffix));
            }
            {
                let known = self.downstream.read().unwrap_or_else(|p| p.into_inner()).contains(&m.topic_suffix);
                if !known {
                    self.downstream.write().unwrap_or_else(|p| p.into_inner()).insert(m.topic_suffix.clone());
                }
            }
            let topic = format!("{}{}", super::device_prefix(&device.device_type, &device.device_id), m.topic_suffix);
            self.client.publish(topic, QoS::AtLeastOnce, false, m.payload).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, device_of};

    #[test]
    fn a_message_belongs_to_the_device_of_its_topic() {
        assert_eq!(device_of("drover/android/A1/reply"), "drover/android/A1");
        assert_eq!(device_of("drover/android/A1/telemetry/x"), "drover/android/A1");
        assert_eq!(device_of("drover/android"), "drover/android");
    }

    #[test]
    fn broker_urls() {
        let parse = |u| Endpoint::parse(u, || crate::tls::broker_client(None).ok());
        let e = parse("mqtt://127.0.0.1:1883").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.credentials, e.tls.is_some()), ("127.0.0.1", 1883, None, false));
        let e = parse("mqtt://svc:s3cret@broker.example:8883").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("broker.example", 8883));
        assert_eq!(e.credentials, Some(("svc".into(), "s3cret".into())));
        assert_eq!(parse("mqtt://broker").unwrap().port, 1883);
        let e = parse("mqtts://broker").unwrap();
        assert_eq!((e.port, e.tls.is_some()), (8883, true));
        assert!(parse("ssl://broker:9883").unwrap().tls.is_some());
        assert!(Endpoint::parse("mqtts://broker", || None).is_none());
        assert!(parse("http://broker:1883").is_none());
        assert!(parse("mqtt://:1883").is_none());
        assert!(parse("mqtt://h:notaport").is_none());
    }
}
