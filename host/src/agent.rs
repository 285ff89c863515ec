//! Device-facing endpoints: `/agent/v1/{type}/{*path}` routed to the type's plugin.
//!
//! The host does not know any device type's paths. It reserves two sub-paths: `enroll`
//! (through the plugin's `enroll`) and `credential` (POST: refresh the caller's
//! credential); everything else is authenticated by the device's credential and handed
//! to the plugin's `decode`. Then the host records
//! what the message carried and answers as the plugin's `reply` says, with pending
//! operations encoded by the plugin when asked.

use crate::api::ApiError;
use crate::auth::AuthDevice;
use crate::ops::Reported;
use crate::plugins::types::{
    Channel, ChannelKind, CheckIn, Device, HttpMethod, HttpRequest, Operation, OperationKind, Outbound, Reply,
    ResultStatus,
};
use crate::plugins::{CallError, LoadedPlugin, Source};
use crate::server::AppState;
use crate::store::{DeviceKey, DeviceRow, NewDevice, QueuedOperation};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// Credentials issued at enrollment or refresh live this long.
pub const CREDENTIAL_DAYS: i64 = 90;

/// After a refresh the old credential keeps working this long (requests in flight, an
/// answer lost in transit).
const OLD_CREDENTIAL_GRACE_SECS: i64 = 300;

/// `last_seen_at` is rewritten at most this often by messages that carry nothing else.
pub(crate) const LAST_SEEN_RESOLUTION_MS: i64 = 30_000;

/// At most this many operations go out in one answer, whatever the plugin allows.
pub(crate) const MAX_BATCH: i64 = 100;

/// How many times one answer retries `encode` after dropping an operation the plugin
/// cannot encode (each drop ends that operation in ERROR).
const MAX_POISON_PER_CALL: usize = 8;

pub fn router() -> Router<AppState> {
    Router::new().route("/agent/v1/{device_type}/{*path}", any(agent))
}

fn plugin_for(state: &AppState, device_type: &str) -> Result<Arc<LoadedPlugin>, ApiError> {
    if let Some(p) = state.registry.device_type(device_type) {
        return Ok(p);
    }
    match state.registry.suspension(device_type) {
        // Nothing is decoded, so nothing the device sent is half-applied; its operations
        // stay queued for when the plugin serves again.
        Some(why) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin_suspended",
            format!("the `{device_type}` plugin is suspended ({why}); try again later"),
        )),
        None => Err(ApiError::not_found(format!("no device type `{device_type}` is loaded"))),
    }
}

fn http_channel(method: &Method, path: &str, uri: &Uri, headers: &HeaderMap) -> Result<Channel, ApiError> {
    let method = match *method {
        Method::GET => HttpMethod::Get,
        Method::HEAD => HttpMethod::Head,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        ref m => {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method", format!("{m} is not an agent method")));
        }
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    // The plugin never sees credentials: the host has already authenticated the device.
    let headers = headers
        .iter()
        .filter(|(n, _)| *n != header::AUTHORIZATION && *n != header::COOKIE)
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    Ok(Channel::Http(HttpRequest {
        method,
        path: path.to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        content_type,
        headers,
    }))
}

async fn agent(
    State(state): State<AppState>,
    Path((device_type, path)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Nothing of the body is read before the request is authenticated (or, for an
    // enrollment, with a limit fit for an unauthenticated sender).
    let (mut parts, body) = request.into_parts();
    let plugin = plugin_for(&state, &device_type)?;
    let channel = http_channel(&method, &path, &uri, &headers)?;
    if path == "enroll" {
        let body = read_body(&state, body, MAX_ENROLL_BODY).await?;
        // An enrollment token may come as a bearer token or as `?token=` (the QR-code URL).
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::to_string)
            .or_else(|| {
                uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))).map(str::to_string)
            });
        // No credential yet: a fault its body causes is charged to the peer's address.
        let peer = request_peer(&parts);
        return enroll(&state, &plugin, &device_type, Source::Peer(peer), channel, body, token).await;
    }
    if path == "credential" {
        let AuthDevice(device, credential) = AuthDevice::from_request_parts(&mut parts, &state).await?;
        same_type(&device, &device_type)?;
        if method != Method::POST {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "refresh a credential with POST /agent/v1/{type}/credential",
            ));
        }
        return refresh_credential(&state, &device, &credential).await;
    }
    // The device and its queue in one read: most messages are polls, which need both.
    let credential = crate::auth::device_token_hash(&parts)?;
    let (device, queue) = state
        .store
        .device_and_queue(DeviceKey::Credential(&credential), queue_limit(&plugin))
        .await?
        .ok_or_else(crate::auth::unknown_device_token)?;
    same_type(&device, &device_type)?;
    let body = read_body(&state, body, state.max_agent_body).await?;
    handle_message(&state, &plugin, &device, channel, body, queue).await
}

