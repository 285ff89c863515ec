//! What the fleet looks like at a glance (`GET /api/v1/fleet`) and what each loaded device
//! type understands (`GET /api/v1/device-types`): the console's overview and its
//! operation form, and the CLI's `drover fleet` / `drover ops add`.

use super::api::Errors;
use super::{ApiError, AppState, TenantViewer};
use crate::plugins::Kind;
use crate::plugins::device_type::{delivery_name, kind_name};
use crate::store::FleetCounts;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::Ordering;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub(super) struct Fleet {
    #[serde(flatten)]
    counts: FleetCounts,
    /// Devices holding a push connection to this server now (MQTT, CoAP registrations).
    /// The whole server's, so absent for a tenant's caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    online_now: Option<i64>,
}

/// Devices by type and status, enrolments per day, operations by state, devices online.
/// A tenant's callers (not scoped) get their tenant's counts.
#[utoipa::path(get, path = "/api/v1/fleet", tag = "devices", responses((status = 200, body = Fleet), Errors))]
pub(super) async fn fleet(
    State(state): State<AppState>,
    TenantViewer(viewer): TenantViewer,
) -> Result<Json<Fleet>, ApiError> {
    let counts = state.store.fleet_counts(viewer.tenant.as_deref()).await?;
    // This replica's connection count cannot be split by tenant: a tenant sees its
    // devices' `seen_last_15_min` instead.
    let online_now = viewer.tenant.is_none().then(|| state.stats.online.load(Ordering::Relaxed).max(0));
    Ok(Json(Fleet { counts, online_now }))
}

#[derive(Serialize, ToSchema, Clone)]
pub(super) struct OperationCode {
    code: String,
    /// command, profile or policy.
    kind: String,
    description: String,
    /// JSON Schema of the payload; absent: the code takes no payload.
    #[schema(value_type = Option<Object>)]
    payload_schema: Option<Value>,
}

#[derive(Serialize, ToSchema, Clone)]
pub(super) struct DeviceType {
    name: String,
    version: String,
    description: String,
    /// How devices of the type get their operations, preferred first.
    delivery: Vec<String>,
    /// The operation codes the type understands.
    operations: Vec<OperationCode>,
    /// Suspended types keep their devices' operations queued.
    suspended: bool,
}

#[derive(Serialize, ToSchema)]
pub(super) struct DeviceTypes {
    items: Vec<DeviceType>,
}

/// The loaded device types and their operation catalogues, as their plugins describe them;
/// for a caller of `tenant`, the shared ones and its own (`owners`: every tenant's plugin).
pub(super) fn device_types(
    state: &AppState,
    tenant: Option<&str>,
    owners: &std::collections::HashMap<String, String>,
) -> Vec<DeviceType> {
    let mut items = Vec::new();
    for name in state.registry.names() {
        if tenant.is_some() && owners.get(&name).is_some_and(|o| Some(o.as_str()) != tenant) {
            continue;
        }
        let Some(plugin) = state.registry.get(&name).filter(|p| p.kind() == Kind::DeviceType) else { continue };
        let Some(info) = plugin.device_type_info() else { continue };
        items.push(DeviceType {
            name: info.name.clone(),
            version: info.version.clone(),
            description: info.description.clone(),
            delivery: info.delivery.iter().map(|d| delivery_name(*d).to_string()).collect(),
            operations: info
                .operations
                .iter()
                .map(|o| OperationCode {
                    code: o.code.clone(),
                    kind: kind_name(o.kind).to_string(),
                    description: o.description.clone(),
                    // A schema that is not JSON is the plugin's bug; it shows as text.
                    payload_schema: o
                        .payload_schema
                        .as_deref()
                        .map(|s| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))),
                })
                .collect(),
            suspended: state.registry.suspension(&name).is_some(),
        });
    }
    items
}

/// The loaded device types and the operation codes each understands, with payload schemas.
/// Scoped callers too: it describes the server's plugins, not the fleet.
#[utoipa::path(get, path = "/api/v1/device-types", tag = "devices",
    responses((status = 200, body = DeviceTypes), Errors))]
pub(super) async fn list_device_types(
    State(state): State<AppState>,
    super::ScopedViewer(admin): super::ScopedViewer,
) -> Result<Json<DeviceTypes>, ApiError> {
    let owners = state.store.plugin_owners().await?;
    Ok(Json(DeviceTypes { items: device_types(&state, admin.tenant.as_deref(), &owners) }))
}
