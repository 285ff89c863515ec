//! Push over MQTT. See docs/delivery.md.
//!
//! Every device owns the topics under `drover/{type}/{device-id}/`: it publishes its
//! messages there (the suffix, e.g. `reply`, tells the plugin what they are; `status` is
//! the host's: `online` / `offline`) and subscribes there for what Drover sends it (the
//! suffix its plugin chose, e.g. `operations`). Drover itself is one more client, with a
//! shared subscription so that several replicas split the devices' messages.
//!
//! Two brokers: the embedded one ([`broker`]: rumqttd's router behind our own front,
//! which authenticates devices with their credential and enforces the topic rule), or an
//! external one (`--broker mqtt://…`), whose own ACLs must enforce it.
//!
//! With `--mqtt-events`, the event log is also published under [`EVENTS_ROOT`] ([`feed`]),
//! which only admin-API tokens may read (user name [`ADMIN_USER`]) and nobody but Drover
//! may write.

pub mod broker;
pub mod delivery;
pub mod feed;

use crate::store::Store;
use delivery::Push;

/// The first topic level of everything Drover does over MQTT.
pub const ROOT: &str = "drover";

/// The user name Drover's own client uses on the embedded broker.
pub const SERVICE_USER: &str = "drover";

/// The user name an admin-API token connects with to read the event topics.
pub const ADMIN_USER: &str = "admin";

/// The first topic level of the event feed: `drover-events/{event type}`. Not under
/// [`ROOT`], so Drover's own subscription to device topics never hears it.
pub const EVENTS_ROOT: &str = "drover-events";

/// `drover/{type}/{id}/`: a device's own topics.
pub fn device_prefix(device_type: &str, device_id: &str) -> String {
    format!("{ROOT}/{device_type}/{device_id}/")
}

/// Split `drover/{type}/{id}/{suffix}`.
pub fn parse_topic(topic: &str) -> Option<(&str, &str, &str)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (device_type, rest) = rest.split_once('/')?;
    let (device_id, suffix) = rest.split_once('/')?;
    (!device_type.is_empty() && !device_id.is_empty() && !suffix.is_empty()).then_some((device_type, device_id, suffix))
}

/// What a connected client may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A device: only its own topics.
    Device { device_type: String, device_id: String },
    /// Drover's own delivery client: every topic.
    Service,
    /// An admin-API token (any role, as for `GET /api/v1/events`): reads the event topics,
    /// writes nothing. Its token is checked again while it stays connected.
    Admin { name: String, token_hash: String },
}

impl Access {
    /// The client's identity, also its session name in the broker.
    pub fn name(&self) -> String {
        match self {
            Access::Device { device_type, device_id } => format!("{device_type}/{device_id}"),
            Access::Service => SERVICE_USER.to_string(),
            Access::Admin { name, .. } => format!("admin token `{name}`"),
        }
    }

    /// The session name in the router: the identity, then the client's own id (a device
    /// may hold several sessions, never another device's). Each part is escaped so that it
    /// holds no `:`, which separates them: device `A:x` with client `c` and device `A` with
    /// client `x:c` must not meet in one session. The router refuses `/`, `+`, `$` and `#`
    /// in client ids, so those are escaped too.
    pub fn session_id(&self, client_id: &str) -> String {
        let own = session_part(client_id);
        match self {
            Access::Device { device_type, device_id } => {
                format!("{}:{}:{own}", session_part(device_type), session_part(device_id))
            }
            Access::Service => format!("{SERVICE_USER}:{own}"),
            // `_`: no device type (a plugin name) starts with it.
            Access::Admin { name, .. } => format!("_admin:{}:{own}", session_part(name)),
        }
    }

    /// What every session name of this device starts with (`session_id` of any client id).
    pub fn session_prefix(&self) -> String {
        self.session_id("")
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        match self {
            Access::Service => true,
            // Reading events is all an admin does over MQTT: a token must not forge a
            // device's message, nor an event.
            Access::Admin { .. } => false,
            Access::Device { device_type, device_id } => topic
                .strip_prefix(&device_prefix(device_type, device_id))
                .is_some_and(|s| !s.is_empty() && !s.contains(['+', '#'])),
        }
    }

