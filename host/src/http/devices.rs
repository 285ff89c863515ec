//! `/api/v1/devices`: list, read, tag, revoke, remove and restore devices, and read their
//! telemetry.

use super::api::{DEFAULT_PAGE, Errors, MAX_PAGE, Page, next_after};
use super::{Admin, Administrator, ApiError, ApiJson, AppState, Operator, ScopedViewer, TenantAdministrator, Viewer};
use super::{Path, Query};
use crate::device::{Ownership, Status};
use crate::store::{DeviceRow, GroupRow, TelemetryRow};
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

/// A device as the API shows it.
#[derive(Serialize, ToSchema)]
pub(super) struct Device {
    device_type: String,
    device_id: String,
    name: String,
    owner: Option<String>,
    /// `BYOD` or `COPE`.
    ownership: Ownership,
    /// `registered` (pre-registered, not yet enrolled), `active`, `unreachable` (not seen
    /// for the configured hours) or `removed`.
    status: Status,
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
    /// The tenant it belongs to (docs/security.md, "Tenants").
    tenant: String,
}

/// A telemetry value.
#[derive(Serialize, ToSchema)]
pub(super) struct Telemetry {
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
    pub(super) fn new(d: &DeviceRow, tags: Vec<String>) -> Device {
        Device {
            device_type: d.device_type.clone(),
            device_id: d.device_id.clone(),
            name: d.name.clone(),
            owner: d.owner.clone(),
            ownership: d.ownership,
            status: d.status,
            enrolled_at: d.enrolled_at,
            last_seen_at: d.last_seen_at,
            metadata: serde_json::from_str(&d.metadata).unwrap_or(json!({})),
            tags,
            telemetry: None,
            push_transport: crate::push_token::transport(d.push_token.as_deref()),
            wake_up: None,
            tenant: d.tenant.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct DevicePage {
    items: Vec<Device>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<i64>,
}

pub(super) async fn device_or_404(state: &AppState, device_type: &str, device_id: &str) -> Result<DeviceRow, ApiError> {
    state
        .store
        .device(device_type, device_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("device {device_type}/{device_id} not found")))
}

/// A device the caller may see: out of a scoped caller's reach it is "not found", as a
/// device that does not exist (a scope does not tell what lies outside it).
pub(super) async fn device_for(
    state: &AppState,
    admin: &Admin,
    device_type: &str,
    device_id: &str,
) -> Result<DeviceRow, ApiError> {
    let d = device_or_404(state, device_type, device_id).await?;
    in_reach(state, admin, d.id, || format!("device {device_type}/{device_id} not found")).await?;
    Ok(d)
}

/// Refuse (404 with `missing`'s message) a device (its key) out of a scoped caller's reach.
pub(super) async fn in_reach(
    state: &AppState,
    admin: &Admin,
    device: i64,
    missing: impl FnOnce() -> String,
) -> Result<(), ApiError> {
    if let Some(reach) = admin.reach(state).await?
        && !state.store.in_reach(device, &reach).await?
    {
        return Err(ApiError::not_found(missing()));
    }
    Ok(())
}

/// The group `admin` names, if it may see it (`groups::find`): else 404.
pub(super) async fn group_or_404(state: &AppState, admin: &Admin, name: &str) -> Result<GroupRow, ApiError> {
    crate::groups::find(&state.store, admin.tenant.as_deref(), name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("group `{name}` not found")))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeviceFilter {
    /// Only devices of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    device_type: Option<String>,
    /// Only devices in this status.
    status: Option<Status>,
    /// Only devices with this tag.
    tag: Option<String>,
    /// Only devices in this group (static or dynamic).
    group: Option<String>,
    /// Only devices of this owner.
    owner: Option<String>,
    /// Only devices whose id or name contains this (in any case).
    #[param(max_length = 200)]
    q: Option<String>,
    /// Only devices whose reported metadata has this value: `key=value`.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}=.*$")]
    metadata: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// List devices, filtered, in pages.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(DeviceFilter),
    responses((status = 200, body = DevicePage), Errors))]
pub(super) async fn list_devices(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Query(q): Query<DeviceFilter>,
) -> Result<Json<DevicePage>, ApiError> {
    let reach = admin.reach(&state).await?;
    let (after, limit) = Page { after: q.after, limit: q.limit }.bounds();
    let group = match &q.group {
        Some(name) => Some(group_or_404(&state, &admin, name).await?),
        None => None,
    };
    let mut metadata = std::collections::BTreeMap::new();
    if let Some(pair) = &q.metadata {
        let (key, value) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| ApiError::bad_request("invalid_query", "`metadata`: write key=value"))?;
        metadata.insert(key.to_string(), value.to_string());
        // The key becomes a JSON path in SQL: held to the rule of a dynamic group's keys.
        let query = crate::store::DeviceQuery { metadata: metadata.clone(), ..Default::default() };
        if let Some(p) = query.problem() {
            return Err(ApiError::bad_request("invalid_query", format!("`metadata`: {p}")));
        }
    }
    if q.q.as_ref().is_some_and(|s| s.chars().count() > 200) {
        return Err(ApiError::bad_request("invalid_query", "`q`: at most 200 characters"));
    }
    let filter = crate::store::DeviceFilter {
        device_type: q.device_type.as_deref(),
        status: q.status,
        tag: q.tag.as_deref(),
        group: group.as_ref(),
        owner: q.owner.as_deref(),
        search: q.q.as_deref(),
        metadata,
        reach: reach.as_ref(),
    };
    let rows = state.store.list_devices(&filter, after, limit).await?;
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
pub(super) async fn get_device(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Device>, ApiError> {
    let d = device_for(&state, &admin, &t, &id).await?;
    let mut device = Device::new(&d, state.store.tags(d.id).await?);
    device.telemetry = Some(state.store.latest_telemetry(d.id).await?.into_iter().map(Telemetry::from).collect());
    device.wake_up = state.store.wakeup(d.id).await?;
    Ok(Json(device))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceChange {
    /// Display name, 1 to 128 characters, not only spaces.
    #[schema(min_length = 1, max_length = 128, pattern = r"\S")]
    name: Option<String>,
    /// The user the device belongs to; an empty string clears it.
    #[schema(max_length = 128)]
    owner: Option<String>,
    /// `BYOD` or `COPE`.
    ownership: Option<Ownership>,
}

/// Change a device's name, owner or ownership. Policies that read them apply anew
/// before the answer (the device's effective policy may change).
#[utoipa::path(patch, path = "/api/v1/devices/{device_type}/{device_id}", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    request_body = DeviceChange, responses((status = 200, body = Device), Errors))]
pub(super) async fn update_device(
    State(state): State<AppState>,
    Operator(admin): Operator,
    Path((t, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<DeviceChange>,
) -> Result<Json<Device>, ApiError> {
    let d = device_or_404(&state, &t, &id).await?;
    let owner = body.owner.as_deref().map(|o| Some(o).filter(|o| !o.is_empty()));
    crate::enrollment::update(&state, &d, body.name.as_deref(), owner, body.ownership, &admin.actor()).await?;
    let d = device_or_404(&state, &t, &id).await?;
    Ok(Json(Device::new(&d, state.store.tags(d.id).await?)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TelemetryFilter {
    /// Only this name, e.g. `battery`.
    name: Option<String>,
    /// Only points received before this one (the previous page's `next_before`).
    before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TelemetryPage {
    /// Last received first.
    items: Vec<Telemetry>,
    /// Pass as `before` for older points; absent on the last page.
    next_before: Option<i64>,
}

/// A device's reported telemetry, last received first.
#[utoipa::path(get, path = "/api/v1/devices/{device_type}/{device_id}/telemetry", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path), TelemetryFilter),
    responses((status = 200, body = TelemetryPage), Errors))]
pub(super) async fn device_telemetry(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Path((t, id)): Path<(String, String)>,
    Query(q): Query<TelemetryFilter>,
) -> Result<Json<TelemetryPage>, ApiError> {
    let d = device_for(&state, &admin, &t, &id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let rows = state.store.telemetry(d.id, q.name.as_deref(), q.before, limit).await?;
    let next_before = next_after(&rows, limit, |r| r.id);
    Ok(Json(TelemetryPage { items: rows.into_iter().map(Telemetry::from).collect(), next_before }))
}

#[derive(Serialize, ToSchema)]
pub(super) struct Removed {
    device_type: String,
    device_id: String,
    status: Status,
    /// Live operations cancelled by the removal.
    cancelled_operations: u64,
}

/// Disenroll a device: every live operation is cancelled, its credentials revoked, its
/// status `removed`. Its history is kept; it may enroll again.
#[utoipa::path(delete, path = "/api/v1/devices/{device_type}/{device_id}", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    responses((status = 200, body = Removed), Errors))]
pub(super) async fn remove_device(
    State(state): State<AppState>,
    Administrator(admin): Administrator,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Removed>, ApiError> {
    let d = device_or_404(&state, &t, &id).await?;
    let cancelled = crate::enrollment::remove(&state, &d, &admin.actor()).await?;
    Ok(Json(Removed { device_type: t, device_id: id, status: Status::Removed, cancelled_operations: cancelled }))
}

/// Bring a removed device back as it was: its tags and static groups kept, its status
/// `registered` until it enrolls again, with an enrollment token. (Enrolled again without
/// a restore, a removed identity starts clean: nothing of the old device passes to
/// whoever enrolls it.)
#[utoipa::path(post, path = "/api/v1/devices/{device_type}/{device_id}/restore", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    responses((status = 200, body = Device),
              (status = 409, description = "The device is not removed: there is nothing to restore", body = super::ErrorBody),
              Errors))]
pub(super) async fn restore_device(
    State(state): State<AppState>,
    _: Administrator,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Device>, ApiError> {
    let d = device_or_404(&state, &t, &id).await?;
    let d = crate::enrollment::restore(&state, &d).await?;
    Ok(Json(Device::new(&d, state.store.tags(d.id).await?)))
}

#[derive(Serialize, ToSchema)]
pub(super) struct Revoked {
    /// Live credentials revoked.
    revoked: u64,
}

/// Revoke every credential of a device (a lost or stolen device). It can no longer call
/// in, and its live MQTT connections and LwM2M registration end at once; its operations
/// stay queued. Remove it and enroll it again to give it a new one.
#[utoipa::path(post, path = "/api/v1/devices/{device_type}/{device_id}/revoke-credentials", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    responses((status = 200, body = Revoked), Errors))]
pub(super) async fn revoke_credentials(
    State(state): State<AppState>,
    Administrator(admin): Administrator,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Revoked>, ApiError> {
    let d = device_or_404(&state, &t, &id).await?;
    // Its live sessions end too (the embedded broker's connections, a LwM2M registration).
    let revoked = crate::enrollment::revoke(&state, &d, &admin.actor()).await?;
    Ok(Json(Revoked { revoked }))
}

/// The certificates issued to a device from its CSRs (docs/security.md, "Device
/// certificates"), newest first.
#[utoipa::path(get, path = "/api/v1/devices/{device_type}/{device_id}/certificates", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    responses((status = 200, body = Vec<crate::store::CertificateRow>), Errors))]
pub(super) async fn certificates(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<Vec<crate::store::CertificateRow>>, ApiError> {
    let d = device_for(&state, &admin, &t, &id).await?;
    Ok(Json(state.store.device_certificates(d.id).await?))
}

/// Revoke one certificate of a device: refused from its next request or connection, and
/// the device's live MQTT sessions end. Its other credentials stay live.
#[utoipa::path(post, path = "/api/v1/devices/{device_type}/{device_id}/certificates/{serial}/revoke", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path), ("serial" = String, Path)),
    responses((status = 200, body = Revoked), Errors))]
pub(super) async fn revoke_certificate(
    State(state): State<AppState>,
    Administrator(admin): Administrator,
    Path((t, id, serial)): Path<(String, String, String)>,
) -> Result<Json<Revoked>, ApiError> {
    let d = device_or_404(&state, &t, &id).await?;
    if !crate::enrollment::revoke_certificate(&state, &d, &serial, &admin.actor()).await? {
        return Err(ApiError::not_found(format!("device {t}/{id} has no live certificate with serial `{serial}`")));
    }
    Ok(Json(Revoked { revoked: 1 }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PskRequest {
    /// The PSK identity the device presents [default: its endpoint name, the device id].
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    identity: Option<String>,
    /// The key, hex (16 to 64 bytes) [default: 16 random bytes, returned this once].
    #[serde(default)]
    #[schema(pattern = "^([0-9a-fA-F]{2}){16,64}$")]
    key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct PskIssued {
    identity: String,
    /// The key, hex: shown this once, stored sealed.
    key: String,
}

/// Give a LwM2M device the pre-shared key it registers with over DTLS (`--coaps-addr`;
/// body `{}` for a generated key named by the device id),
/// replacing its old one (revoked; its sessions end). Before its first registration
/// (pre-registration) or after. A tenant's admin gives keys to its tenant's devices.
/// docs/security.md, "LwM2M over DTLS".
#[utoipa::path(put, path = "/api/v1/devices/{device_type}/{device_id}/psk", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    request_body = PskRequest, responses((status = 200, body = PskIssued),
        (status = 409, description = "The device is removed or does not talk CoAP, or another device holds the identity",
         body = super::ErrorBody), Errors))]
pub(super) async fn set_psk(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path((t, id)): Path<(String, String)>,
    ApiJson(PskRequest { identity, key }): ApiJson<PskRequest>,
) -> Result<Json<PskIssued>, ApiError> {
    let d = device_for(&state, &admin, &t, &id).await?;
    let key = key
        .map(|k| hex::decode(k.trim()))
        .transpose()
        .map_err(|e| ApiError::bad_request("key", format!("`key`: hex digits expected ({e})")))?;
    let (identity, key) = crate::enrollment::provision_psk(&state, &d, identity, key, &admin.actor()).await?;
    Ok(Json(PskIssued { identity, key: hex::encode(key) }))
}

/// A LwM2M device's pre-shared key: its identity, when it was made, whether it was
/// revoked (never the key). A scoped or tenant's caller reads those of its devices only.
#[utoipa::path(get, path = "/api/v1/devices/{device_type}/{device_id}/psk", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    responses((status = 200, body = crate::store::PskRow), Errors))]
pub(super) async fn psk(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Path((t, id)): Path<(String, String)>,
) -> Result<Json<crate::store::PskRow>, ApiError> {
    let d = device_for(&state, &admin, &t, &id).await?;
    let row = state.store.device_psk(d.id).await?;
    row.map(Json).ok_or_else(|| ApiError::not_found(format!("device {t}/{id} has no pre-shared key")))
}

/// The device CA's certificate (PEM): what device certificates chain to, for an external
/// broker or proxy that checks them.
#[utoipa::path(get, path = "/api/v1/device-ca", tag = "devices",
    responses((status = 200, description = "The CA certificate", content_type = "application/x-pem-file", body = String), Errors))]
pub(super) async fn device_ca(State(state): State<AppState>, _: Viewer) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], state.device_ca.cert_pem().to_string())
        .into_response()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Tags {
    /// 1-64 letters, digits and `- _ . : =` each.
    #[schema(schema_with = crate::store::tag_list_schema)]
    tags: Vec<String>,
}

/// Replace a device's tags.
#[utoipa::path(put, path = "/api/v1/devices/{device_type}/{device_id}/tags", tag = "devices",
    params(("device_type" = String, Path), ("device_id" = String, Path)),
    request_body = Tags, responses((status = 200, body = Device), Errors))]
pub(super) async fn set_tags(
    State(state): State<AppState>,
    _: Operator,
    Path((t, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<Tags>,
) -> Result<Json<Device>, ApiError> {
    if let Some(p) = body.tags.iter().find_map(|t| crate::store::tag_problem(t)) {
        return Err(ApiError::bad_request("invalid", p));
    }
    let d = device_or_404(&state, &t, &id).await?;
    let mut tags = body.tags;
    tags.sort();
    tags.dedup();
    state.store.set_tags(d.id, &tags).await?;
    // Tags may make policies apply or stop applying.
    crate::policies::recompute(&state, crate::policies::Scope::Devices(vec![d.id])).await?;
    state.analytics.membership_changed();
    Ok(Json(Device::new(&d, tags)))
}
