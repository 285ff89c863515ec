//! `/api/v1/artifacts`: upload, list and delete images for rollouts; `/download/{token}`:
//! a device fetching one with its grant, with range requests so a board resumes a broken
//! download. The service is `crate::artifacts` (docs/rollouts.md).
//!
//! A tenant's admins upload their tenant's artifacts, and its callers see only those
//! (named with or without `TENANT/`; another tenant's and the operators' are 404 to
//! them). An operator may upload one into a tenant (`tenant` in the form).

use super::api::Errors;
use super::{Admin, ApiError, AppState, Path, TenantAdministrator, TenantViewer};
use crate::store::ArtifactRow;
use axum::Json;
use axum::extract::{Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

/// An artifact as the API shows it.
#[derive(Serialize, ToSchema)]
pub(super) struct Artifact {
    #[serde(flatten)]
    row: ArtifactRow,
    device_types: Vec<String>,
    /// Compatible models; empty: any.
    models: Vec<String>,
}

impl From<ArtifactRow> for Artifact {
    fn from(row: ArtifactRow) -> Self {
        Artifact { device_types: row.types(), models: row.model_list(), row }
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct ArtifactList {
    items: Vec<Artifact>,
}

/// The upload form (`multipart/form-data`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ArtifactForm {
    /// 1 to 128 characters, without `/`.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^/]*\S[^/]*$")]
    name: String,
    /// 1 to 32 characters: what devices report once they run it (metadata `firmware`).
    #[schema(min_length = 1, max_length = 32, pattern = r"^[^/]*\S[^/]*$")]
    version: String,
    /// Comma-separated device types it is for, e.g. `esp8266,lwm2m`.
    device_types: String,
    /// Comma-separated compatible models (the device's metadata `model`); none: any.
    models: Option<String>,
    /// The SHA-256 the uploader computed (hex); the upload is refused if the bytes differ.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    sha256: Option<String>,
    /// Ed25519 signature over the file, raw or base64, by a registered publisher key.
    signature: Option<String>,
    /// The tenant whose artifact it is (then named `TENANT/NAME`): an operator's choice
    /// (absent: the operators'); a tenant's admin's upload is its own tenant's.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    tenant: Option<String>,
    /// The image; send it after the other fields.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
}

fn malformed(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("malformed_upload", message)
}

/// Upload an image: its size and SHA-256 are computed as it arrives (streamed to the
/// artifact storage, never held in memory); a `sha256` given must match, a `signature`
/// must verify under a registered publisher key.
#[utoipa::path(post, path = "/api/v1/artifacts", tag = "rollouts",
    request_body(content = ArtifactForm, content_type = "multipart/form-data"),
    responses((status = 201, body = Artifact),
        (status = 409, description = "That name and version exist", body = super::ErrorBody), Errors))]
pub(super) async fn upload_artifact(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Artifact>), ApiError> {
    let mut form = form.map_err(|e| malformed(e.body_text()))?;
    let mut fields: std::collections::BTreeMap<String, String> = Default::default();
    let mut signature = None;
    let mut file = None;
    while let Some(mut field) = form.next_field().await.map_err(|e| malformed(e.body_text()))? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" => {
                if file.is_some() {
                    return Err(malformed("two `file` fields: send one image"));
                }
                let staged = state.artifacts.staging().join(format!("upload-{}", crate::artifacts::new_grant().1));
                let result = stage(&mut field, &staged).await;
                if result.is_err() {
                    let _ = tokio::fs::remove_file(&staged).await;
                }
                let (size, sha) = result?;
                file = Some((staged, size, sha));
            }
            "signature" => signature = Some(small(&mut field, "signature").await?),
            "name" | "version" | "device_types" | "models" | "sha256" | "tenant" => {
                let bytes = small(&mut field, &name).await?;
                let text = String::from_utf8(bytes).map_err(|_| malformed(format!("`{name}` is not UTF-8 text")))?;
                fields.insert(name, text.trim().to_string());
            }
            other => {
                return Err(malformed(format!(
                    "unexpected form field `{other}`: send name, version, device_types, models, sha256, signature, tenant, \
                     file"
                )));
            }
        }
    }
    let Some((staged, size, sha256)) = file else {
        return Err(malformed("no `file` field: send the image as `file`"));
    };
    let asked = fields.get("tenant").filter(|t| !t.is_empty());
    let tenant = match crate::tenants::of_new_principal(
        &state.store,
        admin.tenant.as_deref(),
        asked.map(|t| t.as_str()),
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            let _ = tokio::fs::remove_file(&staged).await;
            return Err(e.into());
        }
    };
    let list = |s: Option<&String>| -> Vec<String> {
        s.map(|s| s.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()).unwrap_or_default()
    };
    let upload = crate::artifacts::Upload {
        name: fields.get("name").cloned().unwrap_or_default(),
        version: fields.get("version").cloned().unwrap_or_default(),
        device_types: list(fields.get("device_types")),
        models: list(fields.get("models")),
        expected_sha256: fields.get("sha256").cloned().filter(|s| !s.is_empty()),
        signature: signature.filter(|s| !s.is_empty()),
        staged,
        size,
        sha256,
        tenant,
    };
    let row = crate::artifacts::add(&state, upload, &admin.actor()).await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// A form field other than the file: at most 8 KiB (the file may be 2 GiB, the others not).
