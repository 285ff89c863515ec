//! The admin REST API under `/api/v1`. JSON in and out; errors are
//! `{"error": {"code": "<stable code>", "message": "<what was wrong>"}}`.

use crate::auth::{Admin, Role};
use crate::plugins::{CallError, Fault, PluginFault};
use crate::server::AppState;
use crate::store::{
    ActivityRow, DeviceQuery, DeviceRow, GroupRow, MAX_EXPLICIT_DEVICES, NewActivity, OperationRow, StoreError,
    TargetSet, TelemetryRow, TransitionRow,
};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

mod plugins;

/// An error for an API caller: HTTP status, a stable code, a message saying what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds.max(1));
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `unknown_operation`, `malformed_json`.
    code: String,
    /// What was wrong, for a person.
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        match self.retry_after {
            Some(s) => (self.status, [(header::RETRY_AFTER, s.to_string())], Json(body)).into_response(),
            None => (self.status, Json(body)).into_response(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(what) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", format!("{what} already exists"))
            }
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> ApiError {
        match e {
            CallError::Rejected(p) => {
                use crate::plugins::types::ErrorCode as C;
                let code = match p.code {
                    C::Malformed => "malformed",
                    C::Invalid => "invalid",
                    C::UnknownOperation => "unknown_operation",
                    C::Unsupported => "unsupported",
                    C::Rejected => "rejected",
                    C::Internal => "plugin_error",
                };
                ApiError::bad_request(code, p.message)
            }
            // Back-pressure, not a fault: every instance slot is in use.
            CallError::Fault(f @ PluginFault { fault: Fault::Busy(_), .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", f.to_string()).retry_after(1)
            }
            // The sender's input made plugins fault repeatedly: refused for a while.
            CallError::Fault(f @ PluginFault { fault: Fault::Held(retry), .. }) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "held", f.to_string()).retry_after(retry.as_secs())
            }
            // The input made the plugin hit a limit or trap: this request is refused; the
            // fault is charged to its sender (plugins::sources).
            CallError::Fault(f) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "plugin_fault", f.to_string()),
            CallError::WrongKind(p) => ApiError::internal(format!("plugin {p} is not a device type")),
        }
    }
}

/// A JSON request body. The content type is not insisted on (curl's `-d` sends a form
/// type); the body must parse, and an error names the line, column and problem.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request("malformed_json", e.body_text()))?;
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request("malformed_json", format!("request body: {e}")))
    }
}

