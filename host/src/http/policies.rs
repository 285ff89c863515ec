//! `/api/v1/policies`: policies and their revisions, and a device's effective policy;
//! the operators' and each tenant's (a tenant's is named `TENANT/NAME`, applies to its
//! devices only and is seen and managed by its admins and the operators). The engine is
//! `crate::policies` (docs/policies.md).

use super::{Admin, ApiError, ApiJson, AppState, Path, ScopedViewer, TenantAdministrator, TenantViewer};
use crate::policies::{self, Recomputed, Spec};
use crate::store::PolicyRow;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::Errors;

/// A new policy: a name and its first revision (the fields of `Spec`, spelt out: a
/// flattened struct with unknown fields refused cannot be described in OpenAPI).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPolicy {
    /// 1 to 64 characters: letters, digits, `-`, `_`, `.`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$")]
    name: String,
    /// Whether it applies from now on (default true).
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    #[schema(max_length = 1024)]
    description: String,
    profiles: std::collections::BTreeMap<String, Vec<policies::Feature>>,
    #[serde(default)]
    applies_to: policies::Applicability,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    action: policies::Action,
    #[serde(default)]
    #[schema(max_items = 16)]
    rules: Vec<policies::Rule>,
    /// The tenant whose policy it is (applied to its devices only): an operator's choice
    /// (absent: the operators', which rank above every tenant's); a tenant's admin makes
    /// its own tenant's.
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]{0,63}$")]
    tenant: Option<String>,
}

impl NewPolicy {
    fn spec(&self) -> Spec {
        Spec {
            description: self.description.clone(),
            profiles: self.profiles.clone(),
            applies_to: self.applies_to.clone(),
            priority: self.priority,
            action: self.action,
            rules: self.rules.clone(),
        }
    }
}

/// A revision's content as the API shows it (`Spec`, without refusing unknown fields,
/// so that it can be flattened into the answers).
#[derive(Serialize, ToSchema)]
pub(super) struct Content {
    description: String,
    profiles: std::collections::BTreeMap<String, Vec<policies::Feature>>,
    applies_to: policies::Applicability,
    priority: i64,
    action: policies::Action,
    rules: Vec<policies::Rule>,
}

impl From<Spec> for Content {
    fn from(s: Spec) -> Content {
        Content {
            description: s.description,
            profiles: s.profiles,
            applies_to: s.applies_to,
            priority: s.priority,
            action: s.action,
            rules: s.rules,
        }
    }
}

fn yes() -> bool {
    true
}

