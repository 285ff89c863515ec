//! `/api/v1/users`, `/api/v1/login`, `/api/v1/logout` and `/api/v1/whoami`: named users
//! with passwords, roles and scopes (`users.rs` has the rules, `scope.rs` what a scope
//! reaches).

use super::api::Errors;
use super::audit::AuditSlot;
use super::{Admin, ApiError, ApiJson, AppState, ErrorBody, Path, ScopedViewer, TenantAdministrator};
use crate::auth::{Role, hash_token};
use crate::scope::Scope;
use crate::store::UserRow;
use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    /// 1-64 letters, digits and `. _ @ -` (an e-mail address will do).
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    name: String,
    /// At least 12 characters, at most 1024 bytes. Stored as an argon2id hash only.
    /// Absent: the user signs in through the OpenID provider only (`--oidc-issuer`).
    #[schema(min_length = 12, max_length = 1024)]
    password: Option<String>,
    role: Role,
    /// What part of the fleet the user reaches; absent: all of it.
    #[schema(schema_with = crate::scope::user_schema)]
    scope: Option<Scope>,
    /// The tenant it belongs to (it then reaches only that tenant's devices, through the
    /// endpoints that serve a tenant); absent: an operator of the server, every tenant.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    tenant: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct User {
    name: String,
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<Scope>,
    /// Absent: an operator of the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    created_at: i64,
    updated_at: i64,
    /// When an admin disabled the user; absent: enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_at: Option<i64>,
    /// Failed logins lock the user until then (ms since the epoch); absent: not locked.
    #[serde(skip_serializing_if = "Option::is_none")]
    locked_until: Option<i64>,
}