/// The admin API's routes and its OpenAPI document, built from the same handler list
/// (`routes!`), so the document cannot drift from what is served.
pub fn router() -> Router<AppState> {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_devices))
        .routes(routes!(get_device, remove_device))
        .routes(routes!(set_tags))
        .routes(routes!(device_telemetry))
        .routes(routes!(revoke_credentials))
        .routes(routes!(restore_device))
        .routes(routes!(import_devices))
        .routes(routes!(list_groups, create_group))
        .routes(routes!(get_group, delete_group))
        .routes(routes!(add_members))
        .routes(routes!(list_operations, add_operation))
        .routes(routes!(get_operation))
        .routes(routes!(cancel_operation))
        .routes(routes!(list_activities))
        .routes(routes!(get_activity))
        .routes(routes!(cancel_activity))
        .routes(routes!(plugins::list_plugins, plugins::upload_plugin))
        .routes(routes!(plugins::get_plugin))
        .routes(routes!(plugins::rollback_plugin))
        .routes(routes!(plugins::suspend_plugin))
        .routes(routes!(plugins::enable_plugin))
        .routes(routes!(plugins::get_grants, plugins::put_grants))
        .routes(routes!(plugins::list_keys, plugins::add_key))
        .routes(routes!(plugins::remove_key))
        .routes(routes!(plugins::get_settings, plugins::put_settings))
        .routes(routes!(get_plugin_settings, put_plugin_settings))
        .routes(routes!(create_admin_token))
        .routes(routes!(create_enrollment_token))
        .split_for_parts();
    let document = Bytes::from(api.to_pretty_json().unwrap_or_default());
    // Uploads are the large bodies; every handler authenticates before reading its body.
    let router = router.layer(axum::extract::DefaultBodyLimit::max(plugins::MAX_UPLOAD));
    router.route(
        "/api/v1/openapi.json",
        get(move || {
            let document = document.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], document) }
        }),
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Drover admin API",
        description = "Devices, groups, operations and plugins of a Drover server. Every call takes an \
                       admin token (`Authorization: Bearer drv_admin_…`) whose role is viewer, operator or admin. \
                       Errors are `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "devices", description = "Enrolled and pre-registered devices, their tags and credentials"),
        (name = "groups", description = "Static groups (member lists) and dynamic groups (saved queries)"),
        (name = "operations", description = "Operations and activities: add, follow, cancel"),
        (name = "plugins", description = "Plugin uploads, versions, rollback, suspension, grants and publisher keys"),
        (name = "admin", description = "Plugin settings, tokens, server settings"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The error answers every endpoint can give.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Errors {
    /// The request is malformed or invalid; the message names the problem.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No admin token, or an unknown or revoked one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role does not allow this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// What the path names does not exist.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Return items after this id (the previous page's `next_after`).
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

impl Page {
    fn bounds(&self) -> (i64, i64) {
        (self.after.unwrap_or(0), self.limit.unwrap_or(100).clamp(1, 1000))
    }
}

/// The `next_after` of a page: the last id when the page is full.
fn next_after<T>(rows: &[T], limit: i64, id: impl Fn(&T) -> i64) -> Option<i64> {
    (rows.len() as i64 == limit).then(|| rows.last().map(id)).flatten()
}

/// A device as the API shows it.
#[derive(Serialize, ToSchema)]
struct Device {
    device_type: String,
    device_id: String,
    name: String,
    owner: Option<String>,
    /// `BYOD` or `COPE`.
    ownership: String,
    /// `registered` (pre-registered, not yet enrolled), `active`, `unreachable` (not seen
    /// for the configured hours) or `removed`.
    status: String,
    /// Milliseconds since the Unix epoch.
    enrolled_at: i64,
    last_seen_at: Option<i64>,
    /// What the device reported about itself.
    #[schema(value_type = Object)]
    metadata: Value,
    tags: Vec<String>,
    /// The newest value of each telemetry name (one device only, not in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    telemetry: Option<Vec<Telemetry>>,
    /// The transport plugin that wakes it (`fcm`, `apns` …), if it has a push token.
    push_transport: Option<String>,
    /// Its last or next wake-up (one device only, not in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    wake_up: Option<crate::store::WakeupRow>,
}

/// A telemetry value.
#[derive(Serialize, ToSchema)]
struct Telemetry {
    name: String,
    /// When it was measured, milliseconds since the Unix epoch.
    at: i64,
    /// As reported: a number, boolean or string.
    #[schema(value_type = Object)]
    value: Value,
}

impl From<TelemetryRow> for Telemetry {
    fn from(r: TelemetryRow) -> Telemetry {
        Telemetry { value: serde_json::from_str(&r.value).unwrap_or(Value::Null), name: r.name, at: r.at }
    }
}

impl Device {
    fn new(d: &DeviceRow, tags: Vec<String>) -> Device {
        Device {
            device_type: d.device_type.clone(),
            device_id: d.device_id.clone(),
            name: d.name.clone(),
            owner: d.owner.clone(),
            ownership: d.ownership.clone(),
            status: d.status.clone(),
            enrolled_at: d.enrolled_at,
            last_seen_at: d.last_seen_at,
            metadata: serde_json::from_str(&d.metadata).unwrap_or(json!({})),
            tags,
            telemetry: None,
            push_transport: d
                .push_token
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .and_then(|v| v["transport"].as_str().map(str::to_string)),
            wake_up: None,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct DevicePage {
    items: Vec<Device>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<i64>,
}

async fn device_or_404(state: &AppState, device_type: &str, device_id: &str) -> Result<DeviceRow, ApiError> {
    state
        .store
        .device(device_type, device_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("device {device_type}/{device_id} not found")))
}

async fn group_or_404(state: &AppState, name: &str) -> Result<GroupRow, ApiError> {
    state.store.group(name).await?.ok_or_else(|| ApiError::not_found(format!("group `{name}` not found")))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeviceFilter {
    /// Only devices of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    device_type: Option<String>,
    /// Only devices in this status.
    status: Option<String>,
    /// Only devices with this tag.
    tag: Option<String>,
    /// Only devices in this group (static or dynamic).
    group: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// List devices, filtered, in pages.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(DeviceFilter),
    responses((status = 200, body = DevicePage), Errors))]
async fn list_devices(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<DeviceFilter>,
) -> Result<Json<DevicePage>, ApiError> {
    admin.require(Role::Viewer)?;
    let (after, limit) = Page { after: q.after, limit: q.limit }.bounds();
    let group = match &q.group {
        Some(name) => Some(group_or_404(&state, name).await?),
        None => None,
    };
    let rows = state
        .store
        .list_devices(q.device_type.as_deref(), q.status.as_deref(), q.tag.as_deref(), group.as_ref(), after, limit)
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for d in &rows {
        items.push(Device::new(d, state.store.tags(d.id).await?));
    }
    Ok(Json(DevicePage { items, next_after: next_after(&rows, limit, |d| d.id) }))
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{device_type}/{device_id}", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    responses((status = 200, body = Device), Errors))]
async fn get_device(
    State(state): State<AppState>,
    admin: Admin,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Device>, ApiError> {
    admin.require(Role::Viewer)?;
    let d = device_or_404(&state, &t, &id).await?;
    let mut device = Device::new(&d, state.store.tags(d.id).await?);
    device.telemetry = Some(state.store.latest_telemetry(d.id).await?.into_iter().map(Telemetry::from).collect());
    device.wake_up = state.store.wakeup(d.id).await?;
    Ok(Json(device))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TelemetryFilter {
    /// Only this name, e.g. `battery`.
    name: Option<String>,
    /// Only points received before this one (the previous page's `next_before`).
    before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct TelemetryPage {
    /// Last received first.
    items: Vec<Telemetry>,
    /// Pass as `before` for older points; absent on the last page.
    next_before: Option<i64>,
}

/// A device's reported telemetry, last received first.
#[utoipa::path(get, path = "/api/v1/devices/{device_type}/{device_id}/telemetry", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path), TelemetryFilter),
    responses((status = 200, body = TelemetryPage), Errors))]
async fn device_telemetry(
    State(state): State<AppState>,
    admin: Admin,
    Path((t, id)): Path<(String, String)>,
    Query(q): Query<TelemetryFilter>,
) -> Result<Json<TelemetryPage>, ApiError> {
    admin.require(Role::Viewer)?;
    let d = device_or_404(&state, &t, &id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = state.store.telemetry(d.id, q.name.as_deref(), q.before, limit).await?;
    let next_before = next_after(&rows, limit, |r| r.id);
    Ok(Json(TelemetryPage { items: rows.into_iter().map(Telemetry::from).collect(), next_before }))
}

#[derive(Serialize, ToSchema)]
struct Removed {
    device_type: String,
    device_id: String,
    status: String,
    /// Live operations cancelled by the removal.
    cancelled_operations: u64,
}

/// Disenroll a device: every live operation is cancelled, its credentials revoked, its
/// status `removed`. Its history is kept; it may enroll again.
#[utoipa::path(delete, path = "/api/v1/devices/{device_type}/{device_id}", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    responses((status = 200, body = Removed), Errors))]
async fn remove_device(
    State(state): State<AppState>,
    admin: Admin,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Removed>, ApiError> {
    admin.require(Role::Admin)?;
    let d = device_or_404(&state, &t, &id).await?;
    let cancelled = state.store.disenroll(d.id, &admin.actor()).await?;
    state.events.publish(crate::events::Event::DeviceRemoved {
        device: d.id,
        device_type: t.clone(),
        device_id: id.clone(),
    });
    Ok(Json(Removed { device_type: t, device_id: id, status: "removed".into(), cancelled_operations: cancelled }))
}

/// Bring a removed device back as it was: its tags and static groups kept, its status
/// `registered` until it enrolls again, with an enrollment token. (Enrolled again without
/// a restore, a removed identity starts clean: nothing of the old device passes to
/// whoever enrolls it.)
#[utoipa::path(post, path = "/api/v1/devices/{device_type}/{device_id}/restore", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    responses((status = 200, body = Device), Errors))]
async fn restore_device(
    State(state): State<AppState>,
    admin: Admin,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Device>, ApiError> {
    admin.require(Role::Admin)?;
    let d = device_or_404(&state, &t, &id).await?;
    if !state.store.restore_device(d.id).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_removed",
            format!("device {t}/{id} is {}, not removed: there is nothing to restore", d.status),
        ));
    }
    let d = device_or_404(&state, &t, &id).await?;
    Ok(Json(Device::new(&d, state.store.tags(d.id).await?)))
}

#[derive(Serialize, ToSchema)]
struct Revoked {
    /// Live credentials revoked.
    revoked: u64,
}

/// Revoke every credential of a device (a lost or stolen device). It can no longer call
/// in, and its live MQTT connections and LwM2M registration end at once; its operations
/// stay queued. Remove it and enroll it again to give it a new one.
#[utoipa::path(post, path = "/api/v1/devices/{device_type}/{device_id}/revoke-credentials", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    responses((status = 200, body = Revoked), Errors))]
async fn revoke_credentials(
    State(state): State<AppState>,
    admin: Admin,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Revoked>, ApiError> {
    admin.require(Role::Admin)?;
    let d = device_or_404(&state, &t, &id).await?;
    let revoked = state.store.revoke_device_credentials(d.id).await?;
    tracing::info!(device_type = %t, device_id = %id, revoked, actor = %admin.actor(), "device credentials revoked");
    // Its live sessions end too (the embedded broker's connections, a LwM2M registration).
    state.events.publish(crate::events::Event::CredentialsRevoked { device: d.id, device_type: t, device_id: id });
    Ok(Json(Revoked { revoked }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Tags {
    /// 1-64 letters, digits and `- _ . : =` each.
    tags: Vec<String>,
}

fn tag_problem(tag: &str) -> Option<String> {
    (tag.is_empty() || tag.len() > 64 || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:=".contains(&b)))
        .then(|| format!("tag `{tag}`: use 1-64 letters, digits and - _ . : ="))
}

/// Replace a device's tags.
#[utoipa::path(put, path = "/api/v1/devices/{device_type}/{device_id}/tags", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    request_body = Tags, responses((status = 200, body = Device), Errors))]
async fn set_tags(
    State(state): State<AppState>,
    admin: Admin,
    Path((t, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<Tags>,
) -> Result<Json<Device>, ApiError> {
    admin.require(Role::Operator)?;
    if let Some(p) = body.tags.iter().find_map(|t| tag_problem(t)) {
        return Err(ApiError::bad_request("invalid", p));
    }
    let d = device_or_404(&state, &t, &id).await?;
    let mut tags = body.tags;
    tags.sort();
    tags.dedup();
    state.store.set_tags(d.id, &tags).await?;
    Ok(Json(Device::new(&d, tags)))
}

/// A group as the API shows it.
#[derive(Serialize, ToSchema)]
struct Group {
    name: String,
    description: String,
    created_at: i64,
    /// For a dynamic group, the query its devices match; absent for a static group.
    query: Option<DeviceQuery>,
    /// How many live devices it holds now.
    devices: i64,
}

impl Group {
    async fn new(state: &AppState, g: &GroupRow) -> Result<Group, ApiError> {
        Ok(Group {
            name: g.name.clone(),
            description: g.description.clone(),
            created_at: g.created_at,
            query: g.query(),
            devices: state.store.group_size(g).await?,
        })
    }
}

#[derive(Serialize, ToSchema)]
struct GroupList {
    items: Vec<Group>,
}

/// All groups with their current sizes.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", responses((status = 200, body = GroupList), Errors))]
async fn list_groups(State(state): State<AppState>, admin: Admin) -> Result<Json<GroupList>, ApiError> {
    admin.require(Role::Viewer)?;
    let mut items = Vec::new();
    for g in state.store.groups().await? {
        items.push(Group::new(&state, &g).await?);
    }
    Ok(Json(GroupList { items }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    /// 1 to 128 characters, unique.
    name: String,
    #[serde(default)]
    description: String,
    /// Makes the group dynamic: its devices are those matching the query when it is used.
    query: Option<DeviceQuery>,
}

/// Create a static group (add members later) or a dynamic one (with a query).
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = NewGroup,
    responses((status = 201, body = Group), (status = 409, description = "The name is taken", body = ErrorBody), Errors))]
async fn create_group(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(g): ApiJson<NewGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    admin.require(Role::Operator)?;
    if g.name.trim().is_empty() || g.name.len() > 128 {
        return Err(ApiError::bad_request("invalid", "group `name` must be 1 to 128 characters"));
    }
    if let Some(q) = &g.query {
        if let Some(p) = q.problem() {
            return Err(ApiError::bad_request("invalid", format!("`query`: {p}")));
        }
        if let Some(p) = q.tags.iter().find_map(|t| tag_problem(t)) {
            return Err(ApiError::bad_request("invalid", format!("`query`: {p}")));
        }
    }
    let row = state.store.create_group(&g.name, &g.description, g.query.as_ref()).await?;
    Ok((StatusCode::CREATED, Json(Group::new(&state, &row).await?)))
}

/// One group with its current size; list its devices with `GET /api/v1/devices?group=`.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 200, body = Group), Errors))]
async fn get_group(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<Group>, ApiError> {
    admin.require(Role::Viewer)?;
    let g = group_or_404(&state, &name).await?;
    Ok(Json(Group::new(&state, &g).await?))
}

/// Delete a group. Its devices stay, and operations already added for it stay queued.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_group(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(Role::Operator)?;
    let g = group_or_404(&state, &name).await?;
    state.store.delete_group(g.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A device named by type and id, as the API addresses devices.
#[derive(Deserialize, Serialize, Debug, Clone, ToSchema)]
#[serde(deny_unknown_fields)]
struct DeviceRef {
    #[serde(rename = "type")]
    device_type: String,
    id: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Members {
    devices: Vec<DeviceRef>,
}

#[derive(Serialize, ToSchema)]
struct MembersAdded {
    group: String,
    /// Devices named (those already members are left as they are).
    added: usize,
}

async fn resolve(state: &AppState, refs: &[DeviceRef]) -> Result<Vec<i64>, ApiError> {
    let mut keys = Vec::with_capacity(refs.len());
    for r in refs {
        let d = state.store.device(&r.device_type, &r.id).await?;
        match d {
            Some(d) if d.status != "removed" => keys.push(d.id),
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_device",
                    format!("device {}/{} is not enrolled", r.device_type, r.id),
                ));
            }
        }
    }
    Ok(keys)
}

/// Add devices to a static group.
#[utoipa::path(post, path = "/api/v1/groups/{name}/members", tag = "groups", params(("name" = String, Path)),
    request_body = Members,
    responses((status = 200, body = MembersAdded),
              (status = 409, description = "The group is dynamic: its query defines its devices", body = ErrorBody),
              Errors))]
async fn add_members(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(m): ApiJson<Members>,
) -> Result<Json<MembersAdded>, ApiError> {
    admin.require(Role::Operator)?;
    let group = group_or_404(&state, &name).await?;
    if group.query.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "dynamic_group",
            format!("group `{name}` is dynamic: its query defines its devices"),
        ));
    }
    let keys = resolve(&state, &m.devices).await?;
    state.store.add_members(group.id, &keys).await?;
    Ok(Json(MembersAdded { group: name, added: keys.len() }))
}

/// Who an operation is for: any mix of devices, groups and tags (union).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct Targets {
    #[serde(default)]
    devices: Vec<DeviceRef>,
    /// Group names, static or dynamic.
    #[serde(default)]
    groups: Vec<String>,
    /// Devices with any of these tags.
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddOperation {
    /// An operation code of the target devices' plugin (e.g. `DEVICE_RING`).
    code: String,
    /// Any JSON value; each target type's plugin validates it.
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
    /// `command`, `profile` or `policy`; checked against the plugin's catalogue when given.
    kind: Option<String>,
    targets: Targets,
    /// Seconds until the operation expires if not finished.
    ttl_secs: Option<i64>,
    /// Re-deliveries after a failed attempt, 0 to 100 (default 0).
    retries: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct Added {
    activity: ActivityRow,
    /// Operations stored: one per targeted device.
    operations: u64,
}

/// Add an operation: validated by each target type's plugin, then stored (activity and
/// one operation per device, in one transaction) before any delivery.
#[utoipa::path(post, path = "/api/v1/operations", tag = "operations", request_body = AddOperation,
    responses((status = 201, body = Added),
              (status = 503, description = "No plugin is loaded for a target's device type", body = ErrorBody),
              Errors))]
async fn add_operation(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(req): ApiJson<AddOperation>,
) -> Result<(StatusCode, Json<Added>), ApiError> {
    admin.require(Role::Operator)?;
    let t = &req.targets;
    if t.devices.is_empty() && t.groups.is_empty() && t.tags.is_empty() {
        return Err(ApiError::bad_request("invalid", "`targets` names no devices, groups or tags"));
    }
    if let Some(ttl) = req.ttl_secs.filter(|t| *t <= 0) {
        return Err(ApiError::bad_request("invalid", format!("`ttl_secs` is {ttl}: it must be positive")));
    }
    let retries = req.retries.unwrap_or(0);
    if !(0..=100).contains(&retries) {
        return Err(ApiError::bad_request("invalid", format!("`retries` is {retries}: use 0 to 100")));
    }
    if t.devices.len() > MAX_EXPLICIT_DEVICES {
        return Err(ApiError::bad_request(
            "too_many_devices",
            format!("{} devices listed; list at most {MAX_EXPLICIT_DEVICES} or target a group", t.devices.len()),
        ));
    }
    let mut targets =
        TargetSet { devices: resolve(&state, &t.devices).await?, tags: t.tags.clone(), ..Default::default() };
    for g in &t.groups {
        let group = state
            .store
            .group(g)
            .await?
            .ok_or_else(|| ApiError::bad_request("unknown_group", format!("group `{g}` does not exist")))?;
        match group.query() {
            Some(q) => targets.queries.push(q),
            None => targets.groups.push(group.id),
        }
    }
    let types = state.store.target_types(&targets).await?;
    if types.is_empty() {
        return Err(ApiError::bad_request("no_targets", "the targets match no enrolled device"));
    }

    // Validate once per device type among the targets.
    let payload = req.payload.filter(|p| !p.is_null()).map(|p| p.to_string());
    let mut kind: Option<String> = None;
    for ty in &types {
        let plugin = state.registry.device_type(ty).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_plugin",
                format!("no plugin is loaded for device type `{ty}`"),
            )
        })?;
        plugin.validate(&req.code, payload.as_deref()).await.map_err(|e| {
            let mut e = ApiError::from(e);
            e.message = format!("{ty}: {}", e.message);
            e
        })?;
        let catalogue = plugin
            .device_type_info()
            .and_then(|i| i.operations.iter().find(|o| o.code == req.code))
            .map(|o| crate::plugins::device_type::kind_name(o.kind).to_string());
        if let (Some(k), Some(want)) = (&catalogue, &req.kind)
            && k != want
        {
            return Err(ApiError::bad_request(
                "invalid",
                format!("{ty}: `{}` is a {k} operation, not a {want}", req.code),
            ));
        }
        kind = kind.or(catalogue);
    }
    let kind = kind.or(req.kind).unwrap_or_else(|| "command".into());
    let (activity, operations) = state
        .store
        .add_activity(
            &NewActivity {
                code: req.code,
                kind,
                payload,
                created_by: admin.actor(),
                expires_at: req.ttl_secs.map(|s| crate::store::now_ms() + s * 1000),
                max_attempts: retries + 1,
            },
            &targets,
        )
        .await?;
    if let Some(push) = &state.push {
        push.activity_added(activity.id);
    }
    state.wakeup.activity_added(&state, activity.id);
    if let Some(coap) = &state.coap {
        coap.activity_added(&state, activity.id);
    }
    Ok((StatusCode::CREATED, Json(Added { activity, operations })))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct OperationFilter {
    /// With `device_id`: one device's operations.
    device_type: Option<String>,
    device_id: Option<String>,
    /// One activity's operations.
    activity: Option<i64>,
    /// PENDING, IN_PROGRESS, COMPLETED, ERROR, CANCELLED, REPEATED, NOTNOW or EXPIRED.
    state: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct OperationPage {
    items: Vec<OperationRow>,
    next_after: Option<i64>,
}

/// Operations by device, activity and state, in adding order, in pages.
#[utoipa::path(get, path = "/api/v1/operations", tag = "operations", params(OperationFilter),
    responses((status = 200, body = OperationPage), Errors))]
async fn list_operations(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<OperationFilter>,
) -> Result<Json<OperationPage>, ApiError> {
    admin.require(Role::Viewer)?;
    let device = match (&q.device_type, &q.device_id) {
        (Some(t), Some(id)) => Some(device_or_404(&state, t, id).await?.id),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("invalid", "give both `device_type` and `device_id`, or neither")),
    };
    if let Some(s) = &q.state
        && crate::ops::State::parse(s).is_none()
    {
        return Err(ApiError::bad_request("invalid", format!("unknown state `{s}`")));
    }
    let (after, limit) = Page { after: q.after, limit: q.limit }.bounds();
    let rows = state.store.operations(device, q.activity, q.state.as_deref(), after, limit).await?;
    let next_after = next_after(&rows, limit, |o| o.id);
    Ok(Json(OperationPage { items: rows, next_after }))
}

/// An operation with its device and every transition it went through.
#[derive(Serialize, ToSchema)]
struct OperationDetail {
    #[serde(flatten)]
    operation: OperationRow,
    device: Option<DeviceRef>,
    /// Oldest first: from, to, actor, time and the device's response.
    transitions: Vec<TransitionRow>,
}

/// One operation and its history.
#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations", params(("id" = i64, Path)),
    responses((status = 200, body = OperationDetail), Errors))]
async fn get_operation(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<Json<OperationDetail>, ApiError> {
    admin.require(Role::Viewer)?;
    let op =
        state.store.operation(id).await?.ok_or_else(|| ApiError::not_found(format!("operation {id} not found")))?;
    let device =
        state.store.device_by_key(op.device).await?.map(|d| DeviceRef { device_type: d.device_type, id: d.device_id });
    let transitions = state.store.transitions(id).await?;
    Ok(Json(OperationDetail { operation: op, device, transitions }))
}

#[derive(Serialize, ToSchema)]
struct Cancelled {
    /// Operations cancelled by this call.
    cancelled: u64,
}

/// Cancel one operation that has not finished.
#[utoipa::path(post, path = "/api/v1/operations/{id}/cancel", tag = "operations", params(("id" = i64, Path)),
    responses((status = 200, body = Cancelled),
              (status = 409, description = "The operation has already finished", body = ErrorBody), Errors))]
