//! `GET /api/v1/events`: the durable event log, as pages of JSON or as a live stream of
//! Server-Sent Events (with `Accept: text/event-stream`) that resumes after
//! `Last-Event-ID`.
//!
//! A reader's cursor only moves over *settled* events. On PostgreSQL a sequence number is
//! taken when a transaction inserts, and transactions commit in any order: a reader that
//! saw 12 and moved past it could miss 11 when 11 commits a moment later. So the cursor
//! stops before the first missing number, unless the event after it is older than
//! [`crate::store::SETTLE`] (a transaction that took that number has rolled back, or an old event was
//! deleted by retention). On SQLite, with one writer, numbers are committed in order.

use super::api::{Errors, MAX_PAGE};
use super::{ApiError, AppState, Query, ScopedViewer};
use crate::scope::Reach;
use crate::store::{EventQuery, EventRow, Store};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// How often a live stream looks for new events (another replica may have written them).
const STREAM_TICK: Duration = Duration::from_millis(250);

/// How often a stream checks again that its caller's token is live (one indexed read).
const RECHECK: Duration = Duration::from_secs(2);

/// Live streams open at once, server-wide. Each holds a connection for as long as its
/// reader likes; without a cap, one token could take every connection the listener has.
pub const MAX_STREAMS: usize = 64;
static STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_STREAMS);

#[derive(Deserialize, IntoParams, Clone)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only events whose type starts with this: `device.`, `admin.action`.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Events after this sequence number. Absent: from the start of the log for a page;
    /// for a stream, from `Last-Event-ID`, else from now on.
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100). Pages only.
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct EventsPage {
    /// Oldest first.
    items: Vec<EventRow>,
    /// Where to continue: pass as `after` (or `Last-Event-ID`) to get what follows; the
    /// same value when nothing new has settled yet.
    next_after: i64,
}

/// What a caller reads of the log: with `within`, only the events about a device in that
/// reach, and with `tenant` also its tenant's events about no device (its groups,
/// policies, subscriptions).
#[derive(Clone)]
struct Narrow {
    within: Option<Reach>,
    tenant: Option<String>,
}

/// One page of events from `after`, and the cursor after it, narrowed by `narrow`.
async fn page(
    store: &Store,
    kind: &Option<String>,
    narrow: &Narrow,
    after: i64,
    limit: i64,
) -> Result<EventsPage, ApiError> {
    let horizon = store.settled(after).await?;
    if horizon == after {
        return Ok(EventsPage { items: Vec::new(), next_after: after });
    }
    let q = EventQuery {
        type_prefix: kind.clone(),
        up_to: Some(horizon),
        within: narrow.within.clone(),
        tenant_events: narrow.tenant.clone(),
        ..Default::default()
    };
    let items = store.events(&q, after, limit).await?;
    // A full page continues after its last item; otherwise everything up to the horizon
    // has been seen (the rest did not match the filter).
    let next_after = match items.last() {
        Some(last) if items.len() as i64 == limit => last.seq,
        _ => horizon,
    };
    Ok(EventsPage { items, next_after })
}

/// The event log: a page of JSON, or with `Accept: text/event-stream` a live stream of
/// Server-Sent Events (`id` = sequence number, `event` = type, `data` = the event as
/// JSON), resumed after `Last-Event-ID`. A scoped or tenant's caller gets only the events
/// about its devices, and a tenant's caller without a scope also its tenant's events about
/// no device (its groups, policies, subscriptions).
#[utoipa::path(get, path = "/api/v1/events", tag = "admin", params(EventsQuery),
    responses((status = 200, body = EventsPage,
        description = "A page of events; with `Accept: text/event-stream`, a live stream of them"), Errors))]
pub(super) async fn events(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    parts: axum::http::request::Parts,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let headers = &parts.headers;
    // Resolved once: a stream keeps the reach it started with (a scope's groups as they
    // were then).
    let within = admin.reach(&state).await?;
    let tenant = admin.tenant.clone().filter(|_| admin.scope.is_none());
    let within = Narrow { within, tenant };
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().starts_with("text/event-stream")));
    if !wants_stream {
        let limit = q.limit.unwrap_or(super::api::DEFAULT_PAGE).clamp(1, MAX_PAGE);
        return Ok(Json(page(&state.store, &q.event_type, &within, q.after.unwrap_or(0), limit).await?).into_response());
    }
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()).ok_or_else(|| {
            ApiError::bad_request("invalid", "`Last-Event-ID` must be the sequence number of an event")
        })?),
    };
    let permit = STREAMS.try_acquire().map_err(|_| {
        let mut e = ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("{MAX_STREAMS} event streams are open already; page with `after` instead, or retry later"),
        );
        e.retry_after = Some(30);
        e
    })?;
    let start = match last_event_id.or(q.after) {
        Some(after) => after.max(0),
        None => state.store.latest_event().await?,
    };
    let store = state.store.clone();
    let kind = q.event_type;
    // The caller's token is checked again while the stream runs: revoking it (or
    // disabling its user) ends the stream within `RECHECK`, as it refuses the next call.
    let standing = super::extract::Standing::of(&parts, &admin);
    let checked = tokio::time::Instant::now();
    let stream = futures_util::stream::unfold(
        (store, kind, within, start, std::collections::VecDeque::<EventRow>::new(), permit, standing, checked),
        |(store, kind, within, mut cursor, mut buffered, permit, standing, mut checked)| async move {
            loop {
                if checked.elapsed() >= RECHECK {
                    match &standing {
                        Some(s) => match s.holds(&store).await {
                            Ok(true) => checked = tokio::time::Instant::now(),
                            Ok(false) => {
                                tracing::info!(admin = ?s, "event stream closed: its caller's access ended");
                                return None;
                            }
                            // The database is away: the page read below says so; keep the
                            // stream and check again at the next turn.
                            Err(e) => tracing::warn!(error = ?e, "event stream: the caller could not be checked"),
                        },
                        None => return None,
                    }
                }
                if let Some(e) = buffered.pop_front() {
                    let sse = SseEvent::default()
                        .id(e.seq.to_string())
                        .event(e.event_type.clone())
                        .json_data(&e)
                        .unwrap_or_else(|_| SseEvent::default().comment("unserialisable event"));
                    return Some((
                        Ok::<_, std::convert::Infallible>(sse),
                        (store, kind, within, cursor, buffered, permit, standing, checked),
                    ));
                }
                match page(&store, &kind, &within, cursor, 500).await {
                    Ok(p) if !p.items.is_empty() => {
                        cursor = p.next_after;
                        buffered.extend(p.items);
                    }
                    Ok(p) => {
                        cursor = p.next_after;
                        tokio::time::sleep(STREAM_TICK).await;
                    }
                    Err(e) => {
                        // The database is away: say so on the stream and try again.
                        tracing::warn!(error = ?e, "event stream read failed");
                        tokio::time::sleep(STREAM_TICK * 4).await;
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}
