//! The event feed over MQTT (`--mqtt-events`): every event of the durable log published
//! at QoS 1 on `drover-events/{type}` (the body a webhook gets), for subscribers holding
//! an admin-API token (docs/events.md).
//!
//! The feed follows the log as a webhook does: from a cursor kept in the database
//! (`event_feeds`), in order, over settled events only, so a restart or a broker outage
//! resumes where the broker last acknowledged. A batch counts as published when the
//! broker has acknowledged every message of it; until then the cursor stays, and after a
//! failure the batch goes again on a fresh connection: at least once, as far as the
//! broker. What the broker does with a message nobody subscribes to (it drops it) is
//! MQTT's: subscribers that must not miss anything keep a persistent session, or read
//! the log (`GET /api/v1/events` resumes from any sequence number).
//!
//! One replica at a time publishes: it holds a lease on the feed's row, renewed while it
//! works; another takes over when the lease runs out.

use super::EVENTS_ROOT;
use super::delivery::Endpoint;
use crate::core::Core;
use crate::store::{EventQuery, now_ms};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::time::Duration;
use tokio::sync::watch;

/// The feed's name in `event_feeds`.
pub const FEED: &str = "mqtt";

/// How often the feed looks for new events (another replica may have written them).
const TICK: Duration = Duration::from_millis(250);

/// Events per batch: published together, acknowledged together, one cursor write.
const BATCH: i64 = 500;

/// A batch not acknowledged this soon goes again on a new connection.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a lease holds: a replica that dies holds the feed back at most this long.
/// Renewed when half of it has passed, so an idle feed writes its row every few seconds,
/// not every tick.
const LEASE: Duration = Duration::from_secs(15);

/// The topic an event of type `event_type` is published on.
pub fn topic(event_type: &str) -> String {
    format!("{EVENTS_ROOT}/{event_type}")
}

/// One connection to the broker, and what it has heard: how many publishes the broker
/// acknowledged, and whether it is connected now.
struct Link {
    client: AsyncClient,
    heard: watch::Receiver<(u64, bool)>,
    pump: tokio::task::JoinHandle<()>,
}

impl Link {
    fn open(endpoint: &Endpoint) -> Link {
        let options = endpoint.options(super::delivery::client_id("drover-events"));
        let (client, mut eventloop) = AsyncClient::new(options, 2 * BATCH as usize);
        eventloop.network_options.set_tcp_nodelay(true);
        let (tx, heard) = watch::channel((0, false));
        let pump = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => tx.send_modify(|h| h.1 = true),
                    Ok(Event::Incoming(Packet::PubAck(_))) => tx.send_modify(|h| h.0 += 1),
                    Ok(_) => {}
                    Err(e) => {
                        if tx.borrow().1 {
                            tracing::warn!("MQTT event feed lost the broker: {e}; reconnecting");
                        }
                        tx.send_modify(|h| h.1 = false);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Link { client, heard, pump }
    }

    fn connected(&self) -> bool {
        self.heard.borrow().1
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Publish the event log to the broker at `endpoint` until the server stops.
pub async fn run(core: Core, endpoint: Endpoint) {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source");
    let holder = hex::encode(b);
    // A feed turned on for the first time starts from now, not from a year of history.
    loop {
        let opened = match core.store.latest_event().await {
            Ok(latest) => core.store.open_feed(FEED, latest).await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "opening the MQTT event feed failed; trying again"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut link = Link::open(&endpoint);
    let mut lease = Lease { holder, until: 0, tried: 0, cursor: 0 };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !link.connected() {
            continue;
        }
        if let Err(e) = publish(&core, &mut lease, &mut link).await {
            tracing::warn!(error = %e, "MQTT event feed: a batch went unacknowledged; sending it again");
            // A new connection, so that no acknowledgement of the abandoned batch counts
            // for the next one.
            link = Link::open(&endpoint);
        }
    }
}

/// This replica's hold on the feed.
struct Lease {
    holder: String,
    /// Until when it holds (0: it does not).
    until: i64,
    /// When it last tried to take the feed.
    tried: i64,
    /// The feed's cursor, while it holds the feed (nobody else moves it then).
    cursor: i64,
}

impl Lease {
    /// Take or renew the lease; whether this replica holds the feed. A replica that does
    /// not tries again a few seconds later, not every tick.
    async fn hold(&mut self, core: &Core) -> Result<bool, crate::store::StoreError> {
        let now = now_ms();
        let lease_ms = LEASE.as_millis() as i64;
        if self.until == 0 && now - self.tried < lease_ms / 3 {
            return Ok(false);
        }
        self.tried = now;
        match core.store.lease_feed(FEED, &self.holder, now + lease_ms).await? {
            Some(cursor) => {
                self.until = now + lease_ms;
                self.cursor = cursor;
                Ok(true)
            }
            None => {
                self.until = 0;
                Ok(false)
            }
        }
    }

    /// Whether the lease should be renewed before the next batch.
    fn due(&self) -> bool {
        self.until - now_ms() < LEASE.as_millis() as i64 / 2
    }
}

/// Publish what has settled since the feed's cursor, batch after batch until caught up.
async fn publish(core: &Core, lease: &mut Lease, link: &mut Link) -> Result<(), String> {
    let store = &core.store;
    loop {
        if lease.due() && !lease.hold(core).await.map_err(|e| e.to_string())? {
            return Ok(());
        }
        let after = lease.cursor;
        let horizon = store.settled(after).await.map_err(|e| e.to_string())?;
        if horizon == after {
            return Ok(());
        }
        let q = EventQuery { up_to: Some(horizon), ..Default::default() };
        let events = store.events(&q, after, BATCH).await.map_err(|e| e.to_string())?;
        let want = link.heard.borrow().0 + events.len() as u64;
        for e in &events {
            link.client
                .publish(topic(&e.event_type), QoS::AtLeastOnce, false, crate::webhooks::body(e))
                .await
                .map_err(|e| e.to_string())?;
        }
        let acked = tokio::time::timeout(ACK_TIMEOUT, link.heard.wait_for(|(n, up)| *n >= want || !up))
            .await
            .map_err(|_| "the broker did not acknowledge in time".to_string())?
            .map_err(|_| "the connection's task ended".to_string())?
            .0;
        if acked < want {
            return Err("the connection dropped before the broker acknowledged".into());
        }
        let next = match events.last() {
            Some(last) if events.len() as i64 == BATCH => last.seq,
            _ => horizon,
        };
        if !store.advance_feed(FEED, &lease.holder, next).await.map_err(|e| e.to_string())? {
            // Another replica took the feed over (this one stalled past its lease).
            lease.until = 0;
            return Ok(());
        }
        lease.cursor = next;
    }
}
