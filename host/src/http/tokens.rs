//! `/api/v1/admin-tokens`: tokens for the admin API, by role.

use super::api::Errors;
use super::{Administrator, ApiError, ApiJson, AppState};
use crate::auth::Role;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAdminToken {
    /// Who or what uses it (recorded as the actor of what it does): 1 to 64 characters,
    /// not only spaces.
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    name: String,
    role: Role,
}

#[derive(Serialize, ToSchema)]
pub(super) struct AdminTokenCreated {
    name: String,
    role: Role,
    /// Shown in this answer only; stored as a hash.
    token: String,
}

/// Create an admin-API token; the token is in this answer only.
#[utoipa::path(post, path = "/api/v1/admin-tokens", tag = "admin", request_body = NewAdminToken,
    responses((status = 201, body = AdminTokenCreated), Errors))]
pub(super) async fn create_admin_token(
    State(state): State<AppState>,
    _: Administrator,
    ApiJson(t): ApiJson<NewAdminToken>,
) -> Result<(StatusCode, Json<AdminTokenCreated>), ApiError> {
    if t.name.trim().is_empty() || t.name.len() > 64 {
        return Err(ApiError::bad_request("invalid", "`name` must be 1 to 64 characters"));
    }
    let (token, hash) = crate::auth::new_token("admin");
    state.store.insert_admin_token(&hash, &t.name, t.role.as_str()).await?;
    Ok((StatusCode::CREATED, Json(AdminTokenCreated { name: t.name, role: t.role, token })))
}