/// Largest enrollment request: it comes before any credential. (An Apple Authenticate
/// check-in is about 2 KiB, a Windows enrollment SOAP message about 10.)
pub const MAX_ENROLL_BODY: usize = 64 << 10;

/// Read a request body of at most `limit` bytes within the body timeout.
async fn read_body(state: &AppState, body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {} s", state.body_timeout.as_secs()),
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("this request's body is limited to {limit} bytes"),
        )),
        Ok(Ok(b)) => Ok(b),
    }
}

/// A credential is good only at its own device type's paths.
fn same_type(device: &DeviceRow, device_type: &str) -> Result<(), ApiError> {
    if device.device_type != device_type {
        return Err(ApiError::forbidden(format!(
            "this credential is for a {} device, not {device_type}",
            device.device_type
        )));
    }
    Ok(())
}

/// How many queued operations one answer may carry: the plugin's `max-operations-per-
/// message`, within 1 ..= MAX_BATCH.
pub(crate) fn queue_limit(plugin: &LoadedPlugin) -> i64 {
    plugin
        .device_type_info()
        .and_then(|i| i.max_operations_per_message)
        .map_or(MAX_BATCH, |m| (m as i64).clamp(1, MAX_BATCH))
}

/// The credential answer of enrollment and refresh (OAuth-style field names).
fn credential_body(device: &DeviceRow, token: &str) -> serde_json::Value {
    json!({
        "device_type": device.device_type, "device_id": device.device_id, "status": device.status,
        "access_token": token, "token_type": "Bearer", "expires_in": CREDENTIAL_DAYS * 86_400,
    })
}

/// Issue a new credential to a device that holds a live one; the old one is shortened
/// to a grace period.
async fn refresh_credential(state: &AppState, device: &DeviceRow, old_hash: &str) -> Result<Response, ApiError> {
    let (token, hash) = crate::auth::new_token("dev");
    let now = crate::store::now_ms();
    state
        .store
        .refresh_device_credential(
            device.id,
            old_hash,
            &hash,
            now + CREDENTIAL_DAYS * 86_400_000,
            now + OLD_CREDENTIAL_GRACE_SECS * 1000,
        )
        .await?;
    tracing::info!(device_type = %device.device_type, device_id = %device.device_id, "device credential refreshed");
    Ok((StatusCode::OK, Json(credential_body(device, &token))).into_response())
}