async fn cancel_operation(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Cancelled>, ApiError> {
    admin.require(Role::Operator)?;
    let op =
        state.store.operation(id).await?.ok_or_else(|| ApiError::not_found(format!("operation {id} not found")))?;
    let n = state.store.cancel(Some(id), None, None, &admin.actor()).await?;
    if n == 0 {
        return Err(ApiError::new(StatusCode::CONFLICT, "finished", format!("operation {id} is already {}", op.state)));
    }
    Ok(Json(Cancelled { cancelled: n }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ActivityFilter {
    /// Only activities of this operation code.
    code: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct ActivityPage {
    items: Vec<ActivityRow>,
    next_after: Option<i64>,
}

/// Activities (one per added operation) in adding order, in pages.
#[utoipa::path(get, path = "/api/v1/activities", tag = "operations", params(ActivityFilter),
    responses((status = 200, body = ActivityPage), Errors))]
async fn list_activities(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<ActivityFilter>,
) -> Result<Json<ActivityPage>, ApiError> {
    admin.require(Role::Viewer)?;
    let (after, limit) = Page { after: q.after, limit: q.limit }.bounds();
    let rows = state.store.activities(q.code.as_deref(), after, limit).await?;
    let next_after = next_after(&rows, limit, |a| a.id);
    Ok(Json(ActivityPage { items: rows, next_after }))
}

/// An activity with its payload and how many of its operations are in each state.
#[derive(Serialize, ToSchema)]
struct ActivityDetail {
    #[serde(flatten)]
    activity: ActivityRow,
    #[schema(value_type = Option<Object>)]
    payload: Value,
    /// Operations per state, e.g. `{"COMPLETED": 98, "PENDING": 2}`.
    counts: BTreeMap<String, i64>,
}

/// One activity with counts per state.
#[utoipa::path(get, path = "/api/v1/activities/{id}", tag = "operations", params(("id" = i64, Path)),
    responses((status = 200, body = ActivityDetail), Errors))]
async fn get_activity(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<Json<ActivityDetail>, ApiError> {
    admin.require(Role::Viewer)?;
    let a = state.store.activity(id).await?.ok_or_else(|| ApiError::not_found(format!("activity {id} not found")))?;
    let counts = state.store.activity_counts(id).await?.into_iter().collect();
    let payload = a.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or(Value::Null);
    Ok(Json(ActivityDetail { activity: a, payload, counts }))
}

/// Cancel every unfinished operation of an activity.
#[utoipa::path(post, path = "/api/v1/activities/{id}/cancel", tag = "operations", params(("id" = i64, Path)),
    responses((status = 200, body = Cancelled), Errors))]
