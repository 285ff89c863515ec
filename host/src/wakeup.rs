//! Wake-up: telling a device, through its push provider, to call in now.
//!
//! When an activity is stored, each of its devices that has a push token gets a wake-up
//! row (`store/wakeups.rs`). This module's sender claims due rows, asks the device's
//! transport plugin (named by the token: `fcm`, `apns`, `wns`, `webhook`) to build the
//! provider request, checks the request's host against what the plugin's manifest
//! declares and an admin granted, performs it, and lets the plugin classify the answer:
//! delivered, retry (after the provider's Retry-After or our backoff), invalid token (the
//! host forgets the token until the device reports a new one) or failed. Operations stay
//! PENDING throughout: a wake-up only makes the device poll. See docs/delivery.md.

use crate::core::Core;
use crate::egress::{Clients, allowed_url, error_chain, provider_client, read_capped};
use crate::events::Event;
use crate::oauth::Tokens;
use crate::plugin_settings::PluginSettings;
use crate::plugins::bindings::transport::drover::plugin::transport_types::{
    ProviderOutcome, PushMessage as WakeMessage,
};
use crate::plugins::types::{Delivery, HttpMethod};
use crate::plugins::{CallError, Kind};
use crate::store::{DeviceRow, DueWakeup};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, broadcast};

/// Wake-ups claimed per round.
const BATCH: i64 = 64;
/// Provider requests in flight at once.
const PARALLEL: usize = 32;
/// A claimed wake-up not finished within this is tried again (a sender that died).
const LEASE_MS: i64 = 60_000;
/// First retry after this; doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A provider's Retry-After is honoured up to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The sender looks for due wake-ups at least this often.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Schedule wake-ups for the devices of each activity added (on this replica), and nudge
/// the sender. Other replicas' activities are found by the sender's periodic look at
/// what is due.
async fn follow(state: Core, notify: Arc<Notify>, mut events: broadcast::Receiver<Event>) {
    while let Some(event) = crate::events::next(&mut events, "wake-up").await {
        let Event::ActivityAdded { activity, .. } = event else { continue };
        let (store, notify) = (state.store.clone(), notify.clone());
        tokio::spawn(async move {
            match store.schedule_activity_wakeups(activity).await {
                Ok(0) => {}
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(activity, "scheduling wake-ups failed: {e}"),
            }
        });
    }
}

/// Run the sender until the server stops.
/// `events` is subscribed by the caller before the server takes requests, so no activity
/// is missed.
pub async fn run(state: Core, events: broadcast::Receiver<Event>) {
    let notify = Arc::new(Notify::new());
    let follower = tokio::spawn(follow(state.clone(), notify.clone(), events));
    let _stop_with_me = AbortOnDrop(follower);
    match state.store.schedule_pending_wakeups().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(devices = n, "wake-ups scheduled for devices with pending operations"),
        Err(e) => tracing::warn!("scheduling wake-ups at start failed: {e}"),
    }
    let http = match provider_client(&PluginSettings::default()) {
        Ok(c) => Http { default: c, own: Arc::new(Clients::default()), tokens: Arc::new(Tokens::default()) },
        Err(e) => {
            tracing::error!("wake-up is off: cannot build the HTTP client: {e}");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(PARALLEL));
    loop {
        let due = match state.store.claim_wakeups(BATCH, LEASE_MS).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("claiming wake-ups failed: {e}");
                Vec::new()
            }
        };
        let full = due.len() as i64 == BATCH;
        for w in due {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (state, http, notify) = (state.clone(), http.clone(), notify.clone());
            tokio::spawn(async move {
                if send(&state, &http, w).await {
                    // A retry may be due sooner than the loop's next look.
                    notify.notify_one();
                }
                drop(permit);
            });
        }
        if full {
            continue;
        }
        let wait = match state.store.next_wakeup_due().await {
            Ok(Some(due)) => {
                Duration::from_millis((due - crate::store::now_ms()).clamp(0, IDLE_CHECK.as_millis() as i64) as u64)
            }
            _ => IDLE_CHECK,
        };
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The backoff before attempt `attempts + 1`: 1 s, 2 s, 4 s … up to 5 min, with up to
/// 10% jitter so a provider outage does not end in a synchronized stampede.
fn backoff(attempts: i32) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1u32 << attempts.clamp(0, 16)).min(MAX_BACKOFF);
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    base + base.mul_f64(f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 10.0)
}