async fn small(field: &mut axum::extract::multipart::Field<'_>, name: &str) -> Result<Vec<u8>, ApiError> {
    const MAX: usize = 8 << 10;
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| malformed(e.body_text()))? {
        if out.len() + chunk.len() > MAX {
            return Err(malformed(format!("the `{name}` field is over {} KiB", MAX >> 10)));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Write one multipart field to `path`, hashing it; refuses an empty or oversized file.
async fn stage(
    field: &mut axum::extract::multipart::Field<'_>,
    path: &std::path::Path,
) -> Result<(u64, String), ApiError> {
    let mut out = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::from(crate::error::Error::internal(format!("cannot stage the upload: {e}"))))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|e| malformed(e.body_text()))? {
        size += chunk.len() as u64;
        if size > crate::artifacts::MAX_ARTIFACT {
            return Err(ApiError::bad_request(
                "too_large",
                format!("the file is over {} MiB", crate::artifacts::MAX_ARTIFACT >> 20),
            ));
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::from(crate::error::Error::internal(format!("cannot stage the upload: {e}"))))?;
    }
    out.sync_all().await.map_err(|e| ApiError::from(crate::error::Error::internal(e.to_string())))?;
    if size == 0 {
        return Err(malformed("the `file` field is empty"));
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Every artifact, by name and upload time; a tenant's callers, their tenant's.
#[utoipa::path(get, path = "/api/v1/artifacts", tag = "rollouts", responses((status = 200, body = ArtifactList), Errors))]
pub(super) async fn list_artifacts(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
) -> Result<Json<ArtifactList>, ApiError> {
    let rows = state.store.artifacts().await?;
    let items = rows.into_iter().filter(|a| admin.reaches_tenant(&a.tenant)).map(Artifact::from).collect();
    Ok(Json(ArtifactList { items }))
}

/// The artifact `admin` names, if it may see it: any for an operator, its tenant's for a
/// tenant's caller (named with or without `TENANT/`); else 404.
async fn named(state: &AppState, admin: &Admin, name: &str, version: &str) -> Result<ArtifactRow, ApiError> {
    let stored = crate::tenants::qualified(admin.tenant.as_deref(), name);
    state
        .store
        .artifact(&stored, version)
        .await?
        .filter(|a| admin.reaches_tenant(&a.tenant))
        .ok_or_else(|| ApiError::not_found(format!("artifact {name} {version} not found")))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{name}/{version}", tag = "rollouts",
    params(("name" = String, Path), ("version" = String, Path)), responses((status = 200, body = Artifact), Errors))]
pub(super) async fn get_artifact(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Artifact>, ApiError> {
    Ok(Json(named(&state, &admin, &name, &version).await?.into()))
}

/// Delete an artifact; refused (409 `in_use`) while a rollout that is not over uses it.
#[utoipa::path(delete, path = "/api/v1/artifacts/{name}/{version}", tag = "rollouts",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 204), (status = 409, description = "A rollout uses it", body = super::ErrorBody), Errors))]
pub(super) async fn delete_artifact(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let a = named(&state, &admin, &name, &version).await?;
    crate::artifacts::remove(&state, &a, &admin.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A device downloading an artifact with the token of its grant (GET or HEAD, with
/// `Range` and conditional requests). An unknown, expired or revoked grant is a 404 that
/// says nothing more.
pub(super) async fn download(
    State(state): State<AppState>,
    axum::extract::Path(token): axum::extract::Path<String>,
    request: Request,
) -> Response {
    let gone = || (StatusCode::NOT_FOUND, "no such download, or it has expired\n").into_response();
    if token.len() != 43 {
        return gone();
    }
    let grant = match state.store.artifact_for_grant(&crate::artifacts::grant_hash(&token)).await {
        Ok(Some(g)) => g,
        Ok(None) => return gone(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (artifact, _device) = grant;
    let path = state.artifacts.file(&artifact.sha256);
    // tower-http serves the file: Range (206, multipart byte ranges), If-Range,
    // If-Modified-Since, HEAD, and a 416 for a range past the end. The file has no
    // extension, so it goes as application/octet-stream.
    match tower::ServiceExt::oneshot(tower_http::services::ServeFile::new(&path), request).await {
        Ok(r) => r.map(axum::body::Body::new),
        Err(e) => match e {},
    }
}