/// The address a request came from (the connection's peer; behind a load balancer, the
/// balancer's). Unspecified when the server was not served with connection info.
fn request_peer(parts: &axum::http::request::Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

async fn enroll(
    state: &AppState,
    plugin: &LoadedPlugin,
    device_type: &str,
    source: Source,
    channel: Channel,
    body: Bytes,
    token: Option<String>,
) -> Result<Response, ApiError> {
    bounded(&body)?;
    // The plugin validates first: a refused request must not use up a token.
    let e = plugin.enroll(source, channel, body.to_vec()).await?;
    use crate::enrollment::{Credential, Decision, decide};
    let claim = state.store.claim_of(device_type, &e.device_id).await?;
    let credential = if token.is_some() { Credential::Token } else { Credential::None };
    match decide(claim.as_ref(), credential, state.open_enrollment) {
        Decision::AlreadyEnrolled => return Err(already_enrolled(device_type, &e.device_id)),
        Decision::Refused(why) => return Err(ApiError::forbidden(why)),
        Decision::Open => {}
        Decision::Token { import_batch } => {
            let hash = crate::auth::hash_token(token.as_deref().unwrap_or_default());
            if !state.store.consume_enrollment_token(&hash, device_type, import_batch.as_deref()).await? {
                return Err(ApiError::unauthorized(format!(
                    "the enrollment token is unknown, expired, used up, not for {device_type} devices, or made for \
                     an import this device is not in"
                )));
            }
        }
    }
    let ownership = match e.ownership {
        crate::plugins::types::Ownership::Byod => "BYOD",
        crate::plugins::types::Ownership::Cope => "COPE",
    };
    let metadata = e.metadata.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let push_token = e.push.as_ref().map(crate::wakeup::token_json);
    let e_device_id = e.device_id.clone();
    let device = state
        .store
        .enroll_device(&NewDevice {
            device_type: device_type.to_string(),
            name: e.name.clone().unwrap_or_else(|| e.device_id.clone()),
            device_id: e.device_id,
            owner: e.owner,
            ownership: ownership.into(),
            metadata,
            push_token,
        })
        .await
        .map_err(|err| match err {
            crate::store::StoreError::Conflict(_) => already_enrolled(device_type, &e_device_id),
            other => other.into(),
        })?;
    let (token, hash) = crate::auth::new_token("dev");
    let expires_at = crate::store::now_ms() + CREDENTIAL_DAYS * 86_400_000;
    state.store.insert_device_credential(device.id, &hash, expires_at).await?;
    tracing::info!(device_type, device_id = %device.device_id, "device enrolled");
    Ok((StatusCode::CREATED, Json(credential_body(&device, &token))).into_response())
}

fn already_enrolled(device_type: &str, device_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "already_enrolled",
        format!("device {device_type}/{device_id} is already enrolled; an admin removes it first to enroll it again"),
    )
}

/// What one device message may carry. A poll answers at most [`MAX_BATCH`] operations,
/// so results beyond a few batches are not results of anything Drover sent.
pub const MAX_RESULTS: usize = 1000;
pub const MAX_TELEMETRY: usize = 1000;
pub const MAX_INFO: usize = 256;

/// Which cap a decoded message is over, if any.
fn over_caps(m: &crate::plugins::types::DeviceMessage) -> Option<String> {
    let caps = [
        (m.results.len(), MAX_RESULTS, "results"),
        (m.telemetry.len(), MAX_TELEMETRY, "telemetry points"),
        (m.info.len(), MAX_INFO, "device information values"),
    ];
    caps.iter().find(|(n, cap, _)| n > cap).map(|(n, cap, what)| {
        format!("a device message may carry at most {cap} {what}; this one carried {n}: nothing of it was recorded")
    })
}

/// A body's shape checked before any plugin parses it (`bounds`).
fn bounded(body: &[u8]) -> Result<(), ApiError> {
    crate::bounds::check(body).map_err(|e| ApiError::bad_request("body_refused", e.to_string()))
}

pub(crate) fn plugin_device(d: &DeviceRow) -> Device {
    Device { id: d.device_id.clone(), metadata: d.metadata_pairs(), session: d.session.clone() }
}

fn reported(s: ResultStatus) -> Reported {
    match s {
        ResultStatus::InProgress => Reported::InProgress,
        ResultStatus::Completed => Reported::Completed,
        ResultStatus::Error => Reported::Error,
        ResultStatus::NotNow => Reported::NotNow,
    }
}

