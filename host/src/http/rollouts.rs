//! `/api/v1/rollouts`: staged rollouts of an artifact, their counts and devices, and the
//! admin's controls. The engine is `crate::rollouts` (docs/rollouts.md). Anything that
//! sends updates takes an admin token; stopping one (pause, cancel, abort) an operator's,
//! so whoever sees a bad image first can stop it.
//!
//! A tenant's callers see and drive their tenant's rollouts only (named with or without
//! `TENANT/`); another tenant's and the operators' are 404 to them (docs/security.md,
//! "Tenants").

use super::api::{Errors, Page, next_after};
use super::{Admin, ApiError, ApiJson, AppState, Path, Query, TenantAdministrator, TenantOperator, TenantViewer};
use crate::rollouts::{self, Spec};
use crate::store::{RolloutDeviceRow, RolloutRow};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// A rollout as the API shows it.
#[derive(Serialize, ToSchema)]
pub(super) struct Rollout {
    /// A tenant's rollout is named `TENANT/NAME`.
    name: String,
    /// The tenant whose it is (its artifact's); absent: the operators'.
    tenant: Option<String>,
    /// `running`, `paused`, `finished`, `aborted` or `cancelled`.
    state: String,
    /// Why it was aborted.
    reason: Option<String>,
    /// `none`, `running` or `done`.
    rollback: String,
    /// The current phase, from 1.
    phase: i64,
    phases: usize,
    phase_started_at: i64,
    artifact: rollouts::ArtifactRef,
    /// Devices per state, over every phase.
    counts: BTreeMap<String, i64>,
    /// Devices per state in each phase (phase 1 first).
    phase_counts: Vec<BTreeMap<String, i64>>,
    spec: Spec,
    created_by: String,
    created_at: i64,
    updated_at: i64,
    /// When there was nothing left to drive.
    done_at: Option<i64>,
}

impl Rollout {
    async fn of(state: &AppState, r: RolloutRow) -> Result<Rollout, ApiError> {
        let spec = rollouts::spec_of(&r)?;
        let by_phase = rollouts::counts(state, r.id).await?;
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        let mut phase_counts = vec![BTreeMap::new(); spec.phases.len()];
        for (phase, states) in by_phase {
            for (s, n) in states {
                *counts.entry(s.clone()).or_default() += n;
                if let Some(p) = phase_counts.get_mut(phase as usize) {
                    p.insert(s, n);
                }
            }
        }
        Ok(Rollout {
            name: r.name,
            tenant: r.tenant,
            state: r.state,
            reason: r.reason,
            rollback: r.rollback,
            phase: r.phase + 1,
            phases: spec.phases.len(),
            phase_started_at: r.phase_started_at,
            artifact: spec.artifact.clone(),
            counts,
            phase_counts,
            spec,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            done_at: r.done_at,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub(super) struct Created {
    #[serde(flatten)]
    rollout: Rollout,
    /// Targeted devices the artifact is not for (another type or model).
    left_out: u64,
}

/// Create a rollout: every target is drawn into its phase now, and the first phase
/// starts at once. It is its artifact's tenant's (a tenant's caller names its own
/// artifacts only) and reaches that tenant's devices only.
#[utoipa::path(post, path = "/api/v1/rollouts", tag = "rollouts", request_body = Spec,
    responses((status = 201, body = Created), (status = 409, description = "The name is taken", body = super::ErrorBody),
        Errors))]
pub(super) async fn create_rollout(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    ApiJson(spec): ApiJson<Spec>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let (row, left_out) = rollouts::create(&state, spec, &admin.actor(), admin.tenant.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(Created { rollout: Rollout::of(&state, row).await?, left_out })))
}

#[derive(Serialize, ToSchema)]
pub(super) struct RolloutList {
    items: Vec<Rollout>,
}

/// Every rollout, oldest first; a tenant's callers, their tenant's.
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts", responses((status = 200, body = RolloutList), Errors))]
pub(super) async fn list_rollouts(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
) -> Result<Json<RolloutList>, ApiError> {
    let mut items = Vec::new();
    for r in state.store.rollouts().await?.into_iter().filter(|r| admin.reaches_tenant(&r.tenant)) {
        items.push(Rollout::of(&state, r).await?);
    }
    Ok(Json(RolloutList { items }))
}

/// The rollout `admin` names, if it may see it: any for an operator,
/// its tenant's for a tenant's caller (named with or without `TENANT/`); else 404.
async fn visible(state: &AppState, admin: &Admin, name: &str) -> Result<RolloutRow, ApiError> {
    let r = rollouts::find(state, &crate::tenants::qualified(admin.tenant.as_deref(), name)).await?;
    if !admin.reaches_tenant(&r.tenant) {
        return Err(ApiError::not_found(format!("rollout `{name}` not found")));
    }
    Ok(r)
}

/// Delete a rollout that is over, with its devices' history.
#[utoipa::path(delete, path = "/api/v1/rollouts/{name}", tag = "rollouts", params(("name" = String, Path)),
    responses((status = 204), (status = 409, description = "Not over yet", body = super::ErrorBody), Errors))]
pub(super) async fn delete_rollout(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let r = visible(&state, &admin, &name).await?;
    rollouts::remove(&state, &r.name, &admin.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/rollouts/{name}", tag = "rollouts", params(("name" = String, Path)),
    responses((status = 200, body = Rollout), Errors))]
pub(super) async fn get_rollout(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    let r = visible(&state, &admin, &name).await?;
    Ok(Json(Rollout::of(&state, r).await?))
}

