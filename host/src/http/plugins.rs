//! The plugin platform's admin API: upload, versions, rollback, suspension, grants,
//! publisher keys and the unsigned-upload setting (docs/plugin-platform.md).
//!
//! A tenant's admin uploads device-type plugins of its own (named `TENANT-…`), rolls them
//! back, suspends and enables them, and grants them the capabilities that reach nothing
//! outside the sandbox; its callers see the shared plugins and their own, never another
//! tenant's (404). Shared plugins, filesystem and network grants, publisher keys and the
//! server's settings stay the operators' (docs/security.md, "Tenants").

use super::api::Errors;
use super::{Admin, Administrator, ApiError, ApiJson, AppState, TenantAdministrator, TenantViewer, Viewer};
use crate::plugins::catalog::{ALLOW_UNSIGNED, CatalogError, parse_grants};
use crate::plugins::{Capability, PluginSummary, signing};

use super::Path;
use crate::store::{ComponentRow, PluginEventRow, PublisherKeyRow, now_ms};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest component an upload takes. Components built with componentize-py carry a
/// Python interpreter (~18 MB), so this is generous.
pub const MAX_UPLOAD: usize = 64 << 20;

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        match e {
            CatalogError::Manifest(m) => ApiError::bad_request("invalid_plugin", m),
            CatalogError::Unsigned { .. } => ApiError::bad_request("unsigned_plugin", e.to_string()),
            CatalogError::BadSignature { .. } => ApiError::bad_request("bad_signature", e.to_string()),
            CatalogError::Load(l) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "plugin_refused", l.to_string()),
            CatalogError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            CatalogError::NotFound(m) => ApiError::not_found(m),
            CatalogError::Store(s) => s.into(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct PluginList {
    /// Name, version, kind, publisher, sha256, state, capabilities requested and granted,
    /// call statistics, loaded versions.
    #[schema(value_type = Vec<Object>)]
    items: Vec<PluginSummary>,
}

/// The loaded plugins; a tenant's callers, the shared ones and their tenant's.
#[utoipa::path(get, path = "/api/v1/plugins", tag = "plugins", responses((status = 200, body = PluginList), Errors))]
pub(super) async fn list_plugins(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
) -> Result<Json<PluginList>, ApiError> {
    let owners = state.store.plugin_owners().await?;
    let items = state
        .registry
        .list()
        .into_iter()
        .map(|mut p| {
            p.tenant = owners.get(&p.name).cloned();
            p
        })
        .filter(|p| p.tenant.is_none() || admin.reaches_tenant(&p.tenant))
        .collect();
    Ok(Json(PluginList { items }))
}

/// Refuse what `admin` may not see of plugin `name` (another tenant's: 404) and, with
/// `manage`, may not change (a shared plugin, for a tenant's caller: 403).
async fn plugin_for(state: &AppState, admin: &Admin, name: &str, manage: bool) -> Result<(), ApiError> {
    let Some(own) = &admin.tenant else { return Ok(()) };
    match state.store.plugin_owner(name).await? {
        Some(owner) if owner == *own => Ok(()),
        Some(_) => Err(ApiError::not_found(format!("no plugin `{name}` is loaded"))),
        None if manage => Err(ApiError::forbidden(format!(
            "plugin `{name}` is shared: the server's operators manage it, not tenant `{own}`"
        ))),
        None => Ok(()),
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct UploadForm {
    /// The component: a `.wasm` file built for wasm32-wasip2.
    #[schema(value_type = String, format = Binary)]
    component: Vec<u8>,
    /// Its Ed25519 signature (`drover plugin sign`, or 64 raw bytes), unless the server
    /// takes unsigned uploads.
    #[schema(value_type = Option<String>, format = Binary)]
    signature: Option<Vec<u8>>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Uploaded {
    /// The plugin as it now serves.
    #[schema(value_type = Object)]
    plugin: PluginSummary,
    /// The same component was already serving; nothing changed.
    unchanged: bool,
    /// Id of the publisher key that signed it (`null`: taken unsigned).
    signed_by: Option<String>,
    /// Milliseconds from the request's arrival to serving (verify, compile or cache hit,
    /// pre-instantiate, smoke test, store, publish).
    upload_to_serving_ms: f64,
}

/// Upload a plugin component (`multipart/form-data`: `component`, the .wasm file, and
/// `signature`, its Ed25519 signature, raw or base64). Verified against the keys
/// registered for the manifest's publisher, compiled, smoke-tested, stored, then
/// published atomically: calls in flight finish on the version they started on.
#[utoipa::path(post, path = "/api/v1/plugins", tag = "plugins",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 201, body = Uploaded), (status = 200, description = "Already serving", body = Uploaded),
        (status = 409, description = "That name and version exist with other content, or the name has another kind", body = super::ErrorBody),
        (status = 422, description = "The component does not load (imports, world, smoke test)", body = super::ErrorBody),
        Errors))]
pub(super) async fn upload_plugin(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    // axum's own rejection is text/plain; the API answers its JSON error.
    let mut form = form.map_err(|e| ApiError::bad_request("malformed_upload", e.body_text()))?;
    let started = std::time::Instant::now();
    let (mut component, mut signature) = (None, None);
    while let Some(field) =
        form.next_field().await.map_err(|e| ApiError::bad_request("malformed_upload", e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(|e| ApiError::bad_request("malformed_upload", e.body_text()))?;
        match name.as_str() {
            "component" => component = Some(bytes),
            "signature" => signature = Some(bytes),
            other => {
                return Err(ApiError::bad_request(
                    "malformed_upload",
                    format!("unexpected form field `{other}`: send `component` and `signature`"),
                ));
            }
        }
    }
    let component = component.ok_or_else(|| {
        ApiError::bad_request("malformed_upload", "no `component` field: send the .wasm file as `component`")
    })?;
    let signature = signature.filter(|s| !s.is_empty());
    if let Some(t) = &admin.tenant {
        crate::tenants::check_storage(&state.store, t, component.len() as u64, state.tenant_storage).await?;
    }
    let done = state.catalog.upload(&component, signature.as_deref(), &admin.actor(), admin.tenant.as_deref()).await?;
    let mut plugin = summary(&state, &done.plugin.manifest.name)?;
    plugin.tenant = state.store.plugin_owner(&plugin.name).await?;
    let status = if done.unchanged { StatusCode::OK } else { StatusCode::CREATED };
    Ok((
        status,
        Json(Uploaded {
            plugin,
            unchanged: done.unchanged,
            signed_by: done.signed_by,
            upload_to_serving_ms: started.elapsed().as_secs_f64() * 1e3,
        }),
    ))
}

fn summary(state: &AppState, name: &str) -> Result<PluginSummary, ApiError> {
    state
        .registry
        .list()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no plugin `{name}` is loaded")))
}

#[derive(Serialize, ToSchema)]
pub(super) struct PluginDetail {
    #[schema(value_type = Object)]
    plugin: PluginSummary,
    /// Uploaded components of this name, newest first (first-party ones live in the binary).
    components: Vec<ComponentRow>,
    /// What happened to it, newest first (the last 100 events).
    history: Vec<PluginEventRow>,
}

/// One plugin: what serves, what is loaded beside it, what was uploaded, its history.
#[utoipa::path(get, path = "/api/v1/plugins/{name}", tag = "plugins", params(("name" = String, Path)),
    responses((status = 200, body = PluginDetail), Errors))]
