//! `/api/v1/operations` and `/api/v1/activities`: add operations (the operations
//! service does the work), follow them, cancel them.

use super::api::{DeviceRef, Errors, Page, cursor, next_cursor};
use super::devices::{device_for, in_reach};
use super::{ApiError, ApiJson, AppState, ErrorBody, Operator, ScopedOperator, ScopedViewer, Viewer};
use super::{Path, Query};
use crate::store::{ActivityRow, OperationRow, TransitionRow};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// Who an operation is for: any mix of devices, groups and tags (union).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Targets {
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
pub(super) struct AddOperation {
    /// An operation code of the target devices' plugin (e.g. `DEVICE_RING`).
    code: String,
    /// Any JSON value; each target type's plugin validates it.
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
    /// Checked against the plugin's catalogue when given; by default the catalogue's kind
    /// for the code, or `command`.
    kind: Option<crate::ops::Kind>,
    targets: Targets,
    /// Seconds until the operation expires if not finished.
    #[schema(minimum = 1)]
    ttl_secs: Option<i64>,
    /// Re-deliveries after a failed attempt, 0 to 100 (default 0).
    #[schema(minimum = 0, maximum = 100)]
    retries: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Added {
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
pub(super) async fn add_operation(
    State(state): State<AppState>,
    ScopedOperator(admin): ScopedOperator,
    ApiJson(req): ApiJson<AddOperation>,
) -> Result<(StatusCode, Json<Added>), ApiError> {
    if let Some(scope) = admin.scope.as_ref().filter(|s| !s.allows_code(&req.code)) {
        return Err(ApiError::forbidden(format!(
            "`{}` is not among the operations your scope allows ({})",
            req.code,
            scope.operations.join(", ")
        )));
    }
    let t = req.targets;
    let op = crate::operations::NewOperation {
        code: req.code,
        payload: req.payload.filter(|p| !p.is_null()).map(|p| p.to_string()),
        kind: req.kind,
        targets: crate::operations::Targets {
            devices: t.devices.iter().map(Into::into).collect(),
            groups: t.groups,
            tags: t.tags,
        },
        ttl_secs: req.ttl_secs,
        retries: req.retries.unwrap_or(0),
        within: admin.reach(&state).await?,
    };
    let (activity, operations) = crate::operations::add(&state, op, &admin.actor()).await?;
    Ok((StatusCode::CREATED, Json(Added { activity, operations })))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct OperationFilter {
    /// With `device_id`: one device's operations.
    device_type: Option<String>,
    device_id: Option<String>,
    /// One activity's operations.
    activity: Option<i64>,
    /// PENDING, IN_PROGRESS, COMPLETED, ERROR, CANCELLED, REPEATED, NOTNOW or EXPIRED.
    state: Option<String>,
    /// Oldest first, after this id (the previous page's `next_after`).
    after: Option<i64>,
    /// Newest first, before this id (the previous page's `next_before`).
    before: Option<i64>,
    limit: Option<i64>,
}

/// An operation and the device it is for.
#[derive(Serialize, ToSchema)]
pub(super) struct OperationItem {
    #[serde(flatten)]
    operation: OperationRow,
    device: DeviceRef,
}

impl From<OperationRow> for OperationItem {
    fn from(operation: OperationRow) -> OperationItem {
        let device = DeviceRef { device_type: operation.device_type.clone(), id: operation.device_id.clone() };
        OperationItem { operation, device }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct OperationPage {
    /// Each with the device it is for, so a page of an activity reads without a lookup
    /// per row.
    items: Vec<OperationItem>,
    /// Pass as `after` for the next page (pages read with `after`).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<i64>,
    /// Pass as `before` for the next page (pages read with `before`).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<i64>,
}

/// Operations by device, activity and state, in pages: oldest first, or newest first
/// with `before`.
#[utoipa::path(get, path = "/api/v1/operations", tag = "operations", params(OperationFilter),
    responses((status = 200, body = OperationPage), Errors))]
pub(super) async fn list_operations(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Query(q): Query<OperationFilter>,
) -> Result<Json<OperationPage>, ApiError> {
    let reach = admin.reach(&state).await?;
    let device = match (&q.device_type, &q.device_id) {
        (Some(t), Some(id)) => Some(device_for(&state, &admin, t, id).await?.id),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("invalid", "give both `device_type` and `device_id`, or neither")),
    };
    if let Some(s) = &q.state
        && crate::ops::State::parse(s).is_none()
    {
        return Err(ApiError::bad_request("invalid", format!("unknown state `{s}`")));
    }
    let (_, limit) = Page { after: None, limit: q.limit }.bounds();
    let cursor = cursor(q.after, q.before)?;
    let rows = state.store.operations(device, q.activity, q.state.as_deref(), reach.as_ref(), cursor, limit).await?;
    let (next_after, next_before) = next_cursor(&rows, limit, cursor, |o| o.id);
    Ok(Json(OperationPage { items: rows.into_iter().map(OperationItem::from).collect(), next_after, next_before }))
}

/// An operation with its device and every transition it went through.
#[derive(Serialize, ToSchema)]
pub(super) struct OperationDetail {
    #[serde(flatten)]
    operation: OperationRow,
    device: Option<DeviceRef>,
    /// Oldest first: from, to, actor, time and the device's response.
    transitions: Vec<TransitionRow>,
}

/// One operation and its history.
#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations", params(("id" = i64, Path)),
    responses((status = 200, body = OperationDetail), Errors))]
