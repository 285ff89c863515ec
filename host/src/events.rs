//! Domain events: what happened, told to whoever listens, so that a service never calls a
//! front by name. A front that must react (the embedded broker ends a revoked device's
//! connections, CoAP forgets a removed device's registration) subscribes.
//!
//! In-process and best effort: a listener that falls more than [`CAPACITY`] events behind
//! misses the oldest (and logs it). The durable event log with webhooks is issue 24; these
//! events are what it will record.

use tokio::sync::broadcast;

/// Events kept for a slow listener.
pub const CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Every credential of a device was revoked (a lost or stolen device). It stays
    /// enrolled; its live sessions must end.
    CredentialsRevoked { device: i64, device_type: String, device_id: String },
    /// A device left management: removed by an admin, or it checked out. Its sessions end
    /// and nothing of them may pass to whoever enrolls its id next.
    DeviceRemoved { device: i64, device_type: String, device_id: String },
}

impl Event {
    /// `(device type, device id)` of the device the event is about.
    pub fn device(&self) -> (&str, &str) {
        match self {
            Event::CredentialsRevoked { device_type, device_id, .. }
            | Event::DeviceRemoved { device_type, device_id, .. } => (device_type, device_id),
        }
    }
}

/// The bus: cheap to clone, one per server.
#[derive(Clone)]
pub struct Events(broadcast::Sender<Event>);

impl Default for Events {
    fn default() -> Self {
        Events(broadcast::channel(CAPACITY).0)
    }
}

impl Events {
    pub fn publish(&self, event: Event) {
        tracing::debug!(?event, "event");
        // No listener is not an error: a server without a broker has nobody to tell.
        let _ = self.0.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}

/// Receive the next event, logging (and skipping past) any a slow listener missed.
pub async fn next(rx: &mut broadcast::Receiver<Event>, listener: &str) -> Option<Event> {
    loop {
        match rx.recv().await {
            Ok(e) => return Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(listener, missed = n, "event listener fell behind: events missed");
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}