/// A policy at its current revision.
#[derive(Serialize, ToSchema)]
pub(super) struct Policy {
    /// A tenant's policy is named `TENANT/NAME`.
    name: String,
    /// The tenant whose it is; absent: the operators'.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    revision: i64,
    active: bool,
    #[serde(flatten)]
    spec: Content,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

/// A saved change and what it did to the fleet.
#[derive(Serialize, ToSchema)]
pub(super) struct Saved {
    #[serde(flatten)]
    policy: Policy,
    /// Devices whose effective policy was recomputed because of this change.
    recomputed: Recomputed,
}

/// One revision.
#[derive(Serialize, ToSchema)]
pub(super) struct Revision {
    revision: i64,
    #[serde(flatten)]
    spec: Content,
    created_by: String,
    created_at: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Restore {
    /// The revision whose content becomes a new revision.
    revision: i64,
}

/// A device's effective policy.
#[derive(Serialize, ToSchema)]
pub(super) struct Effective {
    /// The policies that make it, highest priority first: `{name, revision}`.
    #[schema(value_type = Vec<Object>)]
    policies: serde_json::Value,
    /// The POLICY_BUNDLE operation that carries it, and its state.
    operation: Option<i64>,
    state: Option<String>,
    /// SHA-256 of the bundle's features.
    digest: String,
    assigned_at: i64,
}

fn spec_of(row: &PolicyRow) -> Result<Spec, ApiError> {
    serde_json::from_str(&row.spec)
        .map_err(|e| ApiError::from(crate::error::Error::internal(format!("policy `{}`: {e}", row.name))))
}

fn policy(row: &PolicyRow) -> Result<Policy, ApiError> {
    Ok(Policy {
        name: row.name.clone(),
        tenant: row.tenant.clone(),
        revision: row.revision,
        active: row.active != 0,
        spec: spec_of(row)?.into(),
        created_by: row.created_by.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// The policy `admin` names, if it may see it: any for an operator, its tenant's for a
/// tenant's caller (named with or without `TENANT/`); else 404.
async fn named(state: &AppState, admin: &Admin, name: &str) -> Result<PolicyRow, ApiError> {
    let found = state.store.policy(&crate::tenants::qualified(admin.tenant.as_deref(), name)).await?;
    found
        .filter(|p| admin.reaches_tenant(&p.tenant))
        .ok_or_else(|| ApiError::not_found(format!("policy `{name}` not found")))
}

/// The answer to a change of the policy stored as `name`: the policy as it is now, and
/// what the change did.
async fn saved(state: &AppState, name: &str, recomputed: Recomputed) -> Result<Json<Saved>, ApiError> {
    let row =
        state.store.policy(name).await?.ok_or_else(|| ApiError::not_found(format!("policy `{name}` not found")))?;
    Ok(Json(Saved { policy: policy(&row)?, recomputed }))
}

/// Every policy in the order they rank (the operators' above every tenant's, then
/// highest priority first); a tenant's callers, their tenant's.
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies",
    responses((status = 200, body = Vec<Policy>), Errors))]
pub(super) async fn list_policies(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
) -> Result<Json<Vec<Policy>>, ApiError> {
    let rows = state.store.policies(false).await?;
    Ok(Json(rows.iter().filter(|p| admin.reaches_tenant(&p.tenant)).map(policy).collect::<Result<_, _>>()?))
}

/// Create a policy (revision 1). Every feature is checked by its device type's plugin
/// first; the devices it applies to get their new effective policy before the answer.
#[utoipa::path(post, path = "/api/v1/policies", tag = "policies", request_body = NewPolicy,
    responses((status = 201, body = Saved), (status = 409, description = "A policy has that name"), Errors))]
pub(super) async fn create_policy(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    ApiJson(p): ApiJson<NewPolicy>,
) -> Result<(StatusCode, Json<Saved>), ApiError> {
    let tenant = crate::tenants::of_new_principal(&state.store, admin.tenant.as_deref(), p.tenant.as_deref()).await?;
    let (name, done) =
        policies::create(&state, &p.name, tenant.as_deref(), p.active, &p.spec(), &admin.actor()).await?;
    Ok((StatusCode::CREATED, saved(&state, &name, done).await?))
}

/// A policy at its current revision.
#[utoipa::path(get, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = Policy), Errors))]
pub(super) async fn get_policy(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
) -> Result<Json<Policy>, ApiError> {
    Ok(Json(policy(&named(&state, &admin, &name).await?)?))
}

/// Edit a policy: the body is the whole new content, saved as the next revision.
#[utoipa::path(put, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    request_body = Spec, responses((status = 200, body = Saved), Errors))]
pub(super) async fn update_policy(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<Spec>,
) -> Result<Json<Saved>, ApiError> {
    let name = named(&state, &admin, &name).await?.name;
    let done = policies::update(&state, &name, &spec, &admin.actor()).await?;
    saved(&state, &name, done).await
}

/// Delete a policy and its history. Devices it applied to get their new effective policy
/// (what they were sent stays on them until another policy replaces it).
#[utoipa::path(delete, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = Recomputed), Errors))]
pub(super) async fn delete_policy(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<Json<Recomputed>, ApiError> {
    let name = named(&state, &admin, &name).await?.name;
    Ok(Json(policies::delete(&state, &name, &admin.actor()).await?))
}

async fn set_active(state: AppState, admin: Admin, name: String, active: bool) -> Result<Json<Saved>, ApiError> {
    let name = named(&state, &admin, &name).await?.name;
    let done = policies::set_active(&state, &name, active, &admin.actor()).await?;
    saved(&state, &name, done).await
}

/// Let a policy apply again.
#[utoipa::path(post, path = "/api/v1/policies/{name}/activate", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = Saved), Errors))]
pub(super) async fn activate_policy(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<Json<Saved>, ApiError> {
    set_active(state, admin, name, true).await
}

/// Stop a policy from applying (kept, with its history).
#[utoipa::path(post, path = "/api/v1/policies/{name}/deactivate", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = Saved), Errors))]
pub(super) async fn deactivate_policy(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
) -> Result<Json<Saved>, ApiError> {
    set_active(state, admin, name, false).await
}

/// Every revision of a policy, newest first.
#[utoipa::path(get, path = "/api/v1/policies/{name}/revisions", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Revision>), Errors))]
pub(super) async fn list_revisions(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
) -> Result<Json<Vec<Revision>>, ApiError> {
    let row = named(&state, &admin, &name).await?;
    let mut out = Vec::new();
    for r in state.store.policy_revisions(row.id).await? {
        let spec: Spec = serde_json::from_str(&r.spec)
            .map_err(|e| ApiError::from(crate::error::Error::internal(format!("policy `{name}`: {e}"))))?;
        out.push(Revision {
            revision: r.revision,
            spec: spec.into(),
            created_by: r.created_by,
            created_at: r.created_at,
        });
    }
    Ok(Json(out))
}

/// Make an earlier revision's content current again, as a new revision (checked again by
/// the plugins as they are now).
#[utoipa::path(post, path = "/api/v1/policies/{name}/restore", tag = "policies", params(("name" = String, Path)),
    request_body = Restore, responses((status = 200, body = Saved), Errors))]
pub(super) async fn restore_policy(
    State(state): State<AppState>,
    TenantAdministrator(admin): TenantAdministrator,
    Path(name): Path<String>,
    ApiJson(r): ApiJson<Restore>,
) -> Result<Json<Saved>, ApiError> {
    let name = named(&state, &admin, &name).await?.name;
    let done = policies::restore(&state, &name, r.revision, &admin.actor()).await?;
    saved(&state, &name, done).await
}

/// A device's effective policy: which policies make it and the bundle operation that
/// carries it. 404 when no policy applies to the device.
#[utoipa::path(get, path = "/api/v1/devices/{type}/{id}/policy", tag = "policies",
    params(("type" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Effective), Errors))]