/// Decode a device message, record what it carried, answer as the plugin says. A
/// message the plugin refuses changes nothing (400 with the plugin's words).
async fn handle_message(
    state: &AppState,
    plugin: &LoadedPlugin,
    device: &DeviceRow,
    channel: Channel,
    body: Bytes,
    queue: Vec<QueuedOperation>,
) -> Result<Response, ApiError> {
    let (message, queue_changed) = receive_noting(state, plugin, device, channel, &body).await?;
    match message.reply {
        Reply::None => Ok(StatusCode::OK.into_response()),
        Reply::Immediate(out) => render(out),
        Reply::PendingOperations => {
            // Encode sees what this message changed (metadata, session); re-read only then,
            // so a plain poll costs no extra query.
            let device = if message.info.is_empty() && message.session.is_none() {
                device.clone()
            } else {
                state.store.device_by_key(device.id).await?.unwrap_or_else(|| device.clone())
            };
            // A device that just said "not now" is not asked the same again in this
            // exchange (it would only say it again): it gets the next PENDING operation or
            // the "nothing left" answer; its NOTNOW ones are offered on its next call.
            let said_not_now = message.results.iter().any(|r| r.status == ResultStatus::NotNow);
            let which = Queue { skip_empty: false, skip_not_now: said_not_now };
            let limit = queue_limit(plugin);
            let read = still_queued(queue, limit, queue_changed, which, limit);
            match encode_queued(state, plugin, &device, ChannelKind::Http, "delivery:poll", which, read).await? {
                Some(out) => render(out),
                None => Ok(StatusCode::OK.into_response()),
            }
        }
    }
}

/// What of a queue read earlier (with `read_limit`) can stand for a read now, cut to the
/// plugin's `limit`; `None` when the store must be read again. That is when the results
/// of a message recorded since moved an operation into or out of the queue (`changed`),
/// when an operation in it has expired (`queued` expires it), or when leaving out the
/// NOTNOW ones shortened a full read (more may wait behind it).
pub(crate) fn still_queued(
    mut read: Vec<QueuedOperation>,
    read_limit: i64,
    changed: bool,
    which: Queue,
    limit: i64,
) -> Option<Vec<QueuedOperation>> {
    let now = crate::store::now_ms();
    if changed || read.iter().any(|q| q.expires_at.is_some_and(|e| e <= now)) {
        return None;
    }
    if which.skip_not_now {
        let full = read.len() as i64 >= read_limit;
        let before = read.len();
        read.retain(|q| q.state != "NOTNOW");
        if full && read.len() < before {
            return None;
        }
    }
    // Oldest first: the first `limit` are what a read with `limit` would have returned.
    read.truncate(usize::try_from(limit).unwrap_or(0));
    Some(read)
}

/// The part of every device message that does not depend on its channel: decode it with
/// the plugin, record the results it carries (idempotently), note that the device was
/// seen with what it reported. Returns the decoded message for the caller to answer.
pub(crate) async fn receive(
    state: &AppState,
    plugin: &LoadedPlugin,
    device: &DeviceRow,
    channel: Channel,
    body: &[u8],
) -> Result<crate::plugins::types::DeviceMessage, ApiError> {
    receive_noting(state, plugin, device, channel, body).await.map(|(message, _)| message)
}