    /// A device may subscribe to filters inside its own prefix only (wildcards after it
    /// are fine: `drover/android/X/#`). An admin token, to the event topics only. `$share/…`
    /// and anything else is refused.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        match self {
            Access::Service => true,
            Access::Admin { .. } => {
                filter.strip_prefix(EVENTS_ROOT).and_then(|s| s.strip_prefix('/')).is_some_and(|s| !s.is_empty())
            }
            Access::Device { device_type, device_id } => {
                filter.strip_prefix(&device_prefix(device_type, device_id)).is_some_and(|s| !s.is_empty())
            }
        }
    }
}

/// `part` with `%`, `:` and the characters the router refuses percent-encoded: an
/// injective encoding whose output holds no `:`.
fn session_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        match c {
            '%' | ':' | '/' | '+' | '$' | '#' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A device became reachable over MQTT or left. A device may hold several sessions on
/// the embedded broker: it is online while any of them has subscribed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// A session on the embedded broker subscribed (counted).
    Subscribed { device_type: String, device_id: String },
    /// That session ended.
    Left { device_type: String, device_id: String },
    /// The device said `online` on its `status` topic (any broker).
    Online { device_type: String, device_id: String },
    /// The device said `offline`, or its will did.
    Offline { device_type: String, device_id: String },
}

/// Who may connect to the embedded broker: devices by their credential, user name
/// `{type}/{device-id}` and password the access token; Drover's client by a secret made
/// at start. Tells delivery when devices come and go.
pub struct Gate {
    store: Store,
    service_secret: String,
    push: Push,
}

impl Gate {
    pub fn new(store: Store, service_secret: String, push: Push) -> Gate {
        Gate { store, service_secret, push }
    }

    pub async fn authenticate(&self, username: &str, password: &str) -> Option<Access> {
        if username == SERVICE_USER {
            let ok: bool = subtle_eq(password.as_bytes(), self.service_secret.as_bytes());
            return ok.then_some(Access::Service);
        }
        if username == ADMIN_USER {
            let token_hash = crate::auth::hash_token(password);
            let principal = self.store.admin_for_token(&token_hash).await.ok()??;
            // The event feed is the whole fleet's: a scoped token, or a tenant's, may not
            // read it.
            if principal.scope.is_some() || principal.tenant.is_some() {
                return None;
            }
            return Some(Access::Admin { name: principal.name, token_hash });
        }
        let (device_type, device_id) = username.split_once('/')?;
        if device_id.contains(['/', '+', '#', '$']) || device_type.contains(['+', '#', '$', ':']) {
            return None;
        }
        let device = self.store.device_for_credential(&crate::auth::hash_token(password)).await.ok()??;
        (device.device_type == device_type && device.device_id == device_id)
            .then_some(Access::Device { device_type: device.device_type, device_id: device.device_id })
    }

    /// The device whose live certificate credential (`identity::credential_of` a verified
    /// client certificate) this is.
    pub async fn authenticate_certificate(&self, credential: &str) -> Option<Access> {
        let device = self.store.device_for_credential(credential).await.ok()??;
        Some(Access::Device { device_type: device.device_type, device_id: device.device_id })
    }

    /// Whether an admin session's token is still live (not revoked, not expired). Asked
    /// again every few seconds while it is connected: a revocation on any replica ends it.
    pub async fn still_admitted(&self, access: &Access) -> bool {
        match access {
            Access::Admin { token_hash, .. } => {
                // A database error is not a revocation: the session stays until it can be asked.
                self.store.admin_for_token(token_hash).await.map_or(true, |t| t.is_some())
            }
            _ => true,
        }
    }