pub(super) async fn get_plugin(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
) -> Result<Json<PluginDetail>, ApiError> {
    plugin_for(&state, &admin, &name, false).await?;
    let mut plugin = summary(&state, &name)?;
    plugin.tenant = state.store.plugin_owner(&name).await?;
    let (components, history) = state.catalog.describe(&name).await?;
    Ok(Json(PluginDetail { plugin, components, history }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Reason {
    /// Why, for the history (at most 1000 characters).
    #[serde(default)]
    #[schema(max_length = 1000)]
    reason: Option<String>,
}

/// The optional `{"reason": …}` body of rollback and suspend.
fn reason(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // `null` is no reason, as an empty body is (the document says the body is optional).
    // Anything but an object or null is refused: serde would read a struct from an array.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("request body: {e}")))?;
    if !(value.is_object() || value.is_null()) {
        return Err(ApiError::bad_request(
            "malformed_json",
            "request body: an object like {\"reason\": \"…\"}, null, or nothing",
        ));
    }
    let r: Option<Reason> = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("request body: {e}")))?;
    let reason = r.and_then(|r| r.reason);
    if reason.as_ref().is_some_and(|t| t.chars().count() > 1000) {
        return Err(ApiError::bad_request("invalid", "`reason`: at most 1000 characters"));
    }
    Ok(reason)
}

/// Return to the version that served before the current one, at once (it stays loaded
/// side by side). Repeated, it walks further back.
#[utoipa::path(post, path = "/api/v1/plugins/{name}/rollback", tag = "plugins", params(("name" = String, Path)),
    request_body(content = Option<Reason>),
    responses((status = 200, body = Object, description = "The plugin as it now serves"),
        (status = 409, description = "No earlier version is loaded", body = super::ErrorBody), Errors))]
