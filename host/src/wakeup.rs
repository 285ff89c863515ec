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

use crate::oauth::{OAuth, Tokens};
use crate::plugins::bindings::transport::drover::plugin::transport_types::{
    ProviderOutcome, PushMessage as WakeMessage,
};
use crate::plugins::transport::host_matches;
use crate::plugins::types::{Delivery, HttpMethod, PushToken};
use crate::plugins::{CallError, Kind, LoadedPlugin};
use crate::server::AppState;
use crate::store::{DeviceRow, DueWakeup, SettingsRow};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

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
/// Provider answers are read up to this size (they are short JSON or empty).
const MAX_ANSWER: usize = 64 << 10;
/// The sender looks for due wake-ups at least this often.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// What an admin set for one plugin, as the sender uses it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Config values the plugin reads (`config.get`): API keys, project ids, topics.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Hosts a transport may send to: names or `*.domain` patterns, each within what its
    /// manifest declares.
    #[serde(default)]
    pub granted_hosts: Vec<String>,
    /// Provider host → base URL (`http(s)://host[:port]`) its requests go to instead:
    /// an egress gateway, a provider sandbox, a test server. Path and query are kept.
    #[serde(default)]
    pub redirects: BTreeMap<String, String>,
    /// The TLS client identity the host presents to this plugin's provider hosts: PEM
    /// certificate chain and private key (APNs takes MDM pushes only from the MDM push
    /// certificate). The plugin never sees it; the API shows only the certificates, and
    /// taking back what it shows keeps the stored key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_identity: Option<String>,
    /// Certificate authorities (PEM) that provider hosts, or what they are redirected to,
    /// are verified against besides the public roots: a gateway or sandbox with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<String>,
    /// What the host obtains access tokens with, renewing them as they expire; the plugin
    /// reads the current one as config value `access_token` (`oauth.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuth>,
}

impl PluginSettings {
    pub fn from_row(row: &SettingsRow) -> PluginSettings {
        PluginSettings {
            config: serde_json::from_str(&row.config).unwrap_or_default(),
            granted_hosts: serde_json::from_str(&row.granted_hosts).unwrap_or_default(),
            redirects: serde_json::from_str(&row.redirects).unwrap_or_default(),
            client_identity: row.client_identity.clone(),
            trusted_ca: row.trusted_ca.clone(),
            oauth: row.oauth.as_deref().and_then(|o| serde_json::from_str(o).ok()),
        }
    }

    /// These settings with private keys and secrets left out.
    pub fn shown(mut self) -> PluginSettings {
        self.client_identity = self.client_identity.as_deref().map(certificates);
        self.oauth = self.oauth.map(OAuth::shown);
        self
    }
}

/// Follow what admins set on any replica: settings are written to the database by the
/// replica that took the PUT and read back here by every replica, every `every`. A plugin
/// whose stored settings differ from what this replica holds gets them, config included
/// (the next plugin call sees them).
pub async fn follow_settings(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rows = match state.store.plugin_settings().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("reading plugin settings failed (retried): {e}");
                continue;
            }
        };
        for row in rows {
            let stored = PluginSettings::from_row(&row);
            if state.settings.get(&row.plugin) != stored {
                tracing::info!(plugin = %row.plugin, "plugin settings changed on another replica: applied");
                // Settings before config, as the API does (see `attempt`).
                let config = stored.config.clone();
                state.settings.set(&row.plugin, stored);
                state.registry.runtime().set_config(&row.plugin, config);
            }
        }
    }
}

/// The HTTP client for provider requests: no redirects followed (a redirect could leave
/// the granted hosts), bounded times, and the plugin's TLS settings when it has any.
/// Errors name the setting at fault.
pub fn provider_client(settings: &PluginSettings) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &settings.client_identity {
        let identity = reqwest::Identity::from_pem(pem.as_bytes())
            .map_err(|e| format!("`client_identity`: {e} (expected PEM: the certificate chain and its private key)"))?;
        builder = builder.identity(identity);
    }
    if let Some(pem) = &settings.trusted_ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("`trusted_ca`: {e} (expected PEM certificates)"))?;
        if certs.is_empty() {
            return Err("`trusted_ca`: no PEM certificate in it".into());
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    // Building checks the identity: a key that does not belong to the certificate fails here.
    builder.build().map_err(|e| {
        let what = if settings.client_identity.is_some() { "client_identity" } else { "trusted_ca" };
        format!("`{what}`: {}", error_chain(&e))
    })
}

/// The `CERTIFICATE` blocks of a PEM text, without anything else (a private key).
pub fn certificates(pem: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = String::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else { break };
        out.push_str(&rest[start..start + len + END.len()]);
        out.push('\n');
        rest = &rest[start + len + END.len()..];
    }
    out
}

/// Provider clients of plugins with TLS settings of their own, built when first needed
/// and again when the settings change (keeping a client keeps its connections: APNs
/// wants one HTTP/2 connection reused, not a handshake per push).
#[derive(Default)]
struct Clients(std::sync::Mutex<BTreeMap<String, (PluginSettings, reqwest::Client)>>);