    /// A session subscribed for the first time (the broker has already taken the
    /// subscription, so a push from now on reaches it).
    pub fn subscribed(&self, access: &Access) {
        if let Access::Device { device_type, device_id } = access {
            self.push.presence(Presence::Subscribed { device_type: device_type.clone(), device_id: device_id.clone() });
        }
    }

    /// A session that had subscribed ended.
    pub fn left(&self, access: &Access) {
        if let Access::Device { device_type, device_id } = access {
            self.push.presence(Presence::Left { device_type: device_type.clone(), device_id: device_id.clone() });
        }
    }
}

/// Equality whose time does not depend on where the inputs differ (the service secret).
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_keep_to_their_own_topics() {
        let a = Access::Device { device_type: "android".into(), device_id: "A1".into() };
        assert!(a.may_publish("drover/android/A1/reply"));
        assert!(a.may_publish("drover/android/A1/telemetry/battery"));
        assert!(!a.may_publish("drover/android/A1/"));
        assert!(!a.may_publish("drover/android/A2/reply"));
        assert!(!a.may_publish("drover/android/A1/#"));
        assert!(!a.may_publish("drover/android/A1"));
        assert!(!a.may_publish("drover/ios/A1/reply"));
        assert!(a.may_subscribe("drover/android/A1/operations"));
        assert!(a.may_subscribe("drover/android/A1/#"));
        assert!(!a.may_subscribe("drover/android/+/operations"));
        assert!(!a.may_subscribe("drover/#"));
        assert!(!a.may_subscribe("#"));
        assert!(!a.may_subscribe("$share/g/drover/android/A1/#"));
        assert!(Access::Service.may_subscribe("$share/drover/drover/+/+/+"));
        assert!(!a.may_subscribe("drover-events/#"));
    }

    #[test]
    fn admin_tokens_read_events_and_nothing_else() {
        let admin = Access::Admin { name: "siem".into(), token_hash: "h".into() };
        assert!(admin.may_subscribe("drover-events/#"));
        assert!(admin.may_subscribe("drover-events/operation.changed"));
        assert!(!admin.may_subscribe("drover-events"));
        assert!(!admin.may_subscribe("drover-events/"));
        assert!(!admin.may_subscribe("drover-eventsX/#"));
        assert!(!admin.may_subscribe("drover/android/A1/operations"));
        assert!(!admin.may_subscribe("#"));
        assert!(!admin.may_subscribe("$share/g/drover-events/#"));
        assert!(!admin.may_publish("drover-events/device.removed"));
        assert!(!admin.may_publish("drover/android/A1/reply"));
        // An admin's session never meets a device's or Drover's own.
        let device = Access::Device { device_type: "admin".into(), device_id: "siem".into() };
        assert_ne!(admin.session_id("c"), device.session_id("c"));
        assert_ne!(admin.session_prefix(), Access::Service.session_prefix());
    }

    #[test]
    fn session_names_cannot_collide() {
        let device = |id: &str| Access::Device { device_type: "android".into(), device_id: id.into() };
        // Chosen to collide under `{type}:{id}:{client}`.
        assert_ne!(device("A:x").session_id("c"), device("A").session_id("x:c"));
        assert_ne!(device("A").session_id("x%3Ac"), device("A").session_id("x:c"));
        assert_ne!(Access::Service.session_id("android:A:c"), device("A").session_id("c"));
        // Characters the router refuses never reach it.
        let name = device("A").session_id("a/b+c$d#e");
        assert!(!name.contains(['/', '+', '$', '#']), "{name}");
        assert_ne!(device("A").session_id("a/b"), device("A").session_id("a_b"));
    }

    #[test]
    fn topics_parse() {
        assert_eq!(parse_topic("drover/android/A1/reply"), Some(("android", "A1", "reply")));
        assert_eq!(parse_topic("drover/android/A1/telemetry/x"), Some(("android", "A1", "telemetry/x")));
        assert_eq!(parse_topic("drover/android/A1"), None);
        assert_eq!(parse_topic("other/android/A1/reply"), None);
    }
}