impl From<UserRow> for User {
    fn from(u: UserRow) -> User {
        User {
            scope: Scope::parse_stored(u.scope.as_deref()).ok().flatten(),
            tenant: u.tenant,
            name: u.name,
            role: u.role,
            created_at: u.created_at,
            updated_at: u.updated_at,
            disabled_at: u.disabled_at,
            locked_until: Some(u.locked_until).filter(|t| *t > crate::store::now_ms()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct UserList {
    /// By name. Never a password or its hash.
    items: Vec<User>,
}

/// Create a user who logs in with a password. A tenant's admin makes users of its tenant
/// only.
#[utoipa::path(post, path = "/api/v1/users", tag = "admin", request_body = NewUser,
    responses((status = 201, body = User),
              (status = 409, description = "A user has that name", body = ErrorBody), Errors))]
pub(super) async fn create_user(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    audit: Option<Extension<AuditSlot>>,
    ApiJson(u): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let tenant = crate::tenants::of_new_principal(&state.store, admin.tenant.as_deref(), u.tenant.as_deref()).await?;
    if let Some(Extension(slot)) = &audit {
        slot.set_data(serde_json::json!({ "name": u.name, "role": u.role, "scope": u.scope, "tenant": tenant }));
    }
    let row = crate::users::create(
        &state.store,
        &u.name,
        u.password.as_deref(),
        u.role,
        u.scope.as_ref(),
        tenant.as_deref(),
        &admin.actor(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// Every user (a tenant's admin: its tenant's).
#[utoipa::path(get, path = "/api/v1/users", tag = "admin", responses((status = 200, body = UserList), Errors))]
pub(super) async fn list_users(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
) -> Result<Json<UserList>, ApiError> {
    let users = state.store.users().await?.into_iter();
    Ok(Json(UserList { items: users.filter(|u| admin.reaches_tenant(&u.tenant)).map(User::from).collect() }))
}

/// The user called `name`, if the caller reaches it: a tenant's admin only its tenant's
/// (another's is "not found", as one that does not exist).
async fn user_or_404(state: &AppState, admin: &Admin, name: &str) -> Result<UserRow, ApiError> {
    let found = state.store.user(name).await?.filter(|u| admin.reaches_tenant(&u.tenant));
    found.ok_or_else(|| ApiError::not_found(format!("user `{name}` not found")))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "admin", params(("name" = String, Path)),
    responses((status = 200, body = User), Errors))]
pub(super) async fn get_user(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(user_or_404(&state, &admin, &name).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UserChange {
    /// A new password: ends every session of the user.
    #[schema(min_length = 12, max_length = 1024)]
    password: Option<String>,
    role: Option<Role>,
    /// A new scope; `null` reaches the whole fleet. Absent: unchanged.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = crate::scope::user_schema)]
    scope: Option<Option<Scope>>,
    /// Disable (ends every session, refuses logins) or enable the user.
    disabled: Option<bool>,
}

/// A field that is present (`null` included) as `Some`, absent as `None` (`default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Scope>>, D::Error> {
    Option::<Scope>::deserialize(d).map(Some)
}

/// Change a user's password, role, scope, or disable them. A role or scope applies at
/// the user's next request; a new password or disabling ends their sessions at once.
#[utoipa::path(patch, path = "/api/v1/users/{name}", tag = "admin", params(("name" = String, Path)),
    request_body = UserChange, responses((status = 200, body = User), Errors))]
pub(super) async fn update_user(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    audit: Option<Extension<AuditSlot>>,
    Path(name): Path<String>,
    ApiJson(c): ApiJson<UserChange>,
) -> Result<Json<User>, ApiError> {
    // A user's tenant never changes, so this check holds for the write that follows.
    user_or_404(&state, &admin, &name).await?;
    if let Some(Extension(slot)) = &audit {
        slot.set_data(serde_json::json!({
            "name": name, "role": c.role, "scope": c.scope, "disabled": c.disabled,
            "password_changed": c.password.is_some(),
        }));
    }
    let change = crate::users::Change { password: c.password, role: c.role, scope: c.scope, disabled: c.disabled };
    let row = crate::users::update(&state.store, &name, change, &admin.actor()).await?;
    Ok(Json(row.into()))
}

/// Remove a user; their sessions end.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "admin", params(("name" = String, Path)),
    responses((status = 204, description = "Removed"), Errors))]
pub(super) async fn delete_user(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    user_or_404(&state, &admin, &name).await?;
    crate::users::remove(&state.store, &name, &admin.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    name: String,
    #[schema(max_length = 1024)]
    password: String,
    /// How long the token lasts, in seconds (60 s to 7 days; default 12 hours).
    #[schema(minimum = 60, maximum = 604_800)]
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    ttl_secs: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct LoginAnswer {
    /// An admin-API token standing for the user: `Authorization: Bearer …`. Shown once.
    token: String,
    user: String,
    role: Role,
    /// When the token stops working (ms since the epoch).
    expires_at: i64,
}

/// Log in with a user's name and password: an admin-API token that expires. A refusal
/// says the same for an unknown name and a wrong password; after 5 failures in a row
/// the user is locked for a while (429 with `Retry-After`).
#[utoipa::path(post, path = "/api/v1/login", tag = "admin", request_body = LoginRequest, security(()),
    responses((status = 201, body = LoginAnswer),
              (status = 401, description = "Unknown user or wrong password", body = ErrorBody),
              (status = 429, description = "The user is locked after failed logins, or this address made too many requests before a credential", body = ErrorBody),
              (status = 503, description = "Too many password checks at once", body = ErrorBody), Errors))]
pub(super) async fn login(
    State(state): State<AppState>,
    _: super::extract::Throttled,
    ApiJson(l): ApiJson<LoginRequest>,
) -> Result<(StatusCode, Json<LoginAnswer>), ApiError> {
    let ttl = match l.ttl_secs {
        Some(s) if !(60..=604_800).contains(&s) => {
            return Err(ApiError::bad_request("invalid", format!("`ttl_secs` {s}: give 60 to 604800 seconds")));
        }
        s => s.map(|s| Duration::from_secs(s as u64)),
    };
    let session = crate::users::login(&state.store, &l.name, &l.password, ttl).await?;
    Ok((
        StatusCode::CREATED,
        Json(LoginAnswer { token: session.token, user: l.name, role: session.role, expires_at: session.expires_at }),
    ))
}

/// End the login token this request bears (a user's; other tokens are revoked by name).
#[utoipa::path(post, path = "/api/v1/logout", tag = "admin",
    responses((status = 204, description = "The token no longer works"),
              (status = 409, description = "The token is not a user's login (an admin token, or an OpenID provider's)", body = ErrorBody), Errors))]
pub(super) async fn logout(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    if admin.user.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_login",
            "this token is not a user's login: revoke it by name (DELETE /api/v1/admin-tokens/{name})",
        ));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| ApiError::bad_request("not_a_login", "log out with the bearer token itself"))?;
    if state.oidc.is_some() && crate::oidc::is_jwt(token) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_login",
            "an OpenID provider's token lives until its expiry: sign out at the provider, or disable the user here",
        ));
    }
    state.store.end_user_session(&hash_token(token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub(super) struct WhoAmI {
    /// The token's name, or the user's.
    name: String,
    role: Role,
    /// Set when the token is a user's login.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<Scope>,
    /// The tenant it belongs to; absent: an operator of the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
}

/// Who this token stands for: its role, scope and tenant (any token, scoped or not).
#[utoipa::path(get, path = "/api/v1/whoami", tag = "admin", responses((status = 200, body = WhoAmI), Errors))]
pub(super) async fn whoami(ScopedViewer(admin): ScopedViewer) -> Json<WhoAmI> {
    Json(WhoAmI { name: admin.name, role: admin.role, user: admin.user, scope: admin.scope, tenant: admin.tenant })
}
