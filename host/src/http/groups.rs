//! `/api/v1/groups`: static groups (member lists) and dynamic groups (saved queries),
//! the operators' and each tenant's (`groups.rs`).

use super::Path;
use super::api::{DeviceRef, Errors};
use super::devices::group_or_404;
use super::{ApiError, ApiJson, AppState, ErrorBody, Query, TenantOperator, TenantViewer};
use crate::store::{DeviceQuery, GroupRow};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A group as the API shows it.
#[derive(Serialize, ToSchema)]
pub(super) struct Group {
    /// A tenant's group is named `TENANT/NAME`.
    name: String,
    /// The tenant it belongs to; absent: the server's operators'.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
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
            tenant: g.tenant.clone(),
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

/// Groups with their current sizes: every group for an operator, a tenant's own for its
/// callers.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", responses((status = 200, body = GroupList), Errors))]
pub(super) async fn list_groups(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
) -> Result<Json<GroupList>, ApiError> {
    let mut items = Vec::new();
    for g in state.store.groups(admin.tenant.as_deref()).await? {
        items.push(Group::new(&state, &g).await?);
    }
    Ok(Json(GroupList { items }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewGroup {
    /// 1 to 128 characters, not only spaces, without `/`; unique (within the tenant for a
    /// tenant's group, which is then named `TENANT/NAME`).
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^/]*\S[^/]*$")]
    name: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    description: String,
    /// Makes the group dynamic: its devices are those matching the query when it is used
    /// (a tenant's group: of that tenant's devices).
    query: Option<DeviceQuery>,
    /// The tenant whose group it is: an operator's choice (absent: an operators' group);
    /// a tenant's caller makes its own tenant's groups.
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]{0,63}$")]
    tenant: Option<String>,
}

/// Create a static group (add members later) or a dynamic one (with a query).
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = NewGroup,
    responses((status = 201, body = Group), (status = 409, description = "The name is taken", body = ErrorBody), Errors))]
pub(super) async fn create_group(
    State(state): State<AppState>,
    TenantOperator(admin): TenantOperator,
    ApiJson(g): ApiJson<NewGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    let new = crate::groups::NewGroup {
        name: &g.name,
        description: &g.description,
        query: g.query.as_ref(),
        tenant: g.tenant.as_deref(),
    };
    let row = crate::groups::create(&state.store, admin.tenant.as_deref(), new, &admin.actor()).await?;
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
/// (the console's query editor counts as the admin types); a tenant's caller counts its
/// tenant's devices.
#[utoipa::path(get, path = "/api/v1/devices/count", tag = "devices", params(Preview),
    responses((status = 200, body = PreviewCount), Errors))]
pub(super) async fn preview_group(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Query(p): Query<Preview>,
) -> Result<Json<PreviewCount>, ApiError> {
    let q: DeviceQuery = serde_json::from_str(&p.query)
        .map_err(|e| ApiError::bad_request("invalid", format!("`query` is not a device query: {e}")))?;
    if let Some(p) = crate::groups::query_problem(&q) {
        return Err(ApiError::bad_request("invalid", p));
    }
    let q = DeviceQuery { tenant: admin.tenant, ..q };
    Ok(Json(PreviewCount { devices: state.store.query_size(&q).await? }))
}

/// One group with its current size; list its devices with `GET /api/v1/devices?group=`.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 200, body = Group), Errors))]
pub(super) async fn get_group(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
) -> Result<Json<Group>, ApiError> {
    let g = group_or_404(&state, &admin, &name).await?;
    Ok(Json(Group::new(&state, &g).await?))
}

/// Delete a group. Its devices stay, and operations already added for it stay queued.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), Errors))]
pub(super) async fn delete_group(
    State(state): State<AppState>,
    TenantOperator(admin): TenantOperator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let g = group_or_404(&state, &admin, &name).await?;
    crate::groups::remove(&state.store, &g, &admin.actor()).await?;
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
    TenantOperator(admin): TenantOperator,
    Path(name): Path<String>,
    ApiJson(m): ApiJson<Members>,
) -> Result<Json<MembersAdded>, ApiError> {
    let group = group_or_404(&state, &admin, &name).await?;
    let names: Vec<_> = m.devices.iter().map(Into::into).collect();
    let keys = crate::groups::add_members(&state, admin.tenant.as_deref(), &group, &names, &admin.actor()).await?;
    // Membership may make policies apply.
    crate::policies::recompute(&state, crate::policies::Scope::Devices(keys.clone())).await?;
    state.analytics.membership_changed();
    Ok(Json(MembersAdded { group: group.name, added: keys.len() }))
}
