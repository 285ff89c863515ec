//! The delivery engine: what happens to a device message whatever carried it (an HTTP
//! poll, an MQTT publish, a CoAP request or answer), and how a device's queue goes out.
//!
//! * [`receive`]: decode with the device type's plugin, bound what it carried, record the
//!   device's check-in (push token, check-out), telemetry, what it said about itself and
//!   the results of earlier operations (idempotently: a repeated report changes nothing).
//!   A message the plugin refuses, or one over a cap, changes nothing.
//! * [`encode_queued`]: the device's queued operations encoded by its plugin for a
//!   channel and marked delivered. An operation the plugin cannot encode ends in ERROR so
//!   it cannot block the queue.
//! * [`exchange`]: both, for a front that answers in the same exchange (a poll).
//!
//! Fronts (`http/agent.rs`, `mqtt/delivery.rs`, `coap/`) only carry bytes and map
//! [`Error`](crate::error::Error)s to their protocol.

use crate::core::Core;
use crate::device::Status;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::ops::Reported;
use crate::plugins::types::{
    Channel, ChannelKind, CheckIn, Device, DeviceMessage, Operation, Outbound, Reply, ResultStatus,
};
use crate::plugins::{CallError, LoadedPlugin, Source};
use crate::store::{DeviceRow, QueuedOperation};
use serde_json::json;

use crate::store::LAST_SEEN_RESOLUTION_MS;

/// At most this many operations go out in one answer, whatever the plugin allows.
pub const MAX_BATCH: i64 = 100;

/// How many times one answer retries `encode` after dropping an operation the plugin
/// cannot encode (each drop ends that operation in ERROR).
const MAX_POISON_PER_CALL: usize = 8;

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
pub fn bounded(body: &[u8]) -> Result<()> {
    crate::bounds::check(body).map_err(|e| Error::invalid("body_refused", e.to_string()))
}

pub fn plugin_device(d: &DeviceRow) -> Device {
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

/// Receive a device message and answer it in the same exchange, as its plugin's `reply`
/// says: nothing (`None`), the plugin's own answer, or the device's queued operations
/// encoded for `kind` (a poll). `queue` is the device's queue read with the device (one
/// query for both: most messages are polls). A message the plugin refuses changes nothing.
pub async fn exchange(
    state: &Core,
    plugin: &LoadedPlugin,
    device: &DeviceRow,
    channel: Channel,
    body: &[u8],
    queue: Vec<QueuedOperation>,
) -> Result<Option<Outbound>> {
    let kind = channel_kind(&channel);
    let (message, queue_changed) = receive_noting(state, plugin, device, channel, body).await?;
    match message.reply {
        Reply::None => Ok(None),
        Reply::Immediate(out) => Ok(Some(out)),
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
            encode_queued(state, plugin, &device, kind, POLL_ACTOR, which, read).await
        }
    }
}

/// How many queued operations one answer may carry: the plugin's `max-operations-per-
/// message`, within 1 ..= MAX_BATCH.
pub fn queue_limit(plugin: &LoadedPlugin) -> i64 {
    plugin
        .device_type_info()
        .and_then(|i| i.max_operations_per_message)
        .map_or(MAX_BATCH, |m| (m as i64).clamp(1, MAX_BATCH))
}

/// Who delivered, as transitions record it, by channel.
pub const POLL_ACTOR: &str = "delivery:poll";

/// Who hands out an operation sent as a CoAP request (`coap/exchange.rs`). Requests in
/// flight live in the sending replica's memory: a restart loses them, and the answer
/// timeout puts their operations back in the queue as for a poll.
pub const COAP_ACTOR: &str = "delivery:coap";

fn channel_kind(channel: &Channel) -> ChannelKind {
    match channel {
        Channel::Http(_) => ChannelKind::Http,
        Channel::Mqtt(_) => ChannelKind::Mqtt,
        Channel::Coap(_) => ChannelKind::Coap,
    }
}