async fn cancel_activity(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Cancelled>, ApiError> {
    admin.require(Role::Operator)?;
    state.store.activity(id).await?.ok_or_else(|| ApiError::not_found(format!("activity {id} not found")))?;
    let cancelled = state.store.cancel(None, Some(id), None, &admin.actor()).await?;
    Ok(Json(Cancelled { cancelled }))
}

/// Config keys whose values the API never shows back: those the plugin's manifest declares
/// secret (`secret_config`), and, for a plugin that declares none or forgets one, those
/// whose names look secret.
fn secret_key(plugin: &crate::plugins::LoadedPlugin, key: &str) -> bool {
    if plugin.manifest.secret_config.iter().any(|k| k == key) {
        return true;
    }
    let k = key.to_ascii_lowercase();
    ["token", "secret", "password", "key", "credential", "private", "pass", "auth"].iter().any(|s| k.contains(s))
}

fn loaded_plugin(state: &AppState, name: &str) -> Result<std::sync::Arc<crate::plugins::LoadedPlugin>, ApiError> {
    state.registry.get(name).ok_or_else(|| ApiError::not_found(format!("no plugin `{name}` is loaded")))
}

/// What an admin set for a plugin. Values of secret keys (declared in the plugin's
/// manifest as `secret_config`, or named like token, secret, password, key, credential)
/// are shown as `***`.
#[utoipa::path(get, path = "/api/v1/plugins/{name}/settings", tag = "admin", params(("name" = String, Path)),
    responses((status = 200, body = crate::wakeup::PluginSettings), Errors))]
