//! The operations service: add an operation for devices, groups and tags, and cancel
//! operations, from any front (the admin API today; policies, rollouts and the console
//! next). An added operation is validated by each target type's plugin and stored
//! (activity and one operation per device, in one transaction) before anything is
//! delivered; delivery fronts hear `ActivityAdded` and take it from there.
//!
//! The state machine each operation then follows is `ops.rs`.

use crate::core::Core;
use crate::device::Status;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::ops::Kind;
use crate::store::{ActivityRow, MAX_EXPLICIT_DEVICES, NewActivity, TargetSet};

/// A device named by type and id, as admins address devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceName {
    pub device_type: String,
    pub device_id: String,
}

/// Who an operation is for: any mix of devices, groups (static or dynamic) and tags
/// (union).
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub devices: Vec<DeviceName>,
    pub groups: Vec<String>,
    pub tags: Vec<String>,
}

/// An operation to add.
#[derive(Debug, Clone)]
pub struct NewOperation {
    /// An operation code of the target devices' plugin (e.g. `DEVICE_RING`).
    pub code: String,
    /// JSON text; each target type's plugin validates it.
    pub payload: Option<String>,
    /// Checked against the plugin's catalogue when given.
    pub kind: Option<Kind>,
    pub targets: Targets,
    /// Seconds until the operation expires if not finished.
    pub ttl_secs: Option<i64>,
    /// Re-deliveries after a failed attempt.
    pub retries: i64,
    /// A scoped caller's reach (`scope.rs`): a target outside it refuses the operation.
    pub within: Option<crate::scope::Reach>,
}

/// Re-deliveries an operation may ask for at most.
pub const MAX_RETRIES: i64 = 100;

/// Add an operation for its targets on behalf of `actor`; returns the activity and how
/// many operations were stored (one per targeted device).
pub async fn add(core: &Core, op: NewOperation, actor: &str) -> Result<(ActivityRow, u64)> {
    let t = &op.targets;
    if t.devices.is_empty() && t.groups.is_empty() && t.tags.is_empty() {
        return Err(Error::invalid("invalid", "`targets` names no devices, groups or tags"));
    }
    if let Some(ttl) = op.ttl_secs.filter(|t| *t <= 0) {
        return Err(Error::invalid("invalid", format!("`ttl_secs` is {ttl}: it must be positive")));
    }
    if !(0..=MAX_RETRIES).contains(&op.retries) {
        return Err(Error::invalid("invalid", format!("`retries` is {}: use 0 to {MAX_RETRIES}", op.retries)));
    }
    let tenant = op.within.as_ref().and_then(|r| r.tenant_of());
    let mut targets = target_set(core, t, tenant).await?;
    if let Some(reach) = op.within {
        // Refused, not narrowed: an operator who meant the whole group should hear that
        // part of it is not theirs. The insert is narrowed too, for a device that joins a
        // target group between this count and the write. Another tenant's devices are
        // neither counted nor reached: for a tenant's caller they do not exist.
        let outside = core.store.targets_outside(&targets, &reach).await?;
        if outside > 0 {
            return Err(Error::forbidden(format!(
                "{outside} of the targeted devices are outside your scope: target only devices you can reach"
            )));
        }
        targets.within = Some(reach);
    }
    let types = core.store.target_types(&targets).await?;
    if types.is_empty() {
        return Err(Error::invalid("no_targets", "the targets match no enrolled device"));
    }

    // Validate once per device type among the targets. An activity has one kind (it
    // decides superseding and what each plugin is told it encodes), so the types'
    // catalogues must agree on the code's kind.
    let mut kind: Option<(Kind, &str)> = None;
    for ty in &types {
        let plugin = core
            .registry
            .device_type(ty)
            .ok_or_else(|| Error::unavailable("no_plugin", format!("no plugin is loaded for device type `{ty}`")))?;
        plugin.validate(&op.code, op.payload.as_deref()).await.map_err(|e| Error::from(e).context(ty))?;
        let catalogue = plugin
            .device_type_info()
            .and_then(|i| i.operations.iter().find(|o| o.code == op.code))
            .map(|o| Kind::from(o.kind));
        if let (Some(k), Some(want)) = (catalogue, op.kind)
            && k != want
        {
            return Err(Error::invalid("invalid", format!("{ty}: `{}` is a {k} operation, not a {want}", op.code)));
        }
        match (kind, catalogue) {
            (Some((first, first_type)), Some(k)) if first != k => {
                return Err(Error::invalid(
                    "kind_conflict",
                    format!(
                        "`{}` is a {first} operation for {first_type} and a {k} operation for {ty}: add it to \
                         each device type's devices separately",
                        op.code
                    ),
                ));
            }
            (None, Some(k)) => kind = Some((k, ty.as_str())),
            _ => {}
        }
    }
    let kind = kind.map(|(k, _)| k).or(op.kind).unwrap_or(Kind::Command);
    let code = op.code.clone();
    let (activity, operations) = core
        .store
        .add_activity(
            &NewActivity {
                code: op.code,
                kind,
                payload: op.payload,
                created_by: actor.to_string(),
                expires_at: op.ttl_secs.map(|s| crate::store::now_ms() + s * 1000),
                max_attempts: op.retries + 1,
            },
            &targets,
        )
        .await?;
    core.events.publish(Event::ActivityAdded { activity: activity.id, code, operations, actor: actor.to_string() });
    Ok((activity, operations))
}