impl Clients {
    fn get(&self, default: &reqwest::Client, plugin: &str, s: &PluginSettings) -> Result<reqwest::Client, String> {
        if s.client_identity.is_none() && s.trusted_ca.is_none() {
            return Ok(default.clone());
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_for, client)) = map.get(plugin)
            && built_for.client_identity == s.client_identity
            && built_for.trusted_ca == s.trusted_ca
        {
            return Ok(client.clone());
        }
        let client = provider_client(s)?;
        map.insert(plugin.to_string(), (s.clone(), client.clone()));
        Ok(client)
    }
}

/// Settings of every plugin, by name; read on every wake-up, written by the API.
#[derive(Default)]
pub struct Settings(RwLock<BTreeMap<String, PluginSettings>>);

impl Settings {
    pub fn get(&self, plugin: &str) -> PluginSettings {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(plugin).cloned().unwrap_or_default()
    }

    pub fn set(&self, plugin: &str, settings: PluginSettings) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(plugin.to_string(), settings);
    }
}

/// A handle to the sender, cheap to clone.
#[derive(Clone, Default)]
pub struct WakeUp {
    notify: Arc<Notify>,
}

impl WakeUp {
    /// An activity was stored: schedule wake-ups for its devices that have push tokens.
    pub fn activity_added(&self, state: &AppState, activity: i64) {
        let (store, notify) = (state.store.clone(), self.notify.clone());
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
pub async fn run(state: AppState, wakeup: WakeUp) {
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
            let (state, http, notify) = (state.clone(), http.clone(), wakeup.notify.clone());
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
            _ = wakeup.notify.notified() => {}
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
async fn send(state: &AppState, http: &Http, w: DueWakeup) -> bool {
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
    if let (Some(outcome), Some(token)) = (outcome, parse_token(&device)) {
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

fn parse_token(device: &DeviceRow) -> Option<PushToken> {
    let v: serde_json::Value = serde_json::from_str(device.push_token.as_deref()?).ok()?;
    let extra = v["extra"]
        .as_array()
        .map(|a| {
            a.iter().filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_str()?.to_string()))).collect()
        })
        .unwrap_or_default();
    Some(PushToken { transport: v["transport"].as_str()?.to_string(), token: v["token"].as_str()?.to_string(), extra })
}

/// The stored form of a push token.
pub fn token_json(t: &PushToken) -> String {
    serde_json::json!({"transport": t.transport, "token": t.token, "extra": t.extra}).to_string()
}

async fn attempt(state: &AppState, http: &Http, device: &DeviceRow) -> Attempt {
    let retry = |error: String| Attempt::Retry { after: None, error };
    if device.status == "removed" {
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
    let Some(token) = parse_token(device) else { return Attempt::Moot("it has no push token") };
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
    let settings = state.settings.get(name);
    let client = match http.own.get(&http.default, name, &settings) {
        Ok(c) => c,
        Err(e) => return retry(format!("plugin {name} settings: {e}")),
    };
    // A token the host obtains goes into the plugin's config before it builds the request.
    if let Some(oauth) = &settings.oauth {
        match http.tokens.get(&client, name, oauth).await {
            Ok(token) => {
                let mut config = settings.config.clone();
                config.insert("access_token".into(), token);
                state.registry.runtime().set_config(name, config);
                // An admin may have changed the settings during the exchange: then theirs
                // stand (the API sets settings before config, so this sees the change).
                let now = state.settings.get(name);
                if now.oauth != settings.oauth || now.config != settings.config {
                    state.registry.runtime().set_config(name, now.config);
                    return retry(format!("plugin {name}: settings changed during the token exchange"));
                }
            }
            Err(e) => return retry(format!("plugin {name}: no access token: {e}")),
        }
    }
    let request = match transport.build_request(message).await {
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
        http.tokens.forget(name).await;
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

/// An error and its causes, `: `-separated (reqwest's own message omits the cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A provider's (or token endpoint's) answer, up to [`MAX_ANSWER`] bytes.
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER - body.len())]);
        if body.len() >= MAX_ANSWER {
            break;
        }
    }
    body
}

/// The URL to send a plugin's request to: its host must be declared by the manifest and
/// granted by an admin; an admin's redirect for that host then applies.
pub fn allowed_url(plugin: &LoadedPlugin, settings: &PluginSettings, url: &str) -> Result<reqwest::Url, String> {
    let name = &plugin.manifest.name;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{name} built an invalid URL `{url}`: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(format!("{name} built a `{}` URL; only http(s) is sent", parsed.scheme()));
    }
    let host = parsed.host_str().unwrap_or_default().to_string();
    if !plugin.manifest.outbound_hosts.iter().any(|p| host_matches(p, &host)) {
        return Err(format!(
            "{name} asked to send to `{host}`, which its manifest does not declare (outbound_hosts: {:?})",
            plugin.manifest.outbound_hosts
        ));
    }
    if !settings.granted_hosts.iter().any(|p| host_matches(p, &host)) {
        return Err(format!(
            "host `{host}` is not granted to plugin {name}: an admin grants it with PUT /api/v1/plugins/{name}/settings (granted_hosts)"
        ));
    }
    match settings.redirects.get(&host) {
        None => Ok(parsed),
        Some(base) => {
            let mut target =
                reqwest::Url::parse(base).map_err(|e| format!("redirect for `{host}` is not a URL: {e}"))?;
            target.set_path(parsed.path());
            target.set_query(parsed.query());
            Ok(target)
        }
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
