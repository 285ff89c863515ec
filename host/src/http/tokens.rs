//! `/api/v1/admin-tokens`: tokens for the admin API, by role.

use super::api::Errors;
use super::audit::AuditSlot;
use super::{ApiError, ApiJson, AppState, ErrorBody, Path, TenantAdministrator};
use crate::auth::Role;
use crate::scope::Scope;
use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAdminToken {
    /// Who or what uses it (recorded as the actor of what it does; tokens are revoked by
    /// name, so one live token per name): 1 to 64 characters, not only spaces, no `/`. A
    /// token of a tenant is named `TENANT/NAME`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^/]*\S[^/]*$")]
    name: String,
    role: Role,
    /// Seconds until it stops working (1 second to 10 years); absent: it does not expire.
    #[schema(minimum = 1, maximum = 315_360_000)]
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    expires_in: Option<i64>,
    /// What part of the fleet it reaches (docs/security.md, "Users and scoped roles");
    /// absent: all of it.
    #[schema(schema_with = crate::scope::token_schema)]
    scope: Option<Scope>,
    /// The tenant it belongs to (it then reaches only that tenant's devices, through the
    /// endpoints that serve a tenant); absent: an operator of the server, every tenant.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    tenant: Option<String>,
}

/// Longest lifetime a token can be given: ten years.
const MAX_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;

#[derive(Serialize, ToSchema)]
pub(super) struct AdminTokenCreated {
    name: String,
    role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<Scope>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// When it stops working (ms since the Unix epoch); absent: never.
    expires_at: Option<i64>,
    /// Shown in this answer only; stored as a hash.
    token: String,
}

/// Create an admin-API token; the token is in this answer only. A tenant's admin makes
/// tokens of its tenant only.
#[utoipa::path(post, path = "/api/v1/admin-tokens", tag = "admin", request_body = NewAdminToken,
    responses((status = 201, body = AdminTokenCreated),
              (status = 409, description = "A live token has that name", body = ErrorBody), Errors))]
pub(super) async fn create_admin_token(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    audit: Option<Extension<AuditSlot>>,
    ApiJson(t): ApiJson<NewAdminToken>,
) -> Result<(StatusCode, Json<AdminTokenCreated>), ApiError> {
    if t.name.trim().is_empty() || t.name.chars().count() > 64 || t.name.contains('/') {
        return Err(ApiError::bad_request("invalid", "`name` must be 1 to 64 characters, without `/`"));
    }
    // A tenant's admin makes tokens of its own tenant; an operator, of any or of none.
    let tenant = crate::tenants::of_new_principal(&state.store, admin.tenant.as_deref(), t.tenant.as_deref()).await?;
    // Named within its tenant, so tenants never collide on (or learn of) each other's names.
    let name = crate::tenants::qualified(tenant.as_deref(), &t.name);
    let expires_at = match t.expires_in {
        None => None,
        Some(s) if (1..=MAX_LIFETIME_SECS).contains(&s) => Some(crate::store::now_ms() + s * 1000),
        Some(s) => {
            return Err(ApiError::bad_request(
                "invalid",
                format!("`expires_in` {s}: give 1 to {MAX_LIFETIME_SECS} seconds, or leave it out for no expiry"),
            ));
        }
    };
    if let Some(p) = t.scope.as_ref().and_then(|s| s.problem(false)) {
        return Err(ApiError::bad_request("invalid", format!("`scope`: {p}")));
    }
    if let Some(Extension(slot)) = &audit {
        slot.set_data(serde_json::json!({
            "name": name, "role": t.role, "scope": t.scope, "tenant": tenant, "expires_at": expires_at,
        }));
    }
    let (token, hash) = crate::auth::new_token("admin");
    let scope = t.scope.as_ref().map(|s| serde_json::to_string(s).expect("a scope serializes"));
    state
        .store
        .insert_admin_token(&hash, &name, t.role.as_str(), scope.as_deref(), tenant.as_deref(), expires_at)
        .await?;
    Ok((StatusCode::CREATED, Json(AdminTokenCreated { name, role: t.role, scope: t.scope, tenant, expires_at, token })))
}

#[derive(Serialize, ToSchema)]
pub(super) struct AdminTokenInfo {
    name: String,
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<Scope>,
    /// Absent: an operator of the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// The user a login token stands for (it acts with the user's role and scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    created_at: i64,
    /// Absent: does not expire.
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    /// `live`, `expired` or `revoked`.
    state: &'static str,
}

#[derive(Serialize, ToSchema)]
pub(super) struct AdminTokenList {
    /// Live tokens first, then by name. Never the token or its hash.
    items: Vec<AdminTokenInfo>,
}

/// List admin tokens: names, roles, expiry and revocation (a tenant's admin: its
/// tenant's).
#[utoipa::path(get, path = "/api/v1/admin-tokens", tag = "admin",
    responses((status = 200, body = AdminTokenList), Errors))]
pub(super) async fn list_admin_tokens(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
) -> Result<Json<AdminTokenList>, ApiError> {
    let now = crate::store::now_ms();
    let items = state
        .store
        .admin_tokens()
        .await?
        .into_iter()
        .filter(|t| admin.reaches_tenant(&t.tenant))
        .map(|t| AdminTokenInfo {
            state: match (t.revoked_at, t.expires_at) {
                (Some(_), _) => "revoked",
                (None, Some(e)) if e <= now => "expired",
                _ => "live",
            },
            scope: Scope::parse_stored(t.scope.as_deref()).ok().flatten(),
            user: t.user_name,
            tenant: t.tenant,
            name: t.name,
            role: t.role,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        })
        .collect();
    Ok(Json(AdminTokenList { items }))
}

/// Revoke the live admin token called `name`: it is refused from the next request on. The
/// last live admin-role token of no tenant cannot be revoked (409 `refused`). A tenant's
/// admin names its tenant's tokens with or without the `TENANT/` before the name, and
/// reaches no other.
#[utoipa::path(delete, path = "/api/v1/admin-tokens/{name}", tag = "admin",
    params(("name" = String, Path, description = "The token's name")),
    responses((status = 204, description = "Revoked"),
              (status = 409, description = "The last live admin token cannot be revoked", body = ErrorBody), Errors))]
pub(super) async fn revoke_admin_token(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = crate::tenants::qualified(admin.tenant.as_deref(), &name);
    state.store.revoke_admin_token(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
