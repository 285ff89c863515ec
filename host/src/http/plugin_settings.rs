//! `/api/v1/plugins/{name}/settings`: what an admin sets for a plugin
//! (`plugin_settings.rs` checks and applies it).

use super::Path;
use super::api::Errors;
use super::{Administrator, ApiError, ApiJson, AppState, TenantAdministrator, TenantViewer, Viewer};
use crate::plugin_settings::{PluginSettings, TenantPluginSettings};
use axum::Json;
use axum::extract::State;

/// What an admin set for a plugin. Values of secret keys (declared in the plugin's
/// manifest as `secret_config`, or named like token, secret, password, key, credential)
/// are shown as `***`.
#[utoipa::path(get, path = "/api/v1/plugins/{name}/settings", tag = "admin", params(("name" = String, Path)),
    responses((status = 200, body = PluginSettings), Errors))]
pub(super) async fn get_plugin_settings(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<PluginSettings>, ApiError> {
    Ok(Json(crate::plugin_settings::shown(&state, &name)?))
}

/// Replace what an admin sets for a plugin: config values (live: the next call sees
/// them), the hosts a transport may send to (each within its manifest's
/// `outbound_hosts`), redirects of provider hosts to other base URLs, and the TLS client
/// identity and extra certificate authorities of its provider requests. What GET shows in
/// place of a secret (`***`, a client identity's certificates without its key) keeps the
/// stored secret, so a read-modify-write changes only what it changes.
#[utoipa::path(put, path = "/api/v1/plugins/{name}/settings", tag = "admin", params(("name" = String, Path)),
    request_body = PluginSettings,
    responses((status = 200, body = PluginSettings), Errors))]
pub(super) async fn put_plugin_settings(
    State(state): State<AppState>,
    Administrator(admin): Administrator,
    Path(name): Path<String>,
    ApiJson(settings): ApiJson<PluginSettings>,
) -> Result<Json<PluginSettings>, ApiError> {
    crate::plugin_settings::put(&state, &name, settings, &admin.actor()).await?;
    Ok(Json(crate::plugin_settings::shown(&state, &name)?))
}

/// What a tenant set for a plugin, for its devices (`plugin_settings::TenantPluginSettings`):
/// config values over the server's, its own TLS client identity and OAuth settings. Secrets
/// are shown as the server's are. A tenant's callers read their own tenant's; naming
/// another is refused.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/plugins/{name}/settings", tag = "admin",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = TenantPluginSettings),
              (status = 404, description = "The tenant set nothing for this plugin", body = super::ErrorBody), Errors))]
pub(super) async fn get_tenant_plugin_settings(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<TenantPluginSettings>, ApiError> {
    let tenant = path_tenant(&state, &admin, &tenant).await?;
    crate::plugin_settings::shown_tenant(&state, &name, &tenant)?.map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "tenant `{tenant}` set nothing for plugin {name}: its devices get the server's settings"
        ))
    })
}

/// Replace what a tenant sets for a plugin (live: the next call for its devices sees
/// it): config values its devices' calls read over the server's, and the TLS client
/// identity and OAuth settings of its provider requests in place of the server's (its
/// own MDM push certificate, its own Firebase project). Which hosts a plugin may reach
/// stays the server's. What GET shows in place of a secret keeps the stored one.
#[utoipa::path(put, path = "/api/v1/tenants/{tenant}/plugins/{name}/settings", tag = "admin",
    params(("tenant" = String, Path), ("name" = String, Path)),
    request_body = TenantPluginSettings,
    responses((status = 200, body = TenantPluginSettings), Errors))]
pub(super) async fn put_tenant_plugin_settings(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path((tenant, name)): Path<(String, String)>,
    ApiJson(settings): ApiJson<TenantPluginSettings>,
) -> Result<Json<TenantPluginSettings>, ApiError> {
    let tenant = path_tenant(&state, &admin, &tenant).await?;
    // Another tenant's plugin does not exist for this one.
    if !crate::tenants::may_use_type(&state.store, &name, &tenant).await? {
        return Err(ApiError::not_found(format!("no plugin `{name}` is loaded")));
    }
    crate::plugin_settings::put_tenant(&state, &name, &tenant, settings, &admin.actor()).await?;
    Ok(Json(crate::plugin_settings::shown_tenant(&state, &name, &tenant)?.unwrap_or_default()))
}

/// Forget what a tenant set for a plugin: its devices get the server's settings again.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/plugins/{name}/settings", tag = "admin",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 204, description = "Forgotten"),
              (status = 404, description = "The tenant set nothing for this plugin", body = super::ErrorBody), Errors))]
pub(super) async fn delete_tenant_plugin_settings(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    let tenant = path_tenant(&state, &admin, &tenant).await?;
    if crate::plugin_settings::delete_tenant(&state, &name, &tenant, &admin.actor()).await? {
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("tenant `{tenant}` set nothing for plugin {name}")))
    }
}

/// The tenant a path names, for `admin`: its own (naming another is 403), or for an
/// operator any that exists (one that does not is 404, as any missing path resource).
async fn path_tenant(state: &AppState, admin: &super::extract::Admin, tenant: &str) -> Result<String, ApiError> {
    if admin.tenant.is_none() && !state.store.tenant_exists(tenant).await? {
        return Err(ApiError::not_found(format!("no tenant `{}`", tenant.escape_debug())));
    }
    Ok(crate::tenants::acting_in(&state.store, admin.tenant.as_deref(), Some(tenant)).await?)
}