/// [`receive`], also telling whether the results it recorded moved an operation into or
/// out of the device's queue (PENDING, NOTNOW).
pub(crate) async fn receive_noting(
    state: &AppState,
    plugin: &LoadedPlugin,
    device: &DeviceRow,
    channel: Channel,
    body: &[u8],
) -> Result<(crate::plugins::types::DeviceMessage, bool), ApiError> {
    let kind = match &channel {
        Channel::Http(_) => ChannelKind::Http,
        Channel::Mqtt(_) => ChannelKind::Mqtt,
        Channel::Coap(_) => ChannelKind::Coap,
    };
    if let Err(e) = bounded(body) {
        state.stats.message(kind, true);
        return Err(e);
    }
    let decoded = plugin.decode(Source::Device(device.id), plugin_device(device), channel, body.to_vec()).await;
    state.stats.message(kind, matches!(decoded, Err(CallError::Rejected(_))));
    let message = decoded.map_err(|e| match e {
        CallError::Rejected(p) => ApiError::bad_request("bad_device_message", p.message),
        other => other.into(),
    })?;
    // Bounded before anything is recorded: a message over a cap changes nothing.
    if let Some(why) = over_caps(&message) {
        state.stats.message(kind, true);
        return Err(ApiError::bad_request("too_many", why));
    }
    if let Some(CheckIn::CheckOut) = &message.check_in {
        // The device left management (Apple CheckOut, the Windows unenrollment alert): as
        // an admin's removal, with the device as the actor. Results it carried are
        // recorded first.
        record_results(state, device, &message).await?;
        let cancelled = state.store.disenroll(device.id, "device:check-out").await?;
        state.events.publish(crate::events::Event::DeviceRemoved {
            device: device.id,
            device_type: device.device_type.clone(),
            device_id: device.device_id.clone(),
        });
        tracing::info!(device_type = %device.device_type, device_id = %device.device_id, cancelled, "device checked out");
        return Ok((message, true));
    }
    // What the device says about itself goes in before its results: whoever sees an
    // operation COMPLETED (an admin, a rollout) then also sees what it changed (a
    // firmware version, the values of a DeviceInfo read).
    if let Some(CheckIn::TokenUpdate(t)) = &message.check_in {
        // A new token also revives one the provider had refused.
        state.store.set_push_token(device.id, Some(&crate::wakeup::token_json(t))).await?;
        tracing::info!(device_type = %device.device_type, device_id = %device.device_id, transport = %t.transport, "push token updated");
    }
    if !message.telemetry.is_empty() {
        state.store.record_telemetry(device.id, &telemetry_points(&message.telemetry)).await?;
    }
    // `last_seen_at` to the second is plenty (devices turn unreachable after hours), so a
    // device calling in again within LAST_SEEN_RESOLUTION with nothing new costs no write.
    let seen_recently = device.status == "active"
        && device.last_seen_at.is_some_and(|t| crate::store::now_ms() - t < LAST_SEEN_RESOLUTION_MS);
    if !(seen_recently && message.info.is_empty() && message.session.is_none()) {
        state.store.touch_device(device.id, &message.info, message.session.as_deref()).await?;
    }
    let queue_changed = record_results(state, device, &message).await?;
    Ok((message, queue_changed))
}

/// Record the results a message carried (idempotently: a repeated report changes nothing).
/// Returns whether one moved an operation into or out of the queue (PENDING, NOTNOW).
async fn record_results(
    state: &AppState,
    device: &DeviceRow,
    message: &crate::plugins::types::DeviceMessage,
) -> Result<bool, ApiError> {
    use crate::ops::State;
    if message.results.is_empty() {
        return Ok(false);
    }
    let results: Vec<_> =
        message.results.iter().map(|r| (r.operation_id as i64, reported(r.status), r.response.clone())).collect();
    let queued = |s: State| matches!(s, State::Pending | State::NotNow);
    let mut queue_changed = false;
    for o in state.store.apply_results(device.id, &results).await? {
        match o {
            crate::store::ResultOutcome::Unknown { operation } => {
                tracing::warn!(device_type = %device.device_type, device_id = %device.device_id, operation, "result for an operation this device does not have: ignored");
            }
            crate::store::ResultOutcome::Applied { from, to, .. } => queue_changed |= queued(from) || queued(to),
            crate::store::ResultOutcome::Unchanged { .. } => {}
        }
    }
    Ok(queue_changed)
}

