//! `/api/v1/tenants`: the server's tenants, for its operators (`tenants.rs`).

use super::api::Errors;
use super::{Administrator, ApiError, ApiJson, AppState, ErrorBody, Path, Viewer};
use crate::store::TenantRow;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    /// 1-64 lower-case letters, digits and `-`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    name: String,
    /// Up to 256 characters.
    #[schema(max_length = 256)]
    description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TenantList {
    /// By name.
    items: Vec<TenantRow>,
}

/// Every tenant, with how many devices each holds.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "admin", responses((status = 200, body = TenantList), Errors))]
pub(super) async fn list_tenants(State(state): State<AppState>, _: Viewer) -> Result<Json<TenantList>, ApiError> {
    Ok(Json(TenantList { items: state.store.tenants().await? }))
}

/// Add a tenant. Its first admin is a token or user made with `tenant` set.
#[utoipa::path(post, path = "/api/v1/tenants", tag = "admin", request_body = NewTenant,
    responses((status = 201, body = TenantRow),
              (status = 409, description = "A tenant has that name", body = ErrorBody), Errors))]
pub(super) async fn create_tenant(
    State(state): State<AppState>,
    Administrator(admin): Administrator,
    ApiJson(t): ApiJson<NewTenant>,
) -> Result<(StatusCode, Json<TenantRow>), ApiError> {
    let row =
        crate::tenants::create(&state.store, &t.name, t.description.as_deref().unwrap_or(""), &admin.actor()).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// One tenant.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}", tag = "admin", params(("tenant" = String, Path)),
    responses((status = 200, body = TenantRow), Errors))]
pub(super) async fn get_tenant(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<TenantRow>, ApiError> {
    let row = state.store.tenant(&name).await?;
    Ok(Json(row.ok_or_else(|| ApiError::not_found(format!("tenant `{name}` not found")))?))
}

/// Remove a tenant that holds no devices (removed ones included), users or live tokens;
/// its enrollment tokens, groups, webhooks and policies go with it. `default` stays.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}", tag = "admin", params(("tenant" = String, Path)),
    responses((status = 204, description = "Removed"),
              (status = 409, description = "It still holds devices, users or tokens, or it is `default`", body = ErrorBody),
              Errors))]
pub(super) async fn delete_tenant(
    State(state): State<AppState>,
    Administrator(admin): Administrator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::tenants::remove(&state.store, &name, &admin.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}
