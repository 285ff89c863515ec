//! Webhooks: events of the durable log POSTed to subscribers, signed in the Standard
//! Webhooks form, at least once and in log order per subscription (docs/events.md).
//!
//! Each subscription has a cursor in the log. The worker takes a due subscription's lease
//! (so one replica delivers it), sends the events after the cursor one at a time, and
//! moves the cursor past each one the receiver accepted (2xx). A failure stops the
//! subscription where it is: the same event is tried again after an exponential backoff
//! with jitter, and after `failure_limit` failures in a row the subscription is disabled
//! with an event saying so. A crash between a delivery and the cursor's move delivers
//! that event again: receivers deduplicate on `webhook-id`.

use crate::core::Core;
use crate::error::{Error, Result};
use crate::store::{DeliveryRow, EventQuery, EventRow, NewEvent, WebhookRow, now_ms};
use base64::Engine;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How a server delivers webhooks.
#[derive(Debug, Clone)]
pub struct Policy {
    /// First retry after this; doubled per failure in a row, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Failures in a row that disable a subscription.
    pub failure_limit: i64,
    /// Longest a receiver may take to answer.
    pub timeout: Duration,
    /// Let subscriptions reach loopback, private, link-local and other non-public
    /// addresses (for receivers on the operator's own network). Off by default: an admin
    /// token must not turn the server into a probe of its own network.
    pub allow_private: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            failure_limit: 20,
            timeout: Duration::from_secs(10),
            allow_private: false,
        }
    }
}

/// How often the worker looks for due subscriptions.
const TICK: Duration = Duration::from_millis(200);
/// Events sent per lease.
const BATCH: i64 = 100;
/// A receiver's answer is read up to this much (for the delivery log's error).
const MAX_ANSWER: usize = 1024;

/// A new secret in the Standard Webhooks form: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the OS random source");
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}