/// What became of one attempt.
enum Attempt {
    /// Nothing to do (no device, no pending operation, no token): the row goes.
    Moot(&'static str),
    Sent,
    /// Try again; `after` from the provider, else backoff.
    Retry {
        after: Option<Duration>,
        error: String,
    },
    InvalidToken(String),
    Failed(String),
}

/// The clients provider requests go out on.
#[derive(Clone)]
struct Http {
    default: reqwest::Client,
    own: Arc<Clients>,
    tokens: Arc<Tokens>,
}

/// One attempt for one device, recorded. True when it is to be retried.
async fn send(state: &Core, http: &Http, w: DueWakeup) -> bool {
    let device = match state.store.device_by_key(w.device).await {
        Ok(Some(d)) => d,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(device = w.device, "wake-up: reading the device failed: {e}");
            return false;
        }
    };
    let attempt = attempt(state, http, &device).await;
    let retrying = matches!(attempt, Attempt::Retry { .. });
    let outcome = match &attempt {
        Attempt::Moot(_) => None,
        Attempt::Sent => Some("sent"),
        Attempt::Retry { .. } => Some("retry"),
        Attempt::InvalidToken(_) => Some("invalid_token"),
        Attempt::Failed(_) => Some("failed"),
    };
    if let (Some(outcome), Some(token)) = (outcome, crate::push_token::of(&device)) {
        // The device names its transport: only a serving plugin's name becomes a label, so
        // a device cannot grow the metric with names of its own.
        let serving = state.registry.serving(&token.transport).is_some_and(|p| p.kind() == Kind::Transport);
        state.stats.wakeup(if serving { &token.transport } else { "unknown" }, outcome);
    }
    let (id, ty) = (&device.device_id, &device.device_type);
    let now = crate::store::now_ms();
    let result = match attempt {
        Attempt::Moot(why) => {
            tracing::debug!(device_type = %ty, device_id = %id, "wake-up not needed: {why}");
            state.store.drop_wakeup(device.id).await
        }
        Attempt::Sent => {
            tracing::info!(device_type = %ty, device_id = %id, attempt = w.attempts + 1, "wake-up sent");
            state.store.wakeup_attempted(device.id, "sent", None, None).await
        }
        Attempt::Retry { after, error } => {
            let after = after.map(|a| a.clamp(FIRST_BACKOFF, MAX_RETRY_AFTER)).unwrap_or_else(|| backoff(w.attempts));
            tracing::warn!(device_type = %ty, device_id = %id, attempt = w.attempts + 1, retry_in_ms = after.as_millis() as u64, "wake-up not delivered: {error}");
            let due = now + after.as_millis() as i64;
            state.store.wakeup_attempted(device.id, "scheduled", Some(due), Some(&error)).await
        }
        Attempt::InvalidToken(why) => {
            tracing::warn!(device_type = %ty, device_id = %id, "push token refused by the provider, forgotten until the device reports a new one: {why}");
            let error = format!("invalid push token: {why}");
            match state.store.set_push_token(device.id, None).await {
                Ok(()) => state.store.wakeup_attempted(device.id, "failed", None, Some(&error)).await,
                Err(e) => Err(e),
            }
        }
        Attempt::Failed(why) => {
            tracing::warn!(device_type = %ty, device_id = %id, "wake-up failed for good: {why}");
            state.store.wakeup_attempted(device.id, "failed", None, Some(&why)).await
        }
    };
    if let Err(e) = result {
        tracing::warn!(device_type = %ty, device_id = %id, "recording a wake-up attempt failed: {e}");
    }
    retrying
}

