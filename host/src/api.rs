//! The admin REST API under `/api/v1`. JSON in and out; errors are
//! `{"error": {"code": "<stable code>", "message": "<what was wrong>"}}`.

use crate::auth::{Admin, Role};
use crate::plugins::CallError;
use crate::server::AppState;
use crate::store::{DeviceRow, MAX_EXPLICIT_DEVICES, NewActivity, StoreError, TargetSet};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

/// An error for an API caller: HTTP status, a stable code, a message saying what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
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
            CallError::Fault(f) => ApiError::new(StatusCode::BAD_GATEWAY, "plugin_fault", f.to_string()),
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
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request("malformed_json", e.body_text()))?;
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request("malformed_json", format!("request body: {e}")))
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{device_type}/{device_id}", get(get_device).delete(remove_device))
        .route("/api/v1/devices/{device_type}/{device_id}/tags", put(set_tags))
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route("/api/v1/groups/{name}/members", post(add_members))
        .route("/api/v1/operations", get(list_operations).post(add_operation))
        .route("/api/v1/operations/{id}", get(get_operation))
        .route("/api/v1/operations/{id}/cancel", post(cancel_operation))
        .route("/api/v1/activities/{id}", get(get_activity))
        .route("/api/v1/activities/{id}/cancel", post(cancel_activity))
        .route("/api/v1/plugins", get(list_plugins))
        .route("/api/v1/admin-tokens", post(create_admin_token))
        .route("/api/v1/enrollment-tokens", post(create_enrollment_token))
        .route("/api/v1/devices/import", post(import_devices))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    after: Option<i64>,
    limit: Option<i64>,
}

impl Page {
    fn bounds(&self) -> (i64, i64) {
        (self.after.unwrap_or(0), self.limit.unwrap_or(100).clamp(1, 1000))
    }
}

fn device_json(d: &DeviceRow, tags: Vec<String>) -> Value {
    let metadata: Value = serde_json::from_str(&d.metadata).unwrap_or(json!({}));
    let mut v = serde_json::to_value(d).unwrap_or(json!({}));
    v["metadata"] = metadata;
    v["tags"] = json!(tags);
    v
}

async fn device_or_404(state: &AppState, device_type: &str, device_id: &str) -> Result<DeviceRow, ApiError> {
    state
        .store
        .device(device_type, device_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("device {device_type}/{device_id} not found")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceQuery {
    #[serde(rename = "type")]
    device_type: Option<String>,
    status: Option<String>,
    tag: Option<String>,
    group: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

async fn list_devices(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<DeviceQuery>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Viewer)?;
    let (after, limit) = Page { after: q.after, limit: q.limit }.bounds();
    let rows = state
        .store
        .list_devices(q.device_type.as_deref(), q.status.as_deref(), q.tag.as_deref(), q.group.as_deref(), after, limit)
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for d in &rows {
        items.push(device_json(d, state.store.tags(d.id).await?));
    }
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|d| d.id)).flatten();
    Ok(Json(json!({"items": items, "next_after": next})))
}

async fn get_device(
    State(state): State<AppState>,
    admin: Admin,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Viewer)?;
    let d = device_or_404(&state, &t, &id).await?;
    Ok(Json(device_json(&d, state.store.tags(d.id).await?)))
}

