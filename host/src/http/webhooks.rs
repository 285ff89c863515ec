//! `/api/v1/webhooks`: subscriptions to the event log, their delivery log, enabling
//! again and redelivery; the operators' and each tenant's (a tenant's is named
//! `TENANT/NAME` and sent the events about its devices only). Delivery itself is
//! `crate::webhooks`.

use super::api::{Errors, MAX_PAGE};
use super::{Admin, ApiError, ApiJson, AppState, ErrorBody, Path, Query, TenantAdministrator, TenantViewer};
use crate::store::{DeliveryRow, NewWebhook, WebhookRow};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSubscription {
    /// 1 to 64 characters: letters, digits, `-`, `_`, `.`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$")]
    name: String,
    /// Where events are POSTed (http or https).
    url: String,
    /// Event-type prefixes to send (`operation.`, `device.removed`); absent or empty: all
    /// (so does an empty prefix).
    #[serde(default)]
    types: Vec<String>,
    /// Only events about devices of this type.
    device_type: Option<String>,
    /// Only events about devices in this group (static or dynamic), as it is when each
    /// event is delivered; a tenant's subscription names one of its tenant's groups.
    group: Option<String>,
    /// Only events about devices with this tag, as they are when each event is delivered.
    tag: Option<String>,
    /// `whsec_` and 24 to 64 bytes in base64; absent: Drover makes one (in this answer only).
    secret: Option<String>,
    /// Start after this event (a sequence number); absent: with the next event.
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    after: Option<i64>,
    /// The tenant whose subscription it is: an operator's choice (absent: the
    /// operators'); a tenant's admin subscribes for its own tenant.
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]{0,63}$")]
    tenant: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Subscription {
    /// A tenant's subscription is named `TENANT/NAME`.
    name: String,
    /// The tenant whose it is; absent: the operators'.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    url: String,
    types: Vec<String>,
    device_type: Option<String>,
    group: Option<String>,
    tag: Option<String>,
    enabled: bool,
    /// Why it was disabled.
    disabled_reason: Option<String>,
    /// The last event delivered (or not asked for): delivery continues after it.
    cursor: i64,
    /// Failed deliveries in a row.
    failures: i64,
    /// When the next attempt is due (ms since the Unix epoch).
    next_attempt_at: i64,
    created_by: String,
    created_at: i64,
}

impl From<WebhookRow> for Subscription {
    fn from(w: WebhookRow) -> Subscription {
        Subscription {
            types: serde_json::from_str(&w.types).unwrap_or_default(),
            name: w.name,
            tenant: w.tenant,
            url: w.url,
            device_type: w.device_type,
            group: w.group_name,
            tag: w.tag,
            enabled: w.enabled != 0,
            disabled_reason: w.disabled_reason,
            cursor: w.cursor,
            failures: w.failures,
            next_attempt_at: w.next_attempt_at,
            created_by: w.created_by,
            created_at: w.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct Created {
    #[serde(flatten)]
    subscription: Subscription,
    /// The signing secret: in this answer only.
    secret: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Subscribe a URL to events. Each is POSTed as JSON, signed in the Standard Webhooks form.
/// A tenant's subscription is sent the events about its tenant's devices only.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "admin", request_body = NewSubscription,
    responses((status = 201, body = Created), (status = 409, description = "The name is taken", body = ErrorBody), Errors))]
pub(super) async fn create_webhook(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    ApiJson(n): ApiJson<NewSubscription>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    if !valid_name(&n.name) {
        return Err(ApiError::bad_request("invalid", "`name`: 1 to 64 letters, digits, `-`, `_` or `.`"));
    }
    let url = crate::webhooks::check_url(&n.url, &state.webhooks)?;
    let secret = match n.secret {
        Some(s) => {
            crate::webhooks::secret_key(&s)
                .map_err(|why| ApiError::bad_request("invalid", format!("`secret`: {why}")))?;
            s
        }
        None => crate::webhooks::new_secret(),
    };
    let tenant = crate::tenants::of_new_principal(&state.store, admin.tenant.as_deref(), n.tenant.as_deref()).await?;
    // A tenant's subscription names its tenant's groups (as the tenant's callers do).
    let group = match &n.group {
        Some(g) => match crate::groups::find(&state.store, tenant.as_deref(), g).await? {
            Some(found) => Some(found.name),
            None => return Err(ApiError::bad_request("invalid", format!("`group`: there is no group `{g}`"))),
        },
        None => None,
    };
    if let Some(t) = &n.tag
        && let Some(why) = crate::store::tag_problem(t)
    {
        return Err(ApiError::bad_request("invalid", format!("`tag`: {why}")));
    }
    let cursor = match n.after {
        Some(a) if a >= 0 => a,
        Some(a) => return Err(ApiError::bad_request("invalid", format!("`after` {a}: a sequence number is ≥ 0"))),
        None => state.store.latest_event().await?,
    };
    let row = state
        .store
        .insert_webhook(&NewWebhook {
            name: crate::tenants::qualified(tenant.as_deref(), &n.name),
            url: url.to_string(),
            secret: secret.clone(),
            types: n.types,
            device_type: n.device_type,
            group_name: group,
            tag: n.tag,
            cursor,
            created_by: admin.actor(),
            tenant,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(Created { subscription: row.into(), secret })))
}

#[derive(Serialize, ToSchema)]
pub(super) struct Subscriptions {
    items: Vec<Subscription>,
}

/// Every subscription (never its secret); a tenant's callers, their tenant's.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "admin", responses((status = 200, body = Subscriptions), Errors))]
pub(super) async fn list_webhooks(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
) -> Result<Json<Subscriptions>, ApiError> {
    let items = state.store.webhooks(admin.tenant.as_deref()).await?.into_iter().map(Subscription::from).collect();
    Ok(Json(Subscriptions { items }))
}

/// The subscription `admin` names, if it may see it: any for an operator, its tenant's
/// for a tenant's caller (named with or without `TENANT/`); else 404.
async fn named(state: &AppState, admin: &Admin, name: &str) -> Result<WebhookRow, ApiError> {
    let found = state.store.webhook(&crate::tenants::qualified(admin.tenant.as_deref(), name)).await?;
    found
        .filter(|w| admin.reaches_tenant(&w.tenant))
        .ok_or_else(|| ApiError::not_found(format!("webhook `{name}` not found")))
}

/// One subscription and where its delivery stands.
#[utoipa::path(get, path = "/api/v1/webhooks/{name}", tag = "admin", params(("name" = String, Path)),
    responses((status = 200, body = Subscription), Errors))]
