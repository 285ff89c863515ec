//! `/api/v1/groups`: static groups (member lists) and dynamic groups (saved queries).

use super::Path;
use super::api::{DeviceRef, Errors};
use super::devices::group_or_404;
use super::{ApiError, ApiJson, AppState, ErrorBody, Operator, Query, Viewer};
use crate::store::{DeviceQuery, GroupRow};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A group as the API shows it.
#[derive(Serialize, ToSchema)]
pub(super) struct Group {
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
pub(super) struct GroupList {
    items: Vec<Group>,
}

/// All groups with their current sizes.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", responses((status = 200, body = GroupList), Errors))]
pub(super) async fn list_groups(State(state): State<AppState>, _: Viewer) -> Result<Json<GroupList>, ApiError> {
    let mut items = Vec::new();
    for g in state.store.groups().await? {
        items.push(Group::new(&state, &g).await?);
    }
    Ok(Json(GroupList { items }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewGroup {
    /// 1 to 128 characters, not only spaces; unique.
    #[schema(min_length = 1, max_length = 128, pattern = r"\S")]
    name: String,
    #[serde(default)]
    description: String,
    /// Makes the group dynamic: its devices are those matching the query when it is used.
    query: Option<DeviceQuery>,
}

/// Create a static group (add members later) or a dynamic one (with a query).
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = NewGroup,
    responses((status = 201, body = Group), (status = 409, description = "The name is taken", body = ErrorBody), Errors))]
pub(super) async fn create_group(
    State(state): State<AppState>,
    _: Operator,
    ApiJson(g): ApiJson<NewGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    if g.name.trim().is_empty() || g.name.len() > 128 {
        return Err(ApiError::bad_request("invalid", "group `name` must be 1 to 128 characters"));
    }
    if let Some(q) = &g.query {
        check_query(q)?;
    }
    let row = state.store.create_group(&g.name, &g.description, g.query.as_ref()).await?;
    state.analytics.membership_changed();
    Ok((StatusCode::CREATED, Json(Group::new(&state, &row).await?)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct Preview {
    /// A dynamic group's query, as JSON: `{"tags": ["lobby"], "device_type": "android"}`.
    #[param(max_length = 8192)]
    query: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct PreviewCount {
    /// Live devices the query matches now.
    devices: i64,
}

/// How many live devices a query matches: what a dynamic group with it would hold now
/// (the console's query editor counts as the admin types).
#[utoipa::path(get, path = "/api/v1/devices/count", tag = "devices", params(Preview),
    responses((status = 200, body = PreviewCount), Errors))]
pub(super) async fn preview_group(
    State(state): State<AppState>,
    _: Viewer,
    Query(p): Query<Preview>,
) -> Result<Json<PreviewCount>, ApiError> {
    let q: DeviceQuery = serde_json::from_str(&p.query)
        .map_err(|e| ApiError::bad_request("invalid", format!("`query` is not a device query: {e}")))?;
    check_query(&q)?;
    Ok(Json(PreviewCount { devices: state.store.query_size(&q).await? }))
}

fn check_query(q: &DeviceQuery) -> Result<(), ApiError> {
    if let Some(p) = q.problem() {
        return Err(ApiError::bad_request("invalid", format!("`query`: {p}")));
    }
    if let Some(p) = q.tags.iter().find_map(|t| crate::store::tag_problem(t)) {
        return Err(ApiError::bad_request("invalid", format!("`query`: {p}")));
    }
    Ok(())
}

/// One group with its current size; list its devices with `GET /api/v1/devices?group=`.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 200, body = Group), Errors))]
pub(super) async fn get_group(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<Group>, ApiError> {
    let g = group_or_404(&state, &name).await?;
    Ok(Json(Group::new(&state, &g).await?))
}

/// Delete a group. Its devices stay, and operations already added for it stay queued.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), Errors))]
pub(super) async fn delete_group(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let g = group_or_404(&state, &name).await?;
    state.store.delete_group(g.id).await?;
    // A policy that applied through this group applies through it no more.
    crate::policies::recompute_all(&state).await?;
    state.analytics.membership_changed();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Members {
    devices: Vec<DeviceRef>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct MembersAdded {
    group: String,
    /// Devices named (those already members are left as they are).
    added: usize,
}

/// Add devices to a static group.
#[utoipa::path(post, path = "/api/v1/groups/{name}/members", tag = "groups", params(("name" = String, Path)),
    request_body = Members,
    responses((status = 200, body = MembersAdded),
              (status = 409, description = "The group is dynamic: its query defines its devices", body = ErrorBody),
              Errors))]
pub(super) async fn add_members(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
    ApiJson(m): ApiJson<Members>,
) -> Result<Json<MembersAdded>, ApiError> {
    let group = group_or_404(&state, &name).await?;
    if group.query.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "dynamic_group",
            format!("group `{name}` is dynamic: its query defines its devices"),
        ));
    }
    let names: Vec<_> = m.devices.iter().map(Into::into).collect();
    let keys = crate::operations::resolve(&state, &names).await?;
    state.store.add_members(group.id, &keys).await?;
    // Membership may make policies apply.
    crate::policies::recompute(&state, crate::policies::Scope::Devices(keys.clone())).await?;
    state.analytics.membership_changed();
    Ok(Json(MembersAdded { group: name, added: keys.len() }))
}