/// The key bytes of a `whsec_…` secret, or why it is not one.
pub fn secret_key(secret: &str) -> std::result::Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").ok_or("a secret starts with `whsec_`")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after `whsec_` is not base64: {e}"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!("the key is {} bytes; give 24 to 64", key.len()));
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`: the `webhook-signature`
/// header of the Standard Webhooks specification.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(format!("{id}.{timestamp}.").as_bytes());
    ctx.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref()))
}

/// Whether an address is one a webhook may reach without `allow_private`.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10, carrier-grade NAT
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// A subscription URL as given: http(s), a host, no credentials in it; an address literal
/// must be public unless the policy allows private ones.
pub fn check_url(url: &str, policy: &Policy) -> Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Error::invalid("invalid", format!("`url` {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid("invalid", format!("`url`: scheme `{}`; use http or https", parsed.scheme())));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid("invalid", "`url`: no credentials in the URL; the receiver checks the signature"));
    }
    let Some(host) = parsed.host_str() else { return Err(Error::invalid("invalid", "`url` has no host")) };
    // An address literal (IPv6 in brackets); a name is checked when it is resolved.
    let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
    if let Some(ip) = literal
        && !policy.allow_private
        && !is_public(ip)
    {
        return Err(Error::invalid(
            "invalid",
            format!(
                "`url`: {ip} is not a public address; a server started with `--webhook-allow-private true` may deliver there"
            ),
        ));
    }
    Ok(parsed)
}

/// Resolve `url`'s host and pick the address to connect to, refusing non-public ones
/// (a name can resolve to anything, and again differently later: the connection is made
/// to the address checked here).
async fn resolve(url: &reqwest::Url, policy: &Policy) -> std::result::Result<(String, std::net::SocketAddr), String> {
    let host = url.host_str().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let allowed = addrs.iter().find(|a| policy.allow_private || is_public(a.ip()));
    match allowed {
        Some(a) => Ok((host, *a)),
        None => Err(format!(
            "{host} resolves to non-public addresses only ({addrs:?}); a server started with `--webhook-allow-private true` may deliver there"
        )),
    }
}

/// Whether `event` passes `w`'s device-type filter. (Its type, group and tag filters run
/// in the database, in the query that reads the events.)
pub fn wants(w: &WebhookRow, event: &EventRow) -> bool {
    let Some(dt) = &w.device_type else { return true };
    let data: serde_json::Value = event.data.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
    let of_event = data.get("device_type").or_else(|| data.get("type")).and_then(|v| v.as_str());
    of_event == Some(dt.as_str())
}

/// The body sent for `event`: the Standard Webhooks envelope (`type`, `timestamp`,
/// `data`), with the event as the API shows it in `data`.
pub fn body(event: &EventRow) -> Vec<u8> {
    // `at` is the server's own clock; a value past what SystemTime holds is sent as the epoch.
    let at = std::time::UNIX_EPOCH
        .checked_add(Duration::from_millis(event.at.max(0) as u64))
        .unwrap_or(std::time::UNIX_EPOCH);
    serde_json::to_vec(&serde_json::json!({
        "type": event.event_type,
        "timestamp": humantime::format_rfc3339_millis(at).to_string(),
        "data": event,
    }))
    .unwrap_or_default()
}

/// Deliver due subscriptions until the server stops.
pub async fn run(core: Core, policy: Policy) {
    let mut running = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        while running.try_join_next().is_some() {}
        let due = match core.store.due_webhooks(now_ms()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading due webhooks failed");
                continue;
            }
        };
        for w in due {
            match core.store.lease_webhook(w.id, lease_end(&policy)).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "leasing a webhook failed");
                    continue;
                }
            }
            let (core, policy) = (core.clone(), policy.clone());
            running.spawn(async move {
                if let Err(e) = deliver(&core, &policy, &w).await {
                    tracing::warn!(webhook = %w.name, error = %e, "webhook delivery stopped");
                }
                let _ = core.store.release_webhook(w.id).await;
            });
        }
    }
}

/// Until when a lease taken (or renewed) now holds: the longest delivery and 5 s. It is
/// renewed when less than one delivery's time is left (a write every few seconds of
/// delivery), so a replica that dies holds its subscriptions back at most this long.
fn lease_end(policy: &Policy) -> i64 {
    now_ms() + policy.timeout.as_millis() as i64 + 5_000
}

/// Send `w`'s next events in order, batch after batch until it has caught up, stopping at
/// the first failure. The bookkeeping (delivery log, cursor) is written once per batch,
/// after the sends: a crash re-sends at most one batch, which at-least-once allows and
/// `webhook-id` lets receivers drop.
async fn deliver(core: &Core, policy: &Policy, w: &WebhookRow) -> Result<()> {
    let store = &core.store;
    let key = secret_key(&w.secret).map_err(Error::internal)?;
    let url = reqwest::Url::parse(&w.url).map_err(|e| Error::internal(e.to_string()))?;
    let types: Vec<String> = serde_json::from_str(&w.types).unwrap_or_default();
    // Resolved and checked once per run; every request of the run goes to that address.
    let mut client: Option<reqwest::Client> = None;
    let mut cursor = w.cursor;
    let mut lease = lease_end(policy);
    // The first event of a run may have been tried before (it failed, or was redelivered).
    let mut first = true;
    // Failures in a row before this run; a delivery in it ends the run of failures.
    let mut failures_before = w.failures;
    loop {
        let horizon = store.settled(cursor).await?;
        if horizon == cursor {
            return Ok(());
        }
        // The type filter runs in the database: a subscription to device events is not
        // slowed by a flood of operation events it skips.
        let query = EventQuery {
            type_prefixes: types.clone(),
            up_to: Some(horizon),
            group: w.group_name.clone(),
            tag: w.tag.clone(),
            // A tenant's subscription hears only about the tenant's devices and things
            // (its groups, policies, subscriptions); other events about no device
            // (tokens, tenants, plugins) are the operators'.
            within: w.tenant.as_deref().map(crate::scope::Reach::tenant),
            tenant_events: w.tenant.clone(),
            ..Default::default()
        };
        let events = store.events(&query, cursor, BATCH).await?;
        let mut log = Vec::new();
        for event in events.iter().filter(|e| wants(w, e)) {
            if now_ms() + policy.timeout.as_millis() as i64 + 1_000 > lease {
                lease = lease_end(policy);
                store.renew_webhook(w.id, lease).await?;
            }
            let attempt = if first { store.delivery_attempts(w.id, event.seq).await? + 1 } else { 1 };
            first = false;
            let started = Instant::now();
            let outcome = match &client {
                Some(c) => send(c, &url, &key, event).await,
                None => match pinned_client(&url, policy).await {
                    Ok(c) => send(client.insert(c), &url, &key, event).await,
                    Err(e) => Err((None, e)),
                },
            };
            let latency_ms = started.elapsed().as_millis() as i64;
            let (status, error) = match &outcome {
                Ok(s) => (Some(i64::from(*s)), None),
                Err((s, e)) => (s.map(i64::from), Some(e.clone())),
            };
            log.push(DeliveryRow { id: 0, event: event.seq, attempt, status, error, latency_ms, at: now_ms() });
            if let Err((_, why)) = outcome {
                // What went through, and what was skipped before the failed event, is done.
                store.record_deliveries(w.id, &log).await?;
                store.advance_webhook(w.id, event.seq - 1, log.len() > 1).await?;
                if log.len() > 1 {
                    failures_before = 0;
                }
                return failed(core, policy, w, failures_before, event.seq, why).await;
            }
        }
        // Everything up to the end of what was read has been sent or is not wanted.
        let done = if (events.len() as i64) < BATCH { horizon } else { events.last().map_or(horizon, |e| e.seq) };
        store.record_deliveries(w.id, &log).await?;
        store.advance_webhook(w.id, done, !log.is_empty()).await?;
        if !log.is_empty() {
            failures_before = 0;
        }
        cursor = done;
    }
}

/// A failed attempt: back off, or disable the subscription with an event saying why.
async fn failed(core: &Core, policy: &Policy, w: &WebhookRow, before: i64, event: i64, why: String) -> Result<()> {
    let store = &core.store;
    let failures = before + 1;
    let disable =
        (failures >= policy.failure_limit).then(|| format!("{failures} failed deliveries in a row; the last: {why}"));
    let next = now_ms() + backoff(policy, failures).as_millis() as i64;
    store.webhook_failed(w.id, next, disable.as_deref()).await?;
    tracing::info!(webhook = %w.name, event, failures, %why, "webhook delivery failed");
    if let Some(reason) = disable {
        tracing::warn!(webhook = %w.name, %reason, "webhook disabled");
        store
            .append_event(&NewEvent {
                event_type: "webhook.disabled".into(),
                target: Some(format!("webhook/{}", w.name)),
                data: Some(serde_json::json!({ "webhook": w.name, "reason": reason }).to_string()),
                tenant: w.tenant.clone(),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// A client that connects `url`'s host to the address [`resolve`] checked (a second
/// lookup could answer differently), follows no redirects, and keeps its connection
/// for the run.
async fn pinned_client(url: &reqwest::Url, policy: &Policy) -> std::result::Result<reqwest::Client, String> {
    let (host, addr) = resolve(url, policy).await?;
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5).min(policy.timeout))
        .timeout(policy.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("drover-webhooks/", env!("CARGO_PKG_VERSION")))
        .resolve(&host, addr)
        .build()
        .map_err(|e| format!("webhook client: {e}"))
}

/// POST one event. `Ok(status)` for 2xx; otherwise the status if any and why.
async fn send(
    client: &reqwest::Client,
    url: &reqwest::Url,
    key: &[u8],
    event: &EventRow,
) -> std::result::Result<u16, (Option<u16>, String)> {
    let id = format!("evt_{}", event.seq);
    let body = body(event);
    let timestamp = now_ms() / 1000;
    let signature = sign(key, &id, timestamp, &body);
    let r = client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| (None, if e.is_timeout() { "no answer within the timeout".to_string() } else { e.to_string() }))?;
    let status = r.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let text = r.text().await.unwrap_or_default();
    let text: String = text.chars().take(MAX_ANSWER).collect();
    Err((Some(status.as_u16()), format!("answered {status}: {text}")))
}

/// The wait after `failures` failures in a row: doubling from `backoff`, at most
/// `max_backoff`, with ±25% jitter so that many subscriptions to one broken receiver do not
/// retry in step.
fn backoff(policy: &Policy, failures: i64) -> Duration {
    let doubling = 2u32.saturating_pow(failures.clamp(1, 30) as u32 - 1);
    let base = policy.backoff.saturating_mul(doubling).min(policy.max_backoff);
    let mut r = [0u8; 2];
    getrandom::fill(&mut r).expect("the OS random source");
    let jitter = f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) * 0.5 + 0.75;
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn private_addresses_are_refused_unless_allowed() {
        let strict = Policy::default();
        for url in [
            "http://127.0.0.1/x",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:192.168.1.1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
        ] {
            assert!(check_url(url, &strict).is_err(), "{url}");
            assert!(check_url(url, &Policy { allow_private: true, ..Policy::default() }).is_ok(), "{url}");
        }
        assert!(check_url("https://hooks.example.com/drover", &strict).is_ok());
        assert!(check_url("https://93.184.216.34/x", &strict).is_ok());
        assert!(check_url("ftp://example.com/", &strict).is_err());
        assert!(check_url("https://user:pw@example.com/", &strict).is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_growing() {
        let p = Policy { backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(60), ..Policy::default() };
        for (failures, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            let d = backoff(&p, failures).as_secs_f64();
            assert!(d >= base * 0.75 && d <= base * 1.25, "{failures}: {d}");
        }
    }

    #[test]
    fn secrets_are_checked() {
        assert!(secret_key(&new_secret()).is_ok());
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(secret_key("whsec_!!").is_err());
        assert!(secret_key("whsec_c2hvcnQ=").is_err());
    }
}