fn kind_of(s: &str) -> OperationKind {
    match s {
        "profile" => OperationKind::Profile,
        "policy" => OperationKind::Policy,
        _ => OperationKind::Command,
    }
}

/// Which of a device's queued operations `encode_queued` takes.
#[derive(Clone, Copy)]
pub(crate) struct Queue {
    /// Answer `None` when nothing is queued (a push has nothing to send; a poll still
    /// answers "nothing").
    pub skip_empty: bool,
    /// Leave NOTNOW operations out (the device just said "not now").
    pub skip_not_now: bool,
}

/// The device's queued operations encoded by its plugin for `kind`, after marking what
/// the plugin says it carried as delivered by `actor`. An operation the plugin cannot
/// encode ends in ERROR (recorded with the plugin's message) so it cannot block the queue.
/// `read` is the queue when the caller has read it already (see [`still_queued`]).
pub(crate) async fn encode_queued(
    state: &AppState,
    plugin: &LoadedPlugin,
    device: &DeviceRow,
    kind: ChannelKind,
    actor: &str,
    queue: Queue,
    mut read: Option<Vec<QueuedOperation>>,
) -> Result<Option<Outbound>, ApiError> {
    let limit = queue_limit(plugin);
    for _ in 0..=MAX_POISON_PER_CALL {
        let queued = match read.take() {
            Some(q) => q,
            None => state.store.queued(device.id, limit, queue.skip_not_now).await?,
        };
        if queued.is_empty() && queue.skip_empty {
            return Ok(None);
        }
        match plugin.encode(Source::Device(device.id), plugin_device(device), plugin_operations(&queued), kind).await {
            Ok(encoded) => {
                let delivered: Vec<i64> = encoded
                    .delivered
                    .iter()
                    .map(|&id| id as i64)
                    .filter(|id| queued.iter().any(|q| q.id == *id))
                    .collect();
                state.store.mark_delivered(device.id, &delivered, actor).await?;
                state.stats.sent(kind, delivered.len());
                if let Some(s) = &encoded.session {
                    state.store.touch_device(device.id, &[], Some(s)).await?;
                }
                return Ok(Some(encoded.output));
            }
            Err(CallError::Rejected(e)) if !queued.is_empty() => {
                // The oldest queued operation is the one to blame first.
                let poison = queued[0].id;
                let response = json!({"error": e.message}).to_string();
                tracing::warn!(operation = poison, "plugin cannot encode operation: ending it in ERROR: {}", e.message);
                state.store.fail(device.id, poison, response, actor).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal("too many operations the plugin cannot encode in one call"))
}

/// How far ahead of the server's clock a device's clock may be.
pub const MAX_CLOCK_SKEW_MS: i64 = 10 * 60 * 1000;

/// Telemetry as stored: a point without a time (or with one more than
/// [`MAX_CLOCK_SKEW_MS`] ahead) was measured when received; a number that is not finite has
/// no JSON form and is dropped.
fn telemetry_points(points: &[crate::plugins::types::TelemetryPoint]) -> Vec<crate::store::Point> {
    use crate::plugins::types::TelemetryValue as V;
    let now = crate::store::now_ms();
    points
        .iter()
        .filter_map(|p| {
            let value = match &p.value {
                // WIT numbers are f64; a whole number is shown as the integer it was.
                V::Number(n) if n.fract() == 0.0 && n.abs() < 9e15 => serde_json::Value::from(*n as i64),
                V::Number(n) => serde_json::Number::from_f64(*n).map(serde_json::Value::Number)?,
                V::Text(t) => serde_json::Value::String(t.clone()),
                V::Boolean(b) => serde_json::Value::Bool(*b),
            };
            // A time in the future beyond clock skew would never be purged by retention
            // and would pin the latest value for ever: such a point counts as measured now.
            let at = p
                .timestamp_ms
                .and_then(|t| i64::try_from(t).ok())
                .filter(|t| *t <= now + MAX_CLOCK_SKEW_MS)
                .unwrap_or(now);
            Some(crate::store::Point { name: p.name.clone(), at, value })
        })
        .collect()
}

pub(crate) fn plugin_operations(queued: &[crate::store::QueuedOperation]) -> Vec<Operation> {
    queued
        .iter()
        .map(|q| Operation {
            id: q.id as u64,
            code: q.code.clone(),
            kind: kind_of(&q.kind),
            payload: q.payload.clone(),
        })
        .collect()
}

fn render(out: Outbound) -> Result<Response, ApiError> {
    match out {
        Outbound::Http(r) => {
            let mut resp = Response::builder().status(
                StatusCode::from_u16(r.status)
                    .map_err(|_| ApiError::internal(format!("plugin answered with HTTP status {}", r.status)))?,
            );
            if let Some(ct) = r.content_type {
                resp = resp.header(header::CONTENT_TYPE, ct);
            }
            for (k, v) in r.headers {
                resp = resp.header(k, v);
            }
            resp.body(axum::body::Body::from(r.body))
                .map_err(|e| ApiError::internal(format!("plugin answer is not valid HTTP: {e}")))
        }
        _ => Err(ApiError::internal("the plugin answered an HTTP request with a non-HTTP message")),
    }
}

#[cfg(test)]
mod tests {
    use super::{Queue, still_queued};
    use crate::store::QueuedOperation;

    fn op(id: i64, state: &str, expires_at: Option<i64>) -> QueuedOperation {
        QueuedOperation { id, code: "C".into(), kind: "command".into(), payload: None, expires_at, state: state.into() }
    }

    fn ids(q: Option<Vec<QueuedOperation>>) -> Option<Vec<i64>> {
        q.map(|q| q.iter().map(|o| o.id).collect())
    }

    const ALL: Queue = Queue { skip_empty: false, skip_not_now: false };
    const NOT_NOW: Queue = Queue { skip_empty: false, skip_not_now: true };

    #[test]
    fn an_early_read_stands_when_nothing_moved() {
        let read = vec![op(1, "PENDING", None), op(2, "NOTNOW", None), op(3, "PENDING", None)];
        assert_eq!(ids(still_queued(read.clone(), 100, false, ALL, 100)), Some(vec![1, 2, 3]));
        // Cut to what the plugin takes, oldest first.
        assert_eq!(ids(still_queued(read.clone(), 100, false, ALL, 1)), Some(vec![1]));
        // A full read with no NOTNOW in it stands as it is.
        assert_eq!(ids(still_queued(vec![op(1, "PENDING", None)], 1, false, NOT_NOW, 1)), Some(vec![1]));
        // A read that was not full holds every queued operation: leaving out NOTNOW is exact.
        assert_eq!(ids(still_queued(read, 100, false, NOT_NOW, 100)), Some(vec![1, 3]));
    }

    #[test]
    fn the_store_is_read_again_when_the_early_read_may_be_wrong() {
        let read = vec![op(1, "PENDING", None)];
        // The message's results moved an operation into or out of the queue.
        assert_eq!(ids(still_queued(read, 100, true, ALL, 100)), None);
        // An operation in it has expired (`queued` expires it first).
        let expired = vec![op(1, "PENDING", Some(crate::store::now_ms() - 1)), op(2, "PENDING", None)];
        assert_eq!(ids(still_queued(expired, 100, false, ALL, 100)), None);
        // A full read shortened by leaving out NOTNOW: a PENDING one may wait behind it.
        assert_eq!(ids(still_queued(vec![op(1, "NOTNOW", None)], 1, false, NOT_NOW, 1)), None);
        let later = vec![op(1, "PENDING", Some(crate::store::now_ms() + 60_000))];
        assert_eq!(ids(still_queued(later, 100, false, ALL, 100)), Some(vec![1]), "not expired yet");
    }
}