async fn attempt(state: &Core, http: &Http, device: &DeviceRow) -> Attempt {
    let retry = |error: String| Attempt::Retry { after: None, error };
    if device.status == crate::device::Status::Removed {
        return Attempt::Moot("the device was removed");
    }
    match state.store.queued(device.id, 1, false).await {
        Ok(q) if q.is_empty() => return Attempt::Moot("nothing is pending"),
        Ok(_) => {}
        Err(e) => return retry(format!("reading the queue: {e}")),
    }
    let wakes = state
        .registry
        .device_type(&device.device_type)
        .and_then(|p| p.device_type_info().map(|i| i.delivery.contains(&Delivery::WakeUp)));
    match wakes {
        None => return retry(format!("no device type `{}` is loaded", device.device_type)),
        Some(false) => return Attempt::Moot("its device type is not woken up"),
        Some(true) => {}
    }
    let Some(token) = crate::push_token::of(device) else { return Attempt::Moot("it has no push token") };
    let Some(transport) = state.registry.serving(&token.transport).filter(|p| p.kind() == Kind::Transport) else {
        return retry(format!("no transport plugin `{}` is serving (not loaded, or suspended)", token.transport));
    };
    let message = WakeMessage {
        device_type: device.device_type.clone(),
        device_id: device.device_id.clone(),
        token,
        payload: None,
    };
    let name = &transport.manifest.name;
    // The device's tenant's settings over the server's; a tenant that set its own has its
    // own provider client (its certificate) and its own access tokens.
    let (settings, own) = state.settings.for_tenant(name, &device.tenant);
    let key = if own { format!("{name}@{}", device.tenant) } else { name.to_string() };
    let client = match http.own.get(&http.default, &key, &settings) {
        Ok(c) => c,
        Err(e) => return retry(format!("plugin {name} settings: {e}")),
    };
    // The call reads this request's config, not the plugin's: the tenant's values, and the
    // access token the host obtains, which is never shared with another tenant's call.
    let mut config = own.then(|| settings.config.clone());
    if let Some(oauth) = &settings.oauth {
        match http.tokens.get(&client, &key, oauth).await {
            Ok(token) => {
                // An admin may have changed the settings during the exchange: then theirs
                // stand, and the retry uses them.
                let (now, _) = state.settings.for_tenant(name, &device.tenant);
                if now.oauth != settings.oauth || now.config != settings.config {
                    return retry(format!("plugin {name}: settings changed during the token exchange"));
                }
                config.get_or_insert_with(|| settings.config.clone()).insert("access_token".into(), token);
            }
            Err(e) => return retry(format!("plugin {name}: no access token: {e}")),
        }
    }
    let request = match transport.build_request(message, config.map(std::sync::Arc::new)).await {
        Ok(r) => r,
        // Usually a setting the admin has not made yet: retried, so fixing it is enough.
        Err(CallError::Rejected(e)) => {
            return retry(format!("{} cannot build the request: {}", transport.label(), e.message));
        }
        Err(e) => return retry(e.to_string()),
    };
    let url = match allowed_url(&transport, &settings, &request.url) {
        Ok(u) => u,
        Err(e) => return retry(e),
    };
    let method = match request.method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Head => reqwest::Method::HEAD,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
    };
    let mut builder = client.request(method, url.clone());
    for (k, v) in &request.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let response = match builder.body(request.body).send().await {
        Ok(r) => r,
        // The cause chain says what failed (a refused TLS handshake, a timeout).
        Err(e) => return retry(format!("{url}: {}", error_chain(&e))),
    };
    let status = response.status().as_u16();
    if status == 401 && settings.oauth.is_some() {
        // Revoked or expired early: the retry gets a new token.
        http.tokens.forget(&key).await;
    }
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = read_capped(response).await;
    match transport.classify(status, headers, body).await {
        Ok(ProviderOutcome::Delivered) => Attempt::Sent,
        Ok(ProviderOutcome::Retry(after)) => Attempt::Retry {
            after: after.map(|s| Duration::from_secs(u64::from(s))),
            error: format!("the provider answered HTTP {status}"),
        },
        Ok(ProviderOutcome::InvalidToken(why)) => Attempt::InvalidToken(why),
        Ok(ProviderOutcome::Failed(why)) => Attempt::Failed(why),
        Err(e) => retry(e.to_string()),
    }
}

/// Ends a task when dropped: the event follower stops with the sender.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let b0 = backoff(0);
        assert!(b0 >= Duration::from_secs(1) && b0 <= Duration::from_millis(1100), "{b0:?}");
        let b3 = backoff(3);
        assert!(b3 >= Duration::from_secs(8) && b3 <= Duration::from_millis(8800), "{b3:?}");
        assert!(backoff(30) <= MAX_BACKOFF.mul_f64(1.1));
        assert!(backoff(30) >= MAX_BACKOFF);
    }
}
