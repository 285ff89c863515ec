//! Delivery counts since the process started, shared by the parts that deliver and read
//! by `/metrics` (`http/metrics.rs`): device messages received and refused and operations
//! sent, by channel; wake-up attempts by transport and outcome; devices online for push
//! (and which they are).

use crate::plugins::types::ChannelKind;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The channels, as label values, in the order of the counters' arrays.
pub const CHANNELS: [&str; 3] = ["http", "mqtt", "coap"];

/// Delivery counts, shared by the server's parts that deliver.
#[derive(Default)]
pub struct DeliveryStats {
    messages: [AtomicU64; 3],
    refused: [AtomicU64; 3],
    sent: [AtomicU64; 3],
    /// Wake-up attempts by (transport, outcome).
    wakeups: std::sync::Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Devices online for push now.
    pub online: std::sync::atomic::AtomicI64,
    /// Those devices, (type, id), and how many subscribed sessions each holds (0: it said
    /// `online` on its status topic): kept by MQTT delivery (`mqtt/delivery.rs`), read by
    /// the unreachable sweep (a connected device is seen, `server.rs`).
    pub online_devices: std::sync::Mutex<std::collections::HashMap<(String, String), u32>>,
}

fn channel_index(kind: ChannelKind) -> usize {
    match kind {
        ChannelKind::Http => 0,
        ChannelKind::Mqtt => 1,
        ChannelKind::Coap => 2,
    }
}

impl DeliveryStats {
    /// A device message came in over `kind`; `refused`: its plugin could not decode it, or
    /// it was over a limit.
    pub fn message(&self, kind: ChannelKind, refused: bool) {
        self.messages[channel_index(kind)].fetch_add(1, Relaxed);
        if refused {
            self.refused[channel_index(kind)].fetch_add(1, Relaxed);
        }
    }

    /// `n` operations were handed to a device over `kind` (marked IN_PROGRESS).
    pub fn sent(&self, kind: ChannelKind, n: usize) {
        self.sent[channel_index(kind)].fetch_add(n as u64, Relaxed);
    }

    /// A wake-up attempt through `transport` ended in `outcome`.
    pub fn wakeup(&self, transport: &str, outcome: &'static str) {
        *self.wakeups.lock().unwrap_or_else(|p| p.into_inner()).entry((transport.to_string(), outcome)).or_default() +=
            1;
    }

    /// Device messages received, by channel (in the order of [`CHANNELS`]).
    pub fn messages_by_channel(&self) -> [u64; 3] {
        self.messages.each_ref().map(|c| c.load(Relaxed))
    }

    /// Device messages refused, by channel.
    pub fn refused_by_channel(&self) -> [u64; 3] {
        self.refused.each_ref().map(|c| c.load(Relaxed))
    }

    /// Operations sent, by channel.
    pub fn sent_by_channel(&self) -> [u64; 3] {
        self.sent.each_ref().map(|c| c.load(Relaxed))
    }

    /// Wake-up attempts by (transport, outcome).
    pub fn wakeups(&self) -> BTreeMap<(String, &'static str), u64> {
        self.wakeups.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl std::fmt::Debug for DeliveryStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveryStats")
    }
}