pub(super) async fn get_webhook(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
) -> Result<Json<Subscription>, ApiError> {
    Ok(Json(named(&state, &admin, &name).await?.into()))
}

/// Delete a subscription and its delivery log.
#[utoipa::path(delete, path = "/api/v1/webhooks/{name}", tag = "admin", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), Errors))]
pub(super) async fn delete_webhook(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let w = named(&state, &admin, &name).await?;
    if !state.store.delete_webhook(&w.name).await? {
        return Err(ApiError::not_found(format!("webhook `{name}` not found")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Enable a subscription again (after repeated failures disabled it): delivery resumes
/// with the event that failed.
#[utoipa::path(post, path = "/api/v1/webhooks/{name}/enable", tag = "admin", params(("name" = String, Path)),
    responses((status = 200, body = Subscription), Errors))]
pub(super) async fn enable_webhook(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<Json<Subscription>, ApiError> {
    let w = named(&state, &admin, &name).await?;
    if !state.store.enable_webhook(&w.name).await? {
        return Err(ApiError::not_found(format!("webhook `{name}` not found")));
    }
    Ok(Json(named(&state, &admin, &name).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Redeliver {
    /// Deliver again every event after this sequence number.
    #[schema(minimum = 0)]
    #[serde(deserialize_with = "super::extract::whole")]
    after: i64,
}

/// Deliver again, in order, every event after `after` that the subscription asks for.
#[utoipa::path(post, path = "/api/v1/webhooks/{name}/redeliver", tag = "admin", params(("name" = String, Path)),
    request_body = Redeliver, responses((status = 200, body = Subscription), Errors))]
pub(super) async fn redeliver(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Redeliver>,
) -> Result<Json<Subscription>, ApiError> {
    let after = r.after;
    if after < 0 {
        return Err(ApiError::bad_request("invalid", format!("`after` {after}: a sequence number is ≥ 0")));
    }
    let w = named(&state, &admin, &name).await?;
    if !state.store.rewind_webhook(&w.name, after).await? {
        return Err(ApiError::not_found(format!("webhook `{name}` not found")));
    }
    Ok(Json(named(&state, &admin, &name).await?.into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeliveryPage {
    /// Deliveries after this id (the previous page's `next_after`).
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Deliveries {
    /// Every attempt, oldest first: the event, the receiver's status or the error, the time taken.
    items: Vec<DeliveryRow>,
    next_after: Option<i64>,
}

/// A subscription's delivery log.
#[utoipa::path(get, path = "/api/v1/webhooks/{name}/deliveries", tag = "admin",
    params(("name" = String, Path), DeliveryPage), responses((status = 200, body = Deliveries), Errors))]
pub(super) async fn deliveries(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
    Query(p): Query<DeliveryPage>,
) -> Result<Json<Deliveries>, ApiError> {
    let w = named(&state, &admin, &name).await?;
    let limit = p.limit.unwrap_or(super::api::DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let items = state.store.deliveries(w.id, p.after.unwrap_or(0), limit).await?;
    let next_after = super::api::next_after(&items, limit, |d| d.id);
    Ok(Json(Deliveries { items, next_after }))
}