/// What of a queue read earlier (with `read_limit`) can stand for a read now, cut to the
/// plugin's `limit`; `None` when the store must be read again. That is when the results
/// of a message recorded since moved an operation into or out of the queue (`changed`),
/// when an operation in it has expired (`queued` expires it), or when leaving out the
/// NOTNOW ones shortened a full read (more may wait behind it).
pub fn still_queued(
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
pub async fn receive(
    state: &Core,
    plugin: &LoadedPlugin,
    device: &DeviceRow,
    channel: Channel,
    body: &[u8],
) -> Result<DeviceMessage> {
    receive_noting(state, plugin, device, channel, body).await.map(|(message, _)| message)
}

/// [`receive`], also telling whether the results it recorded moved an operation into or
/// out of the device's queue (PENDING, NOTNOW).
pub async fn receive_noting(
    state: &Core,
    plugin: &LoadedPlugin,
    device: &DeviceRow,
    channel: Channel,
    body: &[u8],
) -> Result<(DeviceMessage, bool)> {
    let kind = channel_kind(&channel);
    if let Err(e) = bounded(body) {
        state.stats.message(kind, true);
        return Err(e);
    }
    let decoded = plugin.decode(Source::Device(device.id), plugin_device(device), channel, body.to_vec()).await;
    state.stats.message(kind, matches!(decoded, Err(CallError::Rejected(_))));
    let message = decoded.map_err(|e| match e {
        CallError::Rejected(p) => Error::invalid("bad_device_message", p.message),
        other => other.into(),
    })?;
    // Bounded before anything is recorded: a message over a cap changes nothing.
    if let Some(why) = over_caps(&message) {
        state.stats.message(kind, true);
        return Err(Error::invalid("too_many", why));
    }
    if let Some(CheckIn::CheckOut) = &message.check_in {
        // The device left management (Apple CheckOut, the Windows unenrollment alert): as
        // an admin's removal, with the device as the actor. Results it carried are
        // recorded first.
        record_results(state, device, &message).await?;
        crate::enrollment::remove(state, device, CHECK_OUT_ACTOR).await?;
        return Ok((message, true));
    }
    // What the device says about itself goes in before its results: whoever sees an
    // operation COMPLETED (an admin, a rollout) then also sees what it changed (a
    // firmware version, the values of a DeviceInfo read).
    if let Some(CheckIn::TokenUpdate(t)) = &message.check_in {
        // A new token also revives one the provider had refused.
        state.store.set_push_token(device.id, Some(&crate::push_token::to_json(t))).await?;
        tracing::info!(device_type = %device.device_type, device_id = %device.device_id, transport = %t.transport, "push token updated");
    }
    if !message.telemetry.is_empty() {
        let points = telemetry_points(&message.telemetry);
        state.store.record_telemetry(device.id, &points, state.rollups).await?;
        // Judged once stored: an alert never names a point that was not kept.
        crate::analytics::engine::observe(state, device, &points).await;
    }
    // `last_seen_at` to the second is plenty (devices turn unreachable after hours), so a
    // device calling in again within LAST_SEEN_RESOLUTION with nothing new costs no write.
    let seen_recently = device.status == Status::Active
        && device.last_seen_at.is_some_and(|t| crate::store::now_ms() - t < LAST_SEEN_RESOLUTION_MS);
    if !(seen_recently && message.info.is_empty() && message.session.is_none()) {
        state.store.touch_device(device.id, &message.info, message.session.as_deref()).await?;
        seen(state, device);
    }
    let queue_changed = record_results(state, device, &message).await?;
    Ok((message, queue_changed))
}

/// The actor of a device's own check-out.
pub const CHECK_OUT_ACTOR: &str = "device:check-out";

/// The actor of what a device reports, as events name it.
fn device_actor(device: &DeviceRow) -> String {
    format!("device:{}/{}", device.device_type, device.device_id)
}

/// Tell that a device was seen (its `last_seen_at` was written), and that it is active
/// again if it had been marked unreachable.
pub fn seen(state: &Core, device: &DeviceRow) {
    state.events.publish_frequent(|| Event::DeviceSeen { device: device.id });
    if device.status == Status::Unreachable {
        state.events.publish(Event::DeviceStatusChanged {
            device: device.id,
            device_type: device.device_type.clone(),
            device_id: device.device_id.clone(),
            status: Status::Active,
        });
    }
}

/// Record the results a message carried (idempotently: a repeated report changes nothing).
/// Returns whether one moved an operation into or out of the queue (PENDING, NOTNOW).
async fn record_results(
    state: &Core,
    device: &DeviceRow,
    message: &crate::plugins::types::DeviceMessage,
) -> Result<bool> {
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
            crate::store::ResultOutcome::Applied { operation, from, to } => {
                queue_changed |= queued(from) || queued(to);
                state.events.publish_frequent(|| Event::OperationChanged {
                    operation,
                    device: device.id,
                    from: Some(from),
                    to,
                    actor: device_actor(device),
                });
            }
            crate::store::ResultOutcome::Unchanged { .. } => {}
        }
    }
    Ok(queue_changed)
}

/// Which of a device's queued operations `encode_queued` takes.
#[derive(Clone, Copy)]
pub struct Queue {
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
pub async fn encode_queued(
    state: &Core,
    plugin: &LoadedPlugin,
    device: &DeviceRow,
    kind: ChannelKind,
    actor: &str,
    queue: Queue,
    mut read: Option<Vec<QueuedOperation>>,
) -> Result<Option<Outbound>> {
    let limit = queue_limit(plugin);
    let mut lost = 0;
    for _ in 0..=MAX_POISON_PER_CALL + MAX_LOST_CLAIMS {
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
                if !state.store.mark_delivered(device.id, &delivered, actor).await? {
                    // Another delivery (a push beside this poll, another replica) claimed
                    // one of these first: what it took is not sent again. Encode what is
                    // still queued.
                    lost += 1;
                    if lost > MAX_LOST_CLAIMS {
                        return Err(Error::new(
                            crate::error::Kind::Busy(std::time::Duration::from_secs(1)),
                            "busy",
                            "another delivery to this device is under way: try again",
                        ));
                    }
                    continue;
                }
                state.stats.sent(kind, delivered.len());
                for &operation in &delivered {
                    state.events.publish_frequent(|| Event::OperationChanged {
                        operation,
                        device: device.id,
                        from: None,
                        to: crate::ops::State::InProgress,
                        actor: actor.to_string(),
                    });
                }
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
                state.events.publish_frequent(|| Event::OperationChanged {
                    operation: poison,
                    device: device.id,
                    from: None,
                    to: crate::ops::State::Error,
                    actor: actor.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::internal("too many operations the plugin cannot encode in one call"))
}

/// Times one call re-reads the queue after another delivery claimed part of it first.
const MAX_LOST_CLAIMS: usize = 3;

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

pub fn plugin_operations(queued: &[crate::store::QueuedOperation]) -> Vec<Operation> {
    queued
        .iter()
        .map(|q| Operation { id: q.id as u64, code: q.code.clone(), kind: q.kind.into(), payload: q.payload.clone() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Queue, still_queued};
    use crate::store::QueuedOperation;

    fn op(id: i64, state: &str, expires_at: Option<i64>) -> QueuedOperation {
        QueuedOperation {
            id,
            code: "C".into(),
            kind: crate::ops::Kind::Command,
            payload: None,
            expires_at,
            state: state.into(),
        }
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
