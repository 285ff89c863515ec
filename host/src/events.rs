//! Domain events: what happened, told to whoever listens, so that a service never calls a
//! front by name. A front that must react (the embedded broker ends a revoked device's
//! connections, CoAP forgets a removed device's registration) subscribes.
//!
//! Services publish; fronts and later features (policies, rollouts, webhooks) listen.
//!
//! In-process and best effort: a listener that falls more than [`CAPACITY`] events behind
//! misses the oldest (and logs it). The durable event log with webhooks is issue 24; these
//! events are what it will record.

use tokio::sync::broadcast;

/// Events kept for a slow listener.
pub const CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An activity and its operations were stored (one per targeted device).
    ActivityAdded { activity: i64, code: String, operations: u64, actor: String },
    /// Unfinished operations were cancelled: one (`operation`), an activity's, or a
    /// device's (at its removal).
    OperationsCancelled {
        operation: Option<i64>,
        activity: Option<i64>,
        device: Option<i64>,
        count: u64,
        actor: String,
    },
    /// An operation moved from one state to another (delivered, reported on, failed).
    /// `from` is absent where the store does not say (a delivery: PENDING or NOTNOW).
    OperationChanged {
        operation: i64,
        device: i64,
        from: Option<crate::ops::State>,
        to: crate::ops::State,
        actor: String,
    },
    /// A device enrolled (or claimed its pre-registered identity).
    DeviceEnrolled { device: i64, device_type: String, device_id: String, channel: &'static str },
    /// A device called in (told at most once per `store::LAST_SEEN_RESOLUTION_MS`).
    DeviceSeen { device: i64 },
    /// A device's status changed other than by enrollment or removal: unreachable after
    /// silence, active again, registered again by a restore.
    DeviceStatusChanged { device: i64, device_type: String, device_id: String, status: crate::device::Status },
    /// Every credential of a device was revoked (a lost or stolen device). It stays
    /// enrolled; its live sessions must end.
    CredentialsRevoked { device: i64, device_type: String, device_id: String },
    /// A device left management: removed by an admin, or it checked out. Its sessions end
    /// and nothing of them may pass to whoever enrolls its id next.
    DeviceRemoved { device: i64, device_type: String, device_id: String },
    /// An admin gave a device a pre-shared key for LwM2M over DTLS (replacing and revoking
    /// the one it had): its sessions on the old key end.
    PskProvisioned { device: i64, device_type: String, device_id: String, identity: String, actor: String },
    /// A plugin's catalog changed, on this replica or another: `change` is `install`
    /// (published), `rollback`, `auto-rollback`, `suspend`, `enable` or `regrant`.
    PluginChanged { plugin: String, change: String, version: Option<String>, actor: String },
}

impl Event {
    /// Whether this event comes per operation or per device message (its own channel).
    pub fn is_frequent(&self) -> bool {
        matches!(self, Event::OperationChanged { .. } | Event::DeviceSeen { .. })
    }

    /// `(device type, device id)` of the device the event names, for those that name one.
    pub fn device(&self) -> Option<(&str, &str)> {
        match self {
            Event::CredentialsRevoked { device_type, device_id, .. }
            | Event::DeviceRemoved { device_type, device_id, .. }
            | Event::DeviceEnrolled { device_type, device_id, .. }
            | Event::DeviceStatusChanged { device_type, device_id, .. }
            | Event::PskProvisioned { device_type, device_id, .. } => Some((device_type, device_id)),
            _ => None,
        }
    }
}