pub(super) async fn rollback_plugin(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<PluginSummary>, ApiError> {
    plugin_for(&state, &admin, &name, true).await?;
    let reason = reason(&body)?;
    state.catalog.rollback(&name, &admin.actor(), reason.as_deref(), false).await?;
    Ok(Json(summary(&state, &name)?))
}

/// Suspend a plugin: its devices' calls are refused (503) and their operations stay
/// queued until it is enabled again or replaced by an upload.
#[utoipa::path(post, path = "/api/v1/plugins/{name}/suspend", tag = "plugins", params(("name" = String, Path)),
    request_body(content = Option<Reason>),
    responses((status = 200, body = Object, description = "The plugin, suspended"), Errors))]
pub(super) async fn suspend_plugin(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<PluginSummary>, ApiError> {
    plugin_for(&state, &admin, &name, true).await?;
    let reason = reason(&body)?.unwrap_or_else(|| format!("suspended by {}", admin.actor()));
    state.catalog.suspend(&name, &reason, &admin.actor()).await?;
    Ok(Json(summary(&state, &name)?))
}

/// Lift a suspension (by an admin or the breaker).
#[utoipa::path(post, path = "/api/v1/plugins/{name}/enable", tag = "plugins", params(("name" = String, Path)),
    responses((status = 200, body = Object, description = "The plugin, serving"), Errors))]
pub(super) async fn enable_plugin(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<Json<PluginSummary>, ApiError> {
    plugin_for(&state, &admin, &name, true).await?;
    state.catalog.enable(&name, &admin.actor()).await?;
    Ok(Json(summary(&state, &name)?))
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantList {
    /// Capabilities granted: log, config, kv, clock, random, filesystem, network.
    #[schema(value_type = Vec<crate::plugins::Capability>)]
    capabilities: Vec<String>,
    /// Whether an admin set these (`false`: defaults, first-party plugins only).
    #[serde(default)]
    set_by_admin: bool,
}

/// What plugin `name` is granted. May be asked before the plugin is ever uploaded.
#[utoipa::path(get, path = "/api/v1/plugins/{name}/grants", tag = "plugins", params(("name" = String, Path)),
    responses((status = 200, body = GrantList), Errors))]
pub(super) async fn get_grants(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
) -> Result<Json<GrantList>, ApiError> {
    plugin_for(&state, &admin, &name, false).await?;
    let stored = state.catalog.stored_grants(&name).await?;
    let set_by_admin = stored.is_some();
    let grants = match stored {
        Some(g) => g,
        None => state.registry.get(&name).map(|p| p.granted.clone()).unwrap_or_default(),
    };
    let capabilities = grants
        .iter()
        .map(|c| serde_json::to_value(c).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())
        .collect();
    Ok(Json(GrantList { capabilities, set_by_admin }))
}

/// Grant plugin `name` capabilities (replacing what it had). Only what is granted and
/// requested by its manifest is linked. A loaded plugin is reloaded with the new grants
/// first; if it imports something no longer granted, nothing changes (422).
#[utoipa::path(put, path = "/api/v1/plugins/{name}/grants", tag = "plugins", params(("name" = String, Path)),
    request_body = GrantList, responses((status = 200, body = GrantList),
        (status = 422, description = "The plugin imports a capability the new grants take away: nothing changed",
         body = super::ErrorBody), Errors))]
pub(super) async fn put_grants(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
    ApiJson(list): ApiJson<GrantList>,
) -> Result<Json<GrantList>, ApiError> {
    let grants = parse_grants(&list.capabilities).map_err(|m| ApiError::bad_request("invalid", m))?;
    if let Some(t) = &admin.tenant {
        // Its own plugin (or a name of its own not yet uploaded), and only what stays in
        // the sandbox: files and the network are the operators' to give.
        state.catalog.tenant_may_use(&name, t).await?;
        if let Some(c) = grants.iter().find(|c| matches!(c, Capability::Filesystem | Capability::Network)) {
            return Err(ApiError::forbidden(format!(
                "a tenant's admin grants its plugins log, config, kv, clock and random; `{}` is the server's \
                 operators' to grant",
                serde_json::to_value(c).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            )));
        }
        // Granting claims the name, as its first upload would: the grant is the tenant's
        // (its event too), and no one else takes the name meanwhile.
        if state.store.claim_plugin_name(&name, t).await? != *t {
            return Err(crate::plugins::catalog::CatalogError::Conflict(format!(
                "plugin `{name}` is another tenant's"
            ))
            .into());
        }
    }
    state.catalog.set_grants(&name, grants, &admin.actor()).await?;
    get_grants(State(state), TenantViewer(admin), Path(name)).await
}

