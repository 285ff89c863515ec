//! `/api/v1/plugins/{name}/settings`: what an admin sets for a plugin
//! (`plugin_settings.rs` checks and applies it).

use super::Path;
use super::api::Errors;
use super::{Administrator, ApiError, ApiJson, AppState, Viewer};
use crate::plugin_settings::PluginSettings;
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