impl Event {
    /// The event's type in the durable log and on the wire (docs/events.md).
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::ActivityAdded { .. } => "activity.added",
            Event::OperationsCancelled { .. } => "operations.cancelled",
            Event::OperationChanged { .. } => "operation.changed",
            Event::DeviceEnrolled { .. } => "device.enrolled",
            Event::DeviceSeen { .. } => "device.seen",
            Event::DeviceStatusChanged { .. } => "device.status_changed",
            Event::CredentialsRevoked { .. } => "device.credentials_revoked",
            Event::DeviceRemoved { .. } => "device.removed",
            Event::PskProvisioned { .. } => "device.psk_provisioned",
            Event::PluginChanged { .. } => "plugin.changed",
        }
    }

    /// The event as a row of the durable log: its type, who acted, what it is about (a
    /// path-like name), and its fields as JSON. The store writes it in the transaction of
    /// the change it reports.
    pub fn record(&self) -> crate::store::NewEvent {
        use serde_json::json;
        let device_target = |t: &str, id: &str| format!("device/{t}/{id}");
        let (actor, target, data) = match self {
            Event::ActivityAdded { activity, code, operations, actor } => (
                Some(actor.clone()),
                format!("activity/{activity}"),
                json!({ "activity": activity, "code": code, "operations": operations }),
            ),
            Event::OperationsCancelled { operation, activity, device, count, actor } => (
                Some(actor.clone()),
                match (operation, activity, device) {
                    (Some(o), _, _) => format!("operation/{o}"),
                    (None, Some(a), _) => format!("activity/{a}"),
                    (None, None, Some(d)) => format!("device/{d}"),
                    _ => String::new(),
                },
                json!({ "operation": operation, "activity": activity, "device": device, "count": count }),
            ),
            Event::OperationChanged { operation, device, from, to, actor } => (
                Some(actor.clone()),
                format!("operation/{operation}"),
                json!({ "operation": operation, "device": device, "from": from.map(|s| s.as_str()), "to": to.as_str() }),
            ),
            Event::DeviceEnrolled { device, device_type, device_id, channel } => (
                None,
                device_target(device_type, device_id),
                json!({ "device": device, "type": device_type, "id": device_id, "channel": channel }),
            ),
            Event::DeviceSeen { device } => (None, format!("device/{device}"), json!({ "device": device })),
            Event::DeviceStatusChanged { device, device_type, device_id, status } => (
                None,
                device_target(device_type, device_id),
                json!({ "device": device, "type": device_type, "id": device_id, "status": status.as_str() }),
            ),
            Event::CredentialsRevoked { device, device_type, device_id }
            | Event::DeviceRemoved { device, device_type, device_id } => (
                None,
                device_target(device_type, device_id),
                json!({ "device": device, "type": device_type, "id": device_id }),
            ),
            Event::PskProvisioned { device, device_type, device_id, identity, actor } => (
                Some(actor.clone()),
                device_target(device_type, device_id),
                json!({ "device": device, "type": device_type, "id": device_id, "identity": identity }),
            ),
            Event::PluginChanged { plugin, change, version, actor } => (
                Some(actor.clone()),
                format!("plugin/{plugin}"),
                json!({ "plugin": plugin, "change": change, "version": version }),
            ),
        };
        let device = match self {
            Event::OperationChanged { device, .. }
            | Event::DeviceEnrolled { device, .. }
            | Event::DeviceSeen { device }
            | Event::DeviceStatusChanged { device, .. }
            | Event::CredentialsRevoked { device, .. }
            | Event::DeviceRemoved { device, .. }
            | Event::PskProvisioned { device, .. } => Some(*device),
            Event::OperationsCancelled { device, .. } => *device,
            Event::ActivityAdded { .. } | Event::PluginChanged { .. } => None,
        };
        crate::store::NewEvent {
            event_type: self.type_name().into(),
            actor,
            target: Some(target),
            data: Some(data.to_string()),
            device,
            ..Default::default()
        }
    }
}

/// The bus: cheap to clone, one per server. Two channels: the events of things that
/// happen now and then (activities, enrollments, removals, plugin changes), which the
/// fronts follow, and the frequent ones (`OperationChanged` per delivered or reported
/// operation, `DeviceSeen`), which only a listener that needs them subscribes to. A front
/// that wakes for every operation it ignores costs the push path a tenth of its
/// throughput (docs/BENCHMARKS.md, issue 22); a frequent event nobody listens to is never
/// even built.
#[derive(Clone)]
pub struct Events {
    main: broadcast::Sender<Event>,
    frequent: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events { main: broadcast::channel(CAPACITY).0, frequent: broadcast::channel(CAPACITY).0 }
    }
}

impl Events {
    /// Tell `event` to the listeners of its channel.
    pub fn publish(&self, event: Event) {
        tracing::debug!(?event, "event");
        let channel = if event.is_frequent() { &self.frequent } else { &self.main };
        // No listener is not an error: a server without a broker has nobody to tell.
        let _ = channel.send(event);
    }

    /// Publish the frequent event `event` builds, if anyone listens to frequent events
    /// (the hot path builds nothing for nobody).
    pub fn publish_frequent(&self, event: impl FnOnce() -> Event) {
        if self.frequent.receiver_count() > 0 {
            self.publish(event());
        }
    }

    /// The events that happen now and then (all but the frequent ones).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.main.subscribe()
    }

    /// The frequent events: `OperationChanged`, `DeviceSeen`.
    pub fn subscribe_frequent(&self) -> broadcast::Receiver<Event> {
        self.frequent.subscribe()
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