/// The targets as the store selects them: the devices named (each enrolled), groups by
/// name (a dynamic group as its query) and tags. Refuses an empty list, and more
/// explicit devices than [`MAX_EXPLICIT_DEVICES`] (a group holds more). A caller of
/// `tenant` names its tenant's groups only (`groups::find`).
pub async fn target_set(core: &Core, t: &Targets, tenant: Option<&str>) -> Result<TargetSet> {
    if t.devices.is_empty() && t.groups.is_empty() && t.tags.is_empty() {
        return Err(Error::invalid("invalid", "`targets` names no devices, groups or tags"));
    }
    if t.devices.len() > MAX_EXPLICIT_DEVICES {
        return Err(Error::invalid(
            "too_many_devices",
            format!("{} devices listed; list at most {MAX_EXPLICIT_DEVICES} or target a group", t.devices.len()),
        ));
    }
    let mut targets =
        TargetSet { devices: resolve(core, &t.devices).await?, tags: t.tags.clone(), ..Default::default() };
    for g in &t.groups {
        let group = crate::groups::find(&core.store, tenant, g)
            .await?
            .ok_or_else(|| Error::invalid("unknown_group", format!("group `{g}` does not exist")))?;
        match group.query() {
            Some(q) => targets.queries.push(q),
            None => targets.groups.push(group.id),
        }
    }
    Ok(targets)
}

/// Add the groups named to `targets` (a dynamic group as its query); an unknown group
/// selects nothing (for saved specs whose groups may since have been deleted). What a
/// tenant saved names its tenant's groups (`groups::find`).
pub async fn add_groups(core: &Core, targets: &mut TargetSet, groups: &[String], tenant: Option<&str>) -> Result<()> {
    for g in groups {
        if let Some(group) = crate::groups::find(&core.store, tenant, g).await? {
            match group.query() {
                Some(q) => targets.queries.push(q),
                None => targets.groups.push(group.id),
            }
        }
    }
    Ok(())
}

/// The devices named, each of which must be enrolled (not removed).
pub async fn resolve(core: &Core, names: &[DeviceName]) -> Result<Vec<i64>> {
    let mut keys = Vec::with_capacity(names.len());
    for n in names {
        match core.store.device(&n.device_type, &n.device_id).await? {
            Some(d) if d.status != Status::Removed => keys.push(d.id),
            _ => {
                return Err(Error::invalid(
                    "unknown_device",
                    format!("device {}/{} is not enrolled", n.device_type, n.device_id),
                ));
            }
        }
    }
    Ok(keys)
}

/// Cancel one unfinished operation; `finished` (a conflict) when it has already ended.
pub async fn cancel_operation(core: &Core, id: i64, actor: &str) -> Result<u64> {
    let op = core.store.operation(id).await?.ok_or_else(|| Error::not_found(format!("operation {id} not found")))?;
    let n = core.store.cancel(Some(id), None, None, actor).await?;
    if n == 0 {
        return Err(Error::conflict("finished", format!("operation {id} is already {}", op.state)));
    }
    core.events.publish(Event::OperationsCancelled {
        operation: Some(id),
        activity: None,
        device: Some(op.device),
        count: n,
        actor: actor.to_string(),
    });
    Ok(n)
}

/// Cancel every unfinished operation of an activity; returns how many.
pub async fn cancel_activity(core: &Core, id: i64, actor: &str) -> Result<u64> {
    core.store.activity(id).await?.ok_or_else(|| Error::not_found(format!("activity {id} not found")))?;
    let n = core.store.cancel(None, Some(id), None, actor).await?;
    if n > 0 {
        core.events.publish(Event::OperationsCancelled {
            operation: None,
            activity: Some(id),
            device: None,
            count: n,
            actor: actor.to_string(),
        });
    }
    Ok(n)
}