/// Disenroll: every live operation is cancelled, credentials revoked, status removed.
async fn remove_device(
    State(state): State<AppState>,
    admin: Admin,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Admin)?;
    let d = device_or_404(&state, &t, &id).await?;
    let cancelled = state.store.disenroll(d.id, &admin.actor()).await?;
    Ok(Json(json!({"device_type": t, "device_id": id, "status": "removed", "cancelled_operations": cancelled})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tags {
    tags: Vec<String>,
}

async fn set_tags(
    State(state): State<AppState>,
    admin: Admin,
    Path((t, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<Tags>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Operator)?;
    for tag in &body.tags {
        if tag.is_empty() || tag.len() > 64 || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:=".contains(&b))
        {
            return Err(ApiError::bad_request(
                "invalid",
                format!("tag `{tag}`: use 1-64 letters, digits and - _ . : ="),
            ));
        }
    }
    let d = device_or_404(&state, &t, &id).await?;
    let mut tags = body.tags;
    tags.sort();
    tags.dedup();
    state.store.set_tags(d.id, &tags).await?;
    Ok(Json(device_json(&d, tags)))
}

async fn list_groups(State(state): State<AppState>, admin: Admin) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Viewer)?;
    Ok(Json(json!({"items": state.store.groups().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    #[serde(default)]
    description: String,
}

async fn create_group(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(g): ApiJson<NewGroup>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin.require(Role::Operator)?;
    if g.name.trim().is_empty() || g.name.len() > 128 {
        return Err(ApiError::bad_request("invalid", "group `name` must be 1 to 128 characters"));
    }
    let row = state.store.create_group(&g.name, &g.description).await?;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(row).unwrap_or_default())))
}

/// A device named by type and id, as the API addresses devices.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct DeviceRef {
    #[serde(rename = "type")]
    device_type: String,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Members {
    devices: Vec<DeviceRef>,
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

async fn add_members(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(m): ApiJson<Members>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Operator)?;
    let group =
        state.store.group(&name).await?.ok_or_else(|| ApiError::not_found(format!("group `{name}` not found")))?;
    let keys = resolve(&state, &m.devices).await?;
    state.store.add_members(group.id, &keys).await?;
    Ok(Json(json!({"group": name, "added": keys.len()})))
}

/// Who an operation is for: any mix of devices, groups and tags (union).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Targets {
    #[serde(default)]
    devices: Vec<DeviceRef>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddOperation {
    code: String,
    /// Any JSON value; passed to the plugin as JSON text.
    payload: Option<Value>,
    /// Checked against the plugin's catalogue when given.
    kind: Option<String>,
    targets: Targets,
    /// Seconds until the operation expires if not finished.
    ttl_secs: Option<i64>,
    /// Re-deliveries after a failed attempt (default 0).
    retries: Option<i64>,
}

/// Add an operation: validated by each target type's plugin, then stored (activity and
/// one operation per device, in one transaction) before any delivery.
async fn add_operation(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(req): ApiJson<AddOperation>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        TargetSet { devices: resolve(&state, &t.devices).await?, groups: Vec::new(), tags: t.tags.clone() };
    for g in &t.groups {
        let group = state
            .store
            .group(g)
            .await?
            .ok_or_else(|| ApiError::bad_request("unknown_group", format!("group `{g}` does not exist")))?;
        targets.groups.push(group.id);
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
    let (activity, count) = state
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
    Ok((StatusCode::CREATED, Json(json!({"activity": activity, "operations": count}))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationQuery {
    device_type: Option<String>,
    device_id: Option<String>,
    activity: Option<i64>,
    state: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

async fn list_operations(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<OperationQuery>,
) -> Result<Json<Value>, ApiError> {
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
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|o| o.id)).flatten();
    Ok(Json(json!({"items": rows, "next_after": next})))
}

async fn get_operation(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Viewer)?;
    let op =
        state.store.operation(id).await?.ok_or_else(|| ApiError::not_found(format!("operation {id} not found")))?;
    let device = state.store.device_by_key(op.device).await?;
    let transitions = state.store.transitions(id).await?;
    let mut v = serde_json::to_value(&op).unwrap_or_default();
    if let Some(d) = device {
        v["device"] = json!({"type": d.device_type, "id": d.device_id});
    }
    v["transitions"] = serde_json::to_value(transitions).unwrap_or_default();
    Ok(Json(v))
}

async fn cancel_operation(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Operator)?;
    let op =
        state.store.operation(id).await?.ok_or_else(|| ApiError::not_found(format!("operation {id} not found")))?;
    let n = state.store.cancel(Some(id), None, None, &admin.actor()).await?;
    if n == 0 {
        return Err(ApiError::new(StatusCode::CONFLICT, "finished", format!("operation {id} is already {}", op.state)));
    }
    Ok(Json(json!({"operation": id, "state": "CANCELLED"})))
}

async fn get_activity(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Viewer)?;
    let a = state.store.activity(id).await?.ok_or_else(|| ApiError::not_found(format!("activity {id} not found")))?;
    let counts: serde_json::Map<String, Value> =
        state.store.activity_counts(id).await?.into_iter().map(|(s, n)| (s, json!(n))).collect();
    let mut v = serde_json::to_value(&a).unwrap_or_default();
    v["payload"] = a.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or(Value::Null);
    v["counts"] = Value::Object(counts);
    Ok(Json(v))
}

async fn cancel_activity(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Operator)?;
    state.store.activity(id).await?.ok_or_else(|| ApiError::not_found(format!("activity {id} not found")))?;
    let n = state.store.cancel(None, Some(id), None, &admin.actor()).await?;
    Ok(Json(json!({"activity": id, "cancelled": n})))
}

async fn list_plugins(State(state): State<AppState>, admin: Admin) -> Result<Json<Value>, ApiError> {
    admin.require(Role::Viewer)?;
    Ok(Json(json!({"items": state.registry.list()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAdminToken {
    name: String,
    role: Role,
}

/// Create an admin-API token; the token is in this answer only.
async fn create_admin_token(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(t): ApiJson<NewAdminToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin.require(Role::Admin)?;
    if t.name.trim().is_empty() || t.name.len() > 64 {
        return Err(ApiError::bad_request("invalid", "`name` must be 1 to 64 characters"));
    }
    let (token, hash) = crate::auth::new_token("admin");
    state.store.insert_admin_token(&hash, &t.name, t.role.as_str()).await?;
    Ok((StatusCode::CREATED, Json(json!({"name": t.name, "role": t.role, "token": token}))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEnrollmentToken {
    device_type: String,
    /// How many devices may enroll with it (default 1).
    uses: Option<i64>,
    /// Seconds it stays valid (default 7 days).
    ttl_secs: Option<i64>,
}

/// Make an enrollment token, also rendered as the enrollment URL a QR code carries.
async fn create_enrollment_token(
    State(state): State<AppState>,
    admin: Admin,
    headers: axum::http::HeaderMap,
    ApiJson(t): ApiJson<NewEnrollmentToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    state.store.insert_enrollment_token(&hash, &t.device_type, &admin.actor(), expires_at, uses).await?;
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let url = format!("http://{host}/agent/v1/{}/enroll?token={token}", t.device_type);
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"token": token, "device_type": t.device_type, "uses": uses, "expires_at": expires_at, "enrollment_url": url}),
        ),
    ))
}

/// Bulk pre-registration from CSV: `device_type,device_id[,name[,owner[,ownership]]]`
/// with a header row. All rows are checked before any is stored; an error names the line.
async fn import_devices(
    State(state): State<AppState>,
    admin: Admin,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
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
    let added = state.store.register_devices(&devices).await?;
    Ok(Json(json!({"rows": devices.len(), "registered": added, "already_known": devices.len() as u64 - added})))
}
