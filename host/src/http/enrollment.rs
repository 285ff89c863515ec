//! `/api/v1/enrollment-tokens` and `/api/v1/devices/import`: how devices come to be
//! enrolled (`enrollment.rs` holds the rule and does the work).

use super::Query;
use super::api::Errors;
use super::{ApiError, ApiJson, AppState, TenantAdministrator};
use crate::enrollment::DAY_SECS;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// How long an enrollment token stays valid unless asked otherwise, and at most.
const DEFAULT_TOKEN_TTL_SECS: i64 = 7 * DAY_SECS;
const MAX_TOKEN_TTL_SECS: i64 = 365 * DAY_SECS;
/// How many devices one enrollment token may enroll at most.
const MAX_TOKEN_USES: i64 = 100_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewEnrollmentToken {
    device_type: String,
    /// Claim only the devices of this import (`batch` in the import's answer).
    import_batch: Option<String>,
    /// How many devices may enroll with it, 1 to 100000 (default 1).
    #[schema(minimum = 1, maximum = 100000)]
    uses: Option<i64>,
    /// Seconds it stays valid (default 7 days, at most a year).
    #[schema(minimum = 1, maximum = 31536000)]
    ttl_secs: Option<i64>,
    /// The tenant the devices it enrolls join. A tenant's admin may leave it out (their
    /// own); an operator's default is `default`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    tenant: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct EnrollmentTokenCreated {
    /// Shown in this answer only; stored as a hash.
    token: String,
    device_type: String,
    /// The tenant the devices it enrolls join.
    tenant: String,
    uses: i64,
    expires_at: i64,
    /// The enrollment URL with the token, for a QR code.
    enrollment_url: String,
}

/// Make an enrollment token, also rendered as the enrollment URL a QR code carries.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", tag = "devices", request_body = NewEnrollmentToken,
    responses((status = 201, body = EnrollmentTokenCreated), Errors))]
pub(super) async fn create_enrollment_token(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    ApiJson(t): ApiJson<NewEnrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentTokenCreated>), ApiError> {
    if state.registry.device_type(&t.device_type).is_none() {
        return Err(ApiError::bad_request(
            "unknown_device_type",
            format!("no device type `{}` is loaded", t.device_type),
        ));
    }
    let uses = t.uses.unwrap_or(1);
    let ttl = t.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if !(1..=MAX_TOKEN_USES).contains(&uses) || !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
        return Err(ApiError::bad_request("invalid", "`uses` must be 1 to 100000 and `ttl_secs` 1 to 31536000"));
    }
    let tenant = crate::tenants::acting_in(&state.store, admin.tenant.as_deref(), t.tenant.as_deref()).await?;
    if !crate::tenants::may_use_type(&state.store, &t.device_type, &tenant).await? {
        return Err(ApiError::bad_request(
            "unknown_device_type",
            format!("no device type `{}` is loaded for tenant `{tenant}`", t.device_type),
        ));
    }
    let (token, hash) = crate::auth::new_token("enroll");
    let expires_at = crate::store::now_ms() + ttl * 1000;
    state
        .store
        .insert_enrollment_token(&crate::store::NewEnrollmentToken {
            token_hash: &hash,
            device_type: &t.device_type,
            created_by: &admin.actor(),
            expires_at,
            uses,
            import_batch: t.import_batch.as_deref(),
            tenant: &tenant,
        })
        .await?;
    // From the configured public URL, never from the request's Host header: a forged Host
    // would otherwise put an attacker's address in the QR code devices scan.
    // Where the type's plugin says enrollment starts (an Apple profile, say), else `enroll`.
    let path = state
        .registry
        .device_type(&t.device_type)
        .and_then(|p| p.manifest.enrollment_path.clone())
        .unwrap_or_else(|| "enroll".into());
    let enrollment_url =
        format!("{}/agent/v1/{}/{path}?token={token}", state.public_url.trim_end_matches('/'), t.device_type);
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentTokenCreated { token, device_type: t.device_type, tenant, uses, expires_at, enrollment_url }),
    ))
}

#[derive(Serialize, ToSchema)]
pub(super) struct Imported {
    /// Data rows read.
    rows: usize,
    /// Devices new to the server.
    registered: u64,
    /// Rows naming a device the server already had (left as it was).
    already_known: u64,
    /// This import's id: an enrollment token made with it claims only these devices.
    batch: String,
    /// Whether devices may claim these identities without an enrollment token.
    self_enroll: bool,
    /// The tenant the new devices are in.
    tenant: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ImportParams {
    /// Let these devices enroll without an enrollment token (default false: a device id
    /// proves nothing, so a pre-registered identity is claimed with a token). LwM2M
    /// devices, which cannot carry a token, need it.
    self_enroll: Option<bool>,
    /// The tenant the new devices join (a tenant's admin: their own; an operator's
    /// default: `default`).
    tenant: Option<String>,
}

/// Bulk pre-registration from CSV: a header row with `device_type` and `device_id`, and
/// optionally `name`, `owner`, `ownership` (BYOD or COPE). All rows are checked before
/// any is stored; an error names the line. Devices are `registered` until they enroll,
/// with an enrollment token unless `self_enroll=true`.
#[utoipa::path(post, path = "/api/v1/devices/import", tag = "devices", params(ImportParams),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = Imported), Errors))]
pub(super) async fn import_devices(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Query(params): Query<ImportParams>,
    body: Bytes,
) -> Result<Json<Imported>, ApiError> {
    let self_enroll = params.self_enroll.unwrap_or(false);
    let tenant = crate::tenants::acting_in(&state.store, admin.tenant.as_deref(), params.tenant.as_deref()).await?;
    let done = crate::enrollment::import_csv(&state, &body, self_enroll, &tenant).await?;
    Ok(Json(Imported {
        rows: done.rows,
        registered: done.registered,
        already_known: done.rows as u64 - done.registered,
        batch: done.batch,
        self_enroll,
        tenant,
    }))
}