async fn get_plugin_settings(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<crate::wakeup::PluginSettings>, ApiError> {
    admin.require(Role::Viewer)?;
    let plugin = loaded_plugin(&state, &name)?;
    let mut s = state.settings.get(&name).shown();
    for (k, v) in s.config.iter_mut() {
        if secret_key(&plugin, k) {
            *v = "***".into();
        }
    }
    Ok(Json(s))
}

/// Replace what an admin sets for a plugin: config values (live: the next call sees
/// them), the hosts a transport may send to (each within its manifest's
/// `outbound_hosts`), redirects of provider hosts to other base URLs, and the TLS client
/// identity and extra certificate authorities of its provider requests. What GET shows in
/// place of a secret (`***`, a client identity's certificates without its key) keeps the
/// stored secret, so a read-modify-write changes only what it changes.
#[utoipa::path(put, path = "/api/v1/plugins/{name}/settings", tag = "admin", params(("name" = String, Path)),
    request_body = crate::wakeup::PluginSettings,
    responses((status = 200, body = crate::wakeup::PluginSettings), Errors))]
async fn put_plugin_settings(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(mut settings): ApiJson<crate::wakeup::PluginSettings>,
) -> Result<Json<crate::wakeup::PluginSettings>, ApiError> {
    admin.require(Role::Admin)?;
    let plugin = loaded_plugin(&state, &name)?;
    let stored = state.settings.get(&name);
    for (k, v) in settings.config.iter_mut() {
        if v == "***"
            && secret_key(&plugin, k)
            && let Some(kept) = stored.config.get(k)
        {
            v.clone_from(kept);
        }
    }
    if let (Some(given), Some(kept)) = (&settings.client_identity, &stored.client_identity)
        && crate::wakeup::certificates(kept) == *given
    {
        settings.client_identity = Some(kept.clone());
    }
    if let (Some(given), Some(kept)) = (settings.oauth.as_mut(), &stored.oauth) {
        given.keep_secrets(kept);
    }
    if let Some(oauth) = &settings.oauth {
        oauth.check().map_err(|e| ApiError::bad_request("invalid", e))?;
    }
    crate::wakeup::provider_client(&settings).map_err(|e| ApiError::bad_request("invalid", e))?;
    let declared = &plugin.manifest.outbound_hosts;
    for h in &settings.granted_hosts {
        if !crate::plugins::transport::grant_within(declared, h) {
            return Err(ApiError::bad_request(
                "invalid",
                format!(
                    "`granted_hosts`: `{h}` is not within what plugin {name} declares (outbound_hosts: {declared:?})"
                ),
            ));
        }
    }
    for (host, base) in &settings.redirects {
        if !settings.granted_hosts.iter().any(|g| crate::plugins::transport::host_matches(g, host)) {
            return Err(ApiError::bad_request("invalid", format!("`redirects`: `{host}` is not a granted host")));
        }
        let ok = reqwest::Url::parse(base).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/" && u.query().is_none()
        });
        if !ok {
            return Err(ApiError::bad_request(
                "invalid",
                format!("`redirects`: `{base}` for `{host}` must be a base URL like https://gateway.example:8443"),
            ));
        }
    }
    state
        .store
        .put_plugin_settings(&crate::store::SettingsRow {
            plugin: name.clone(),
            config: serde_json::to_string(&settings.config).unwrap_or_default(),
            granted_hosts: serde_json::to_string(&settings.granted_hosts).unwrap_or_default(),
            redirects: serde_json::to_string(&settings.redirects).unwrap_or_default(),
            client_identity: settings.client_identity.clone(),
            trusted_ca: settings.trusted_ca.clone(),
            oauth: settings.oauth.as_ref().and_then(|o| serde_json::to_string(o).ok()),
            updated_at: crate::store::now_ms(),
        })
        .await?;
    // Settings first, then the plugin's config: a wake-up that minted a token under the
    // old settings checks them again after putting it in (wakeup.rs).
    let config = settings.config.clone();
    state.settings.set(&name, settings);
    state.registry.runtime().set_config(&name, config);
    tracing::info!(plugin = %name, actor = %admin.name, "plugin settings changed");
    get_plugin_settings(State(state), admin, Path(name)).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewAdminToken {
    /// Who or what uses it (recorded as the actor of what it does).
    name: String,
    role: Role,
}

