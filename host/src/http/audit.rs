//! The audit trail of the admin API: every call that may change something (any method but
//! GET, HEAD and OPTIONS) by an authenticated admin token is an `admin.action` event, with
//! the token's name and role, the route and path, and the outcome: `ok`, `refused` (the
//! role does not allow it: 403) or `failed` (any other error; nothing changed). A call
//! without a valid token has no actor and is not recorded (anyone could fill the table).
//!
//! One middleware over every admin route, so a new route is audited without anyone
//! remembering to: the role extractors (`extract.rs`) tell it who the caller was.

use super::api::{Errors, MAX_PAGE};
use super::{Admin, AppState, Query, TenantViewer};
use crate::store::{ADMIN_ACTION, EventQuery, EventRow, NewEvent, Outcome};
use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use utoipa::{IntoParams, ToSchema};

/// Where the role extractor leaves the caller it authenticated, and a handler what it
/// wants the trail to say beyond the path (a created token's name).
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<Slot>>);

#[derive(Default)]
struct Slot {
    admin: Option<Admin>,
    data: Option<serde_json::Value>,
}

impl AuditSlot {
    pub fn set_admin(&self, admin: &Admin) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).admin = Some(admin.clone());
    }

    /// Details for the trail (JSON); never a secret.
    pub fn set_data(&self, data: serde_json::Value) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).data = Some(data);
    }

    fn take(&self) -> (Option<Admin>, Option<serde_json::Value>) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (slot.admin.take(), slot.data.take())
    }
}

/// The middleware: lets the call run, then records it.
pub(super) async fn record(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let slot = AuditSlot::default();
    request.extensions_mut().insert(slot.clone());
    let path = request.uri().path().to_string();
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let action = format!("{} {}", request.method(), route.as_deref().unwrap_or(&path));
    let response = next.run(request).await;
    let (Some(admin), data) = slot.take() else {
        return response;
    };
    let status = response.status();
    let outcome = match status.as_u16() {
        200..=299 => Outcome::Ok,
        403 => Outcome::Refused,
        _ => Outcome::Failed,
    };
    let event = NewEvent {
        event_type: ADMIN_ACTION.into(),
        // A token by its name; a user's login as `user:NAME` (a token may share the name).
        actor: Some(match &admin.user {
            Some(u) => format!("user:{u}"),
            None => admin.name.clone(),
        }),
        role: Some(admin.role.as_str().into()),
        action: Some(action),
        target: Some(path),
        outcome: Some(outcome.as_str().into()),
        status: Some(status.as_u16().into()),
        data: data.map(|d| d.to_string()),
        device: None,
        // A tenant's callers' rows are the tenant's: its admins read them in the trail and
        // in its event log, and no other tenant does.
        tenant: admin.tenant.clone(),
    };
    // The change (if any) is committed: a failed audit write cannot undo it, so it is
    // logged loudly rather than turned into an error for a call that succeeded.
    if let Err(e) = state.store.append_event(&event).await {
        tracing::error!(target: "audit", error = %e, action = ?event.action, actor = ?event.actor, "audit row not written");
    }
    response
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// The acting token's name.
    actor: Option<String>,
    /// The route, as recorded: `POST /api/v1/groups/{name}/members`.
    action: Option<String>,
    /// Paths starting with this: `/api/v1/devices/android/`.
    target: Option<String>,
    /// `ok`, `refused` or `failed`.
    #[param(inline)]
    outcome: Option<Outcome>,
    /// From this time (milliseconds since the Unix epoch, inclusive).
    since: Option<i64>,
    /// Before this time (milliseconds, exclusive).
    until: Option<i64>,
    /// Entries after this sequence number (the previous page's `next_after`).
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct AuditPage {
    /// Oldest first.
    items: Vec<EventRow>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<i64>,
}

/// The audit trail: admin-API calls that changed something, failed, or were refused. A
/// tenant's admins and viewers read their tenant's callers' rows only.
#[utoipa::path(get, path = "/api/v1/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditPage), Errors))]
pub(super) async fn list_audit(
    State(state): State<AppState>,
    TenantViewer(viewer): TenantViewer,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, super::ApiError> {
    let limit = q.limit.unwrap_or(super::api::DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let query = EventQuery {
        event_type: Some(ADMIN_ACTION.into()),
        type_prefix: None,
        type_prefixes: Vec::new(),
        up_to: None,
        group: None,
        tag: None,
        actor: q.actor,
        action: q.action,
        target_prefix: q.target,
        outcome: q.outcome.map(|o| o.as_str().to_string()),
        since: q.since,
        until: q.until,
        // An operator reads the whole server's trail; a tenant's caller (not scoped:
        // `TenantViewer`) only its tenant's rows, which name no device.
        within: viewer.tenant.as_deref().map(crate::scope::Reach::tenant),
        tenant_events: viewer.tenant.clone(),
    };
    let items = state.store.events(&query, q.after.unwrap_or(0), limit).await?;
    let next_after = super::api::next_after(&items, limit, |e| e.seq);
    Ok(Json(AuditPage { items, next_after }))
}