#[derive(Serialize, ToSchema)]
pub(super) struct KeyList {
    items: Vec<PublisherKeyRow>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewKey {
    /// The publisher name plugins signed by this key must carry in their manifest: 1 to
    /// 128 characters, without spaces at either end.
    #[schema(min_length = 1, max_length = 128, pattern = r"^\S(.*\S)?$")]
    publisher: String,
    /// Ed25519 public key: SubjectPublicKeyInfo PEM (`drover plugin keygen`, `openssl pkey -pubout`)
    /// or the 32 raw bytes in base64.
    public_key: String,
}

/// Publisher keys whose signatures uploads are checked against.
#[utoipa::path(get, path = "/api/v1/publisher-keys", tag = "plugins", responses((status = 200, body = KeyList), Errors))]
pub(super) async fn list_keys(State(state): State<AppState>, _: Viewer) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList { items: state.store.publisher_keys().await? }))
}

/// Trust a publisher's key: uploads whose manifest names that publisher may be signed by it.
#[utoipa::path(post, path = "/api/v1/publisher-keys", tag = "plugins", request_body = NewKey,
    responses((status = 201, body = PublisherKeyRow), Errors))]
pub(super) async fn add_key(
    State(state): State<AppState>,
    Administrator(admin): Administrator,
    ApiJson(key): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<PublisherKeyRow>), ApiError> {
    if key.publisher.trim().is_empty() || key.publisher.len() > 128 || key.publisher.trim() != key.publisher {
        return Err(ApiError::bad_request("invalid", "`publisher`: 1-128 characters, as plugin manifests name it"));
    }
    let parsed = signing::parse_public_key(&key.public_key)
        .map_err(|e| ApiError::bad_request("invalid", format!("`public_key`: {e}")))?;
    let row = PublisherKeyRow {
        key_id: signing::key_id(&parsed),
        publisher: key.publisher,
        public_key: signing::public_key_pem(&parsed),
        added_at: now_ms(),
        added_by: admin.actor(),
    };
    state.store.add_publisher_key(&row).await?;
    tracing::info!(key_id = %row.key_id, publisher = %row.publisher, actor = %row.added_by, "publisher key added");
    Ok((StatusCode::CREATED, Json(row)))
}

/// Stop trusting a key. Plugins it signed keep serving; new uploads signed by it are refused.
#[utoipa::path(delete, path = "/api/v1/publisher-keys/{key_id}", tag = "plugins", params(("key_id" = String, Path)),
    responses((status = 204, description = "Removed"), Errors))]
pub(super) async fn remove_key(
    State(state): State<AppState>,
    Administrator(admin): Administrator,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state.store.remove_publisher_key(&key_id).await? {
        return Err(ApiError::not_found(format!("no publisher key `{key_id}`")));
    }
    tracing::info!(key_id, actor = %admin.actor(), "publisher key removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerSettings {
    /// Take plugin uploads without a signature (a signature that is present must still verify).
    allow_unsigned_plugins: bool,
}

/// Server-wide settings.
#[utoipa::path(get, path = "/api/v1/settings", tag = "admin", responses((status = 200, body = ServerSettings), Errors))]
pub(super) async fn get_settings(State(state): State<AppState>, _: Viewer) -> Result<Json<ServerSettings>, ApiError> {
    let allow = state.store.server_setting(ALLOW_UNSIGNED).await?.as_deref() == Some("true");
    Ok(Json(ServerSettings { allow_unsigned_plugins: allow }))
}

/// Change server-wide settings.
#[utoipa::path(put, path = "/api/v1/settings", tag = "admin", request_body = ServerSettings,
    responses((status = 200, body = ServerSettings), Errors))]
pub(super) async fn put_settings(
    State(state): State<AppState>,
    Administrator(admin): Administrator,
    ApiJson(s): ApiJson<ServerSettings>,
) -> Result<Json<ServerSettings>, ApiError> {
    state.store.put_server_setting(ALLOW_UNSIGNED, if s.allow_unsigned_plugins { "true" } else { "false" }).await?;
    tracing::warn!(actor = %admin.actor(), allow_unsigned_plugins = s.allow_unsigned_plugins, "server settings changed");
    Ok(Json(s))
}