pub(super) async fn device_policy(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Path((device_type, device_id)): Path<(String, String)>,
) -> Result<Json<Effective>, ApiError> {
    // A scoped or tenant's caller reads its own devices' (the operators' policies that
    // apply to them named too: they are why the device is set as it is).
    let device = super::devices::device_for(&state, &admin, &device_type, &device_id).await?;
    let row = state
        .store
        .device_policy(device.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no policy applies to {device_type}/{device_id}")))?;
    let op = match row.operation {
        Some(id) => state.store.operation(id).await?,
        None => None,
    };
    Ok(Json(Effective {
        policies: serde_json::from_str(&row.policies).unwrap_or_default(),
        operation: row.operation,
        state: op.map(|o| o.state),
        digest: row.digest,
        assigned_at: row.assigned_at,
    }))
}

/// A device's compliance: its latest verdict on its policies' rules and on what it
/// reported about their features, and its changes.
#[derive(Serialize, ToSchema)]
pub(super) struct Compliance {
    /// `compliant`, `non_compliant`, `unknown` (a rule could not be evaluated), or
    /// `pending` (not evaluated yet, or the device has not answered its bundle).
    state: String,
    /// Since when it is in this state (absent while pending).
    since: Option<i64>,
    evaluated_at: Option<i64>,
    /// A `block` policy's rule failed: the device gets policy bundles only until it complies.
    blocked: bool,
    checks: Vec<policies::Check>,
    /// The latest changes, newest first: `{at, state, checks}`.
    #[schema(value_type = Vec<Object>)]
    history: Vec<serde_json::Value>,
}

/// A device's compliance with its effective policy's rules (evaluated a few seconds after
/// it reports), and its latest 50 changes.
#[utoipa::path(get, path = "/api/v1/devices/{type}/{id}/compliance", tag = "policies",
    params(("type" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Compliance), Errors))]
pub(super) async fn device_compliance(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Path((device_type, device_id)): Path<(String, String)>,
) -> Result<Json<Compliance>, ApiError> {
    let device = super::devices::device_for(&state, &admin, &device_type, &device_id).await?;
    let history = state
        .store
        .compliance_history(device.id, 50)
        .await?
        .into_iter()
        .map(|h| {
            serde_json::json!({ "at": h.at, "state": h.state,
                "checks": serde_json::from_str::<serde_json::Value>(&h.checks).unwrap_or_default() })
        })
        .collect();
    Ok(Json(match state.store.compliance(device.id).await? {
        Some(c) => Compliance {
            state: c.state,
            since: Some(c.since),
            evaluated_at: Some(c.evaluated_at),
            blocked: c.blocked != 0,
            checks: serde_json::from_str(&c.checks).unwrap_or_default(),
            history,
        },
        None => Compliance {
            state: "pending".into(),
            since: None,
            evaluated_at: None,
            blocked: false,
            checks: Vec::new(),
            history,
        },
    }))
}

/// How the devices a policy applies to comply.
#[derive(Serialize, ToSchema)]
pub(super) struct PolicyCompliance {
    policy: String,
    /// Devices by state, all types together.
    #[schema(value_type = Object)]
    total: std::collections::BTreeMap<String, i64>,
    /// Devices by device type, then state.
    #[schema(value_type = Object)]
    by_device_type: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
}

/// Compliance of the devices whose effective policy includes this policy: counts of
/// `compliant`, `non_compliant`, `unknown` and `pending`, overall and by device type.
#[utoipa::path(get, path = "/api/v1/policies/{name}/compliance", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, body = PolicyCompliance), Errors))]
pub(super) async fn policy_compliance(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
) -> Result<Json<PolicyCompliance>, ApiError> {
    let name = named(&state, &admin, &name).await?.name;
    let mut total = std::collections::BTreeMap::new();
    let mut by_device_type: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> =
        std::collections::BTreeMap::new();
    for (ty, st, n) in state.store.compliance_counts(&name).await? {
        *total.entry(st.clone()).or_insert(0) += n;
        *by_device_type.entry(ty).or_default().entry(st).or_insert(0) += n;
    }
    Ok(Json(PolicyCompliance { policy: name, total, by_device_type }))
}