pub(super) async fn get_operation(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Path(id): Path<i64>,
) -> Result<Json<OperationDetail>, ApiError> {
    let op = operation_for(&state, &admin, id).await?;
    let device = Some(DeviceRef { device_type: op.device_type.clone(), id: op.device_id.clone() });
    let transitions = state.store.transitions(id).await?;
    Ok(Json(OperationDetail { operation: op, device, transitions }))
}

/// An operation the caller may see: one of a device out of a scoped caller's reach is
/// "not found".
async fn operation_for(state: &AppState, admin: &crate::http::Admin, id: i64) -> Result<OperationRow, ApiError> {
    let missing = || format!("operation {id} not found");
    let op = state.store.operation(id).await?.ok_or_else(|| ApiError::not_found(missing()))?;
    in_reach(state, admin, op.device, missing).await?;
    Ok(op)
}

#[derive(Serialize, ToSchema)]
pub(super) struct Cancelled {
    /// Operations cancelled by this call.
    cancelled: u64,
}

/// Cancel one operation that has not finished.
#[utoipa::path(post, path = "/api/v1/operations/{id}/cancel", tag = "operations", params(("id" = i64, Path)),
    responses((status = 200, body = Cancelled),
              (status = 409, description = "The operation has already finished", body = ErrorBody), Errors))]
pub(super) async fn cancel_operation(
    State(state): State<AppState>,
    ScopedOperator(admin): ScopedOperator,
    Path(id): Path<i64>,
) -> Result<Json<Cancelled>, ApiError> {
    operation_for(&state, &admin, id).await?;
    let cancelled = crate::operations::cancel_operation(&state, id, &admin.actor()).await?;
    Ok(Json(Cancelled { cancelled }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ActivityFilter {
    /// Only activities of this operation code.
    code: Option<String>,
    /// Oldest first, after this id (the previous page's `next_after`).
    after: Option<i64>,
    /// Newest first, before this id (the previous page's `next_before`).
    before: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ActivityPage {
    items: Vec<ActivityRow>,
    /// Pass as `after` for the next page (pages read with `after`).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<i64>,
    /// Pass as `before` for the next page (pages read with `before`).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<i64>,
}

/// Activities (one per added operation) in pages: oldest first, or newest first with
/// `before`.
#[utoipa::path(get, path = "/api/v1/activities", tag = "operations", params(ActivityFilter),
    responses((status = 200, body = ActivityPage), Errors))]
pub(super) async fn list_activities(
    State(state): State<AppState>,
    _: Viewer,
    Query(q): Query<ActivityFilter>,
) -> Result<Json<ActivityPage>, ApiError> {
    let (_, limit) = Page { after: None, limit: q.limit }.bounds();
    let cursor = cursor(q.after, q.before)?;
    let rows = state.store.activities(q.code.as_deref(), cursor, limit).await?;
    let (next_after, next_before) = next_cursor(&rows, limit, cursor, |a| a.id);
    Ok(Json(ActivityPage { items: rows, next_after, next_before }))
}

/// An activity with its payload and how many of its operations are in each state.
#[derive(Serialize, ToSchema)]
pub(super) struct ActivityDetail {
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
pub(super) async fn get_activity(
    State(state): State<AppState>,
    _: Viewer,
    Path(id): Path<i64>,
) -> Result<Json<ActivityDetail>, ApiError> {
    let a = state.store.activity(id).await?.ok_or_else(|| ApiError::not_found(format!("activity {id} not found")))?;
    let counts = state.store.activity_counts(id).await?.into_iter().collect();
    let payload = a.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or(Value::Null);
    Ok(Json(ActivityDetail { activity: a, payload, counts }))
}

/// Cancel every unfinished operation of an activity.
#[utoipa::path(post, path = "/api/v1/activities/{id}/cancel", tag = "operations", params(("id" = i64, Path)),
    responses((status = 200, body = Cancelled), Errors))]
pub(super) async fn cancel_activity(
    State(state): State<AppState>,
    Operator(admin): Operator,
    Path(id): Path<i64>,
) -> Result<Json<Cancelled>, ApiError> {
    let cancelled = crate::operations::cancel_activity(&state, id, &admin.actor()).await?;
    Ok(Json(Cancelled { cancelled }))
}