/// Where a device of a rollout is (docs/rollouts.md, "States").
#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum DeviceState {
    Waiting,
    Pending,
    Downloading,
    Installing,
    Rebooting,
    Succeeded,
    Failed,
    TimedOut,
    Skipped,
    Cancelled,
    RollingBack,
    RolledBack,
    RollbackFailed,
    RollbackUnsupported,
}

impl DeviceState {
    /// The name the store keeps (one of `rollouts::DEVICE_STATES`).
    fn as_str(self) -> &'static str {
        rollouts::DEVICE_STATES[self as usize]
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeviceFilter {
    /// Only devices in this state.
    #[param(inline)]
    state: Option<DeviceState>,
    /// Only devices of this phase (from 1).
    phase: Option<i64>,
    after: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct RolloutDevices {
    items: Vec<RolloutDeviceRow>,
    /// Pass as `after` for the next page; absent on the last.
    next_after: Option<i64>,
}

/// A rollout's devices in draw order: phase, state, progress, the version each had, why
/// it failed.
#[utoipa::path(get, path = "/api/v1/rollouts/{name}/devices", tag = "rollouts", params(("name" = String, Path), DeviceFilter),
    responses((status = 200, body = RolloutDevices), Errors))]
pub(super) async fn rollout_devices(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
    Query(f): Query<DeviceFilter>,
) -> Result<Json<RolloutDevices>, ApiError> {
    let r = visible(&state, &admin, &name).await?;
    let (after, limit) = Page { after: f.after, limit: f.limit }.bounds();
    let phase = f.phase.map(|p| p.saturating_sub(1));
    let items = state.store.rollout_devices(r.id, f.state.map(DeviceState::as_str), phase, after, limit).await?;
    let next_after = next_after(&items, limit, |d| d.position);
    Ok(Json(RolloutDevices { items, next_after }))
}

async fn answer(state: &AppState, r: RolloutRow) -> Result<Json<Rollout>, ApiError> {
    Ok(Json(Rollout::of(state, r).await?))
}

/// Stop starting devices; those under way go on.
#[utoipa::path(post, path = "/api/v1/rollouts/{name}/pause", tag = "rollouts", params(("name" = String, Path)),
    responses((status = 200, body = Rollout), (status = 409, description = "Not running", body = super::ErrorBody), Errors))]
pub(super) async fn pause_rollout(
    State(state): State<AppState>,
    TenantOperator(admin): TenantOperator,
    Path(name): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    let name = visible(&state, &admin, &name).await?.name;
    let r = rollouts::pause(&state, &name, &admin.actor()).await?;
    answer(&state, r).await
}

#[utoipa::path(post, path = "/api/v1/rollouts/{name}/resume", tag = "rollouts", params(("name" = String, Path)),
    responses((status = 200, body = Rollout), (status = 409, description = "Not paused", body = super::ErrorBody), Errors))]
pub(super) async fn resume_rollout(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    let name = visible(&state, &admin, &name).await?.name;
    let r = rollouts::resume(&state, &name, &admin.actor()).await?;
    answer(&state, r).await
}

/// Stop for good: no new device starts, updates not yet delivered are cancelled, nothing
/// is rolled back.
#[utoipa::path(post, path = "/api/v1/rollouts/{name}/cancel", tag = "rollouts", params(("name" = String, Path)),
    responses((status = 200, body = Rollout), (status = 409, description = "Already over", body = super::ErrorBody), Errors))]
pub(super) async fn cancel_rollout(
    State(state): State<AppState>,
    TenantOperator(admin): TenantOperator,
    Path(name): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    let name = visible(&state, &admin, &name).await?.name;
    let r = rollouts::cancel(&state, &name, &admin.actor()).await?;
    answer(&state, r).await
}

/// Abort as the criteria would: cancel what is queued and, if the rollout says
/// `auto_rollback`, send updated devices back.
#[utoipa::path(post, path = "/api/v1/rollouts/{name}/abort", tag = "rollouts", params(("name" = String, Path)),
    responses((status = 200, body = Rollout), (status = 409, description = "Already over", body = super::ErrorBody), Errors))]
pub(super) async fn abort_rollout(
    State(state): State<AppState>,
    TenantOperator(admin): TenantOperator,
    Path(name): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    let name = visible(&state, &admin, &name).await?.name;
    let r = rollouts::abort(&state, &name, &admin.actor()).await?;
    answer(&state, r).await
}

/// Start the next phase now.
#[utoipa::path(post, path = "/api/v1/rollouts/{name}/advance", tag = "rollouts", params(("name" = String, Path)),
    responses((status = 200, body = Rollout), (status = 409, description = "Over, or in its last phase", body = super::ErrorBody),
        Errors))]
pub(super) async fn advance_rollout(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    let name = visible(&state, &admin, &name).await?.name;
    let r = rollouts::advance(&state, &name, &admin.actor()).await?;
    answer(&state, r).await
}

/// Send the devices that updated back to the version they had (a stopped or finished
/// rollout).
#[utoipa::path(post, path = "/api/v1/rollouts/{name}/rollback", tag = "rollouts", params(("name" = String, Path)),
    responses((status = 200, body = Rollout), (status = 409, description = "Still running, or already rolled back",
        body = super::ErrorBody), Errors))]
pub(super) async fn rollback_rollout(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    let name = visible(&state, &admin, &name).await?.name;
    let r = rollouts::rollback(&state, &name, &admin.actor()).await?;
    answer(&state, r).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API's state names and the store's are the same list, in the same order.
    #[test]
    fn device_states_match_the_store() {
        for name in rollouts::DEVICE_STATES {
            let parsed: DeviceState = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(parsed.as_str(), name);
        }
    }
}