#[derive(Serialize, ToSchema)]
struct AdminTokenCreated {
    name: String,
    role: Role,
    /// Shown in this answer only; stored as a hash.
    token: String,
}

/// Create an admin-API token; the token is in this answer only.
#[utoipa::path(post, path = "/api/v1/admin-tokens", tag = "admin", request_body = NewAdminToken,
    responses((status = 201, body = AdminTokenCreated), Errors))]
async fn create_admin_token(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(t): ApiJson<NewAdminToken>,
) -> Result<(StatusCode, Json<AdminTokenCreated>), ApiError> {
    admin.require(Role::Admin)?;
    if t.name.trim().is_empty() || t.name.len() > 64 {
        return Err(ApiError::bad_request("invalid", "`name` must be 1 to 64 characters"));
    }
    let (token, hash) = crate::auth::new_token("admin");
    state.store.insert_admin_token(&hash, &t.name, t.role.as_str()).await?;
    Ok((StatusCode::CREATED, Json(AdminTokenCreated { name: t.name, role: t.role, token })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewEnrollmentToken {
    device_type: String,
    /// Claim only the devices of this import (`batch` in the import's answer).
    import_batch: Option<String>,
    /// How many devices may enroll with it, 1 to 100000 (default 1).
    uses: Option<i64>,
    /// Seconds it stays valid (default 7 days, at most a year).
    ttl_secs: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct EnrollmentTokenCreated {
    /// Shown in this answer only; stored as a hash.
    token: String,
    device_type: String,
    uses: i64,
    expires_at: i64,
    /// The enrollment URL with the token, for a QR code.
    enrollment_url: String,
}

/// Make an enrollment token, also rendered as the enrollment URL a QR code carries.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", tag = "devices", request_body = NewEnrollmentToken,
    responses((status = 201, body = EnrollmentTokenCreated), Errors))]
async fn create_enrollment_token(
    State(state): State<AppState>,
    admin: Admin,
    headers: axum::http::HeaderMap,
    ApiJson(t): ApiJson<NewEnrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentTokenCreated>), ApiError> {
    admin.require(Role::Admin)?;
    if state.registry.device_type(&t.device_type).is_none() {
        return Err(ApiError::bad_request(
            "unknown_device_type",
            format!("no device type `{}` is loaded", t.device_type),
        ));
    }
    let uses = t.uses.unwrap_or(1);
    let ttl = t.ttl_secs.unwrap_or(7 * 86_400);
    if !(1..=100_000).contains(&uses) || !(1..=365 * 86_400).contains(&ttl) {
        return Err(ApiError::bad_request("invalid", "`uses` must be 1 to 100000 and `ttl_secs` 1 to 31536000"));
    }
    let (token, hash) = crate::auth::new_token("enroll");
    let expires_at = crate::store::now_ms() + ttl * 1000;
    state
        .store
        .insert_enrollment_token(&hash, &t.device_type, &admin.actor(), expires_at, uses, t.import_batch.as_deref())
        .await?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let enrollment_url = format!("http://{host}/agent/v1/{}/enroll?token={token}", t.device_type);
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentTokenCreated { token, device_type: t.device_type, uses, expires_at, enrollment_url }),
    ))
}

