//! Groups: static member lists and dynamic groups (saved queries over devices) that
//! operations, policies, rollouts, scopes and webhooks name.
//!
//! A group belongs to a tenant or to the server's operators (`tenants.rs`):
//! - A tenant's group is named `TENANT/NAME` in storage, so two tenants never collide on
//!   (or learn of) each other's names. The tenant's callers name it with or without the
//!   `TENANT/`; the operators by its whole name.
//! - A tenant's callers see and use only their tenant's groups; the operators see every
//!   group. An operators' group (every group made before tenants is one) is not a
//!   tenant's: its definition may span tenants.
//! - A tenant's group holds only its tenant's devices, whoever uses it: a static group's
//!   members are checked when added (devices never change tenant, and a removed device
//!   leaves its groups), and a dynamic group's query carries the tenant
//!   ([`GroupRow::query`]), so a tag query cannot reach another tenant's devices even when
//!   an operator's operation or policy names the group.

use crate::core::Core;
use crate::device::Status;
use crate::error::{Error, Result};
use crate::operations::DeviceName;
use crate::store::{DeviceQuery, GroupRow, NewEvent, Store};

/// Longest name a group is given (before its tenant is added).
pub const MAX_NAME: usize = 128;

/// The group a caller of `tenant` names, if it may see it: any group for an operator
/// (`None`), its own tenant's only for a tenant's caller, so another tenant's group and
/// the operators' do not exist for it.
pub async fn find(store: &Store, tenant: Option<&str>, name: &str) -> Result<Option<GroupRow>> {
    let Some(group) = store.group(&crate::tenants::qualified(tenant, name)).await? else { return Ok(None) };
    Ok((tenant.is_none() || group.tenant.as_deref() == tenant).then_some(group))
}

/// Why a dynamic group's query cannot be saved, if it cannot.
pub fn query_problem(q: &DeviceQuery) -> Option<String> {
    q.problem().or_else(|| q.tags.iter().find_map(|t| crate::store::tag_problem(t))).map(|p| format!("`query`: {p}"))
}

/// A group to create.
pub struct NewGroup<'a> {
    /// As given: 1-128 characters, not only spaces, no `/`.
    pub name: &'a str,
    pub description: &'a str,
    /// Makes the group dynamic.
    pub query: Option<&'a DeviceQuery>,
    /// The tenant asked for: an operator's choice (none: an operators' group); a tenant's
    /// caller makes its own tenant's groups.
    pub tenant: Option<&'a str>,
}

/// Create a group for a caller of `caller_tenant`, with its `group.created` event.
pub async fn create(store: &Store, caller_tenant: Option<&str>, g: NewGroup<'_>, actor: &str) -> Result<GroupRow> {
    if g.name.trim().is_empty() || g.name.chars().count() > MAX_NAME || g.name.contains('/') {
        return Err(Error::invalid(
            "invalid",
            format!("group `name` must be 1 to {MAX_NAME} characters, not only spaces, without `/`"),
        ));
    }
    if g.description.chars().count() > 1024 {
        return Err(Error::invalid("invalid", "group `description` is longer than 1024 characters"));
    }
    if let Some(p) = g.query.and_then(query_problem) {
        return Err(Error::invalid("invalid", p));
    }
    let tenant = crate::tenants::of_new_principal(store, caller_tenant, g.tenant).await?;
    let name = crate::tenants::qualified(tenant.as_deref(), g.name);
    let e = event(
        "created",
        &name,
        actor,
        tenant.as_deref(),
        serde_json::json!({ "group": name, "tenant": tenant, "dynamic": g.query.is_some() }),
    );
    Ok(store.create_group(&name, g.description, g.query, tenant.as_deref(), &e).await?)
}

/// Delete a group, with its `group.removed` event. Its devices stay, and operations
/// already added for it stay queued.
pub async fn remove(store: &Store, group: &GroupRow, actor: &str) -> Result<()> {
    let data = serde_json::json!({ "group": group.name, "tenant": group.tenant });
    let e = event("removed", &group.name, actor, group.tenant.as_deref(), data);
    Ok(store.delete_group(group.id, &e).await?)
}

/// Add the devices named to a static group for a caller of `caller_tenant`, with the
/// `group.members_added` event; returns their keys. Each must be enrolled, and in the
/// group's tenant for a tenant's group: a tenant's caller is told another tenant's device
/// is not enrolled, as for any device it cannot see.
pub async fn add_members(
    core: &Core,
    caller_tenant: Option<&str>,
    group: &GroupRow,
    devices: &[DeviceName],
    actor: &str,
) -> Result<Vec<i64>> {
    if group.query.is_some() {
        return Err(Error::conflict(
            "dynamic_group",
            format!("group `{}` is dynamic: its query defines its devices", group.name),
        ));
    }
    let mut keys = Vec::with_capacity(devices.len());
    for n in devices {
        let found = core.store.device(&n.device_type, &n.device_id).await?.filter(|d| d.status != Status::Removed);
        let visible = found.filter(|d| caller_tenant.is_none_or(|t| d.tenant == t));
        let Some(d) = visible else {
            return Err(Error::invalid(
                "unknown_device",
                format!("device {}/{} is not enrolled", n.device_type, n.device_id),
            ));
        };
        if let Some(t) = group.tenant.as_deref().filter(|t| d.tenant != *t) {
            return Err(Error::invalid(
                "other_tenant",
                format!(
                    "device {}/{} is in tenant `{}`; group `{}` holds tenant `{t}`'s devices only",
                    n.device_type, n.device_id, d.tenant, group.name
                ),
            ));
        }
        keys.push(d.id);
    }
    let e = event(
        "members_added",
        &group.name,
        actor,
        group.tenant.as_deref(),
        serde_json::json!({ "group": group.name, "tenant": group.tenant, "devices": keys.len() }),
    );
    core.store.add_members(group.id, &keys, &e).await?;
    Ok(keys)
}

/// A group's event; a tenant's group's is the tenant's too (its callers read it).
fn event(kind: &str, name: &str, actor: &str, tenant: Option<&str>, data: serde_json::Value) -> NewEvent {
    NewEvent {
        event_type: format!("group.{kind}"),
        actor: Some(actor.to_string()),
        target: Some(format!("group/{name}")),
        data: Some(data.to_string()),
        tenant: tenant.map(str::to_string),
        ..NewEvent::default()
    }
}