#[derive(Serialize, ToSchema)]
struct Imported {
    /// Data rows read.
    rows: usize,
    /// Devices new to the server.
    registered: u64,
    /// Rows naming a device the server already had (left as it was).
    already_known: u64,
    /// This import's id: an enrollment token made with it claims only these devices.
    batch: String,
    /// Whether devices may claim these identities without an enrollment token.
    self_enroll: bool,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ImportParams {
    /// Let these devices enroll without an enrollment token (default false: a device id
    /// proves nothing, so a pre-registered identity is claimed with a token). LwM2M
    /// devices, which cannot carry a token, need it.
    self_enroll: Option<bool>,
}

/// Bulk pre-registration from CSV: a header row with `device_type` and `device_id`, and
/// optionally `name`, `owner`, `ownership` (BYOD or COPE). All rows are checked before
/// any is stored; an error names the line. Devices are `registered` until they enroll,
/// with an enrollment token unless `self_enroll=true`.
#[utoipa::path(post, path = "/api/v1/devices/import", tag = "devices", params(ImportParams),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = Imported), Errors))]
async fn import_devices(
    State(state): State<AppState>,
    admin: Admin,
    Query(params): Query<ImportParams>,
    body: Bytes,
) -> Result<Json<Imported>, ApiError> {
    admin.require(Role::Admin)?;
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(&body[..]);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| ApiError::bad_request("malformed_csv", format!("header row: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(ty_col), Some(id_col)) = (col("device_type"), col("device_id")) else {
        return Err(ApiError::bad_request(
            "malformed_csv",
            "the header row needs `device_type` and `device_id` columns",
        ));
    };
    let (name_col, owner_col, own_col) = (col("name"), col("owner"), col("ownership"));
    let mut devices = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let r = record.map_err(|e| ApiError::bad_request("malformed_csv", format!("line {line}: {e}")))?;
        let get = |c: Option<usize>| c.and_then(|c| r.get(c)).filter(|v| !v.is_empty()).map(str::to_string);
        let empty = |what: &str| ApiError::bad_request("invalid", format!("line {line}: `{what}` is empty"));
        let device_type = get(Some(ty_col)).ok_or_else(|| empty("device_type"))?;
        let device_id = get(Some(id_col)).ok_or_else(|| empty("device_id"))?;
        if state.registry.device_type(&device_type).is_none() {
            return Err(ApiError::bad_request(
                "unknown_device_type",
                format!("line {line}: no device type `{device_type}` is loaded"),
            ));
        }
        if device_id.len() > 128 {
            return Err(ApiError::bad_request(
                "invalid",
                format!("line {line}: `device_id` is longer than 128 characters"),
            ));
        }
        let ownership = match get(own_col).map(|o| o.to_ascii_uppercase()).as_deref() {
            None | Some("COPE") => "COPE",
            Some("BYOD") => "BYOD",
            Some(other) => {
                return Err(ApiError::bad_request(
                    "invalid",
                    format!("line {line}: ownership `{other}`: use BYOD or COPE"),
                ));
            }
        };
        devices.push(crate::store::NewDevice {
            name: get(name_col).unwrap_or_else(|| device_id.clone()),
            device_type,
            device_id,
            owner: get(owner_col),
            ownership: ownership.into(),
            metadata: Default::default(),
            push_token: None,
        });
    }
    let self_enroll = params.self_enroll.unwrap_or(false);
    let batch = format!("imp_{}", &crate::auth::new_token("batch").1[..16]);
    let registered = state.store.register_devices(&devices, self_enroll, &batch).await?;
    Ok(Json(Imported {
        rows: devices.len(),
        registered,
        already_known: devices.len() as u64 - registered,
        batch,
        self_enroll,
    }))
}
