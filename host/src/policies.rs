//! Policies: what each device should be configured with, decided by the server and kept
//! true as devices and policies change (docs/policies.md).
//!
//! A policy holds profile features per device type, says which devices it applies to and
//! how much it counts (priority). A device's *effective policy* is the applicable
//! policies' features for its type: the highest priority's alone (`priority` mode), or
//! every applicable policy's features with the higher priority winning per feature code
//! (`merged` mode). It reaches the device as one POLICY_BUNDLE operation through the
//! operation engine; when it changes, a new bundle supersedes the old one. What a device
//! was given is recorded by the digest of its features, so a recomputation that changes
//! nothing sends nothing.

use crate::core::Core;
use crate::device::Ownership;
use crate::error::{Error, Result};
use crate::ops::Kind;
use crate::store::{Applies, Assignment, DeviceQuery, NewEvent, PolicyRow, TargetSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use utoipa::ToSchema;

/// The operation code a policy reaches a device with.
pub const BUNDLE: &str = "POLICY_BUNDLE";
/// The digest of an effective policy with rules and no features (nothing is sent).
const RULES_ONLY: &str = "rules-only";

/// Who policy bundles are added by, in transitions and events.
pub const ACTOR: &str = "policy";

/// Features per device type, and rules, a policy may hold: each is a plugin call when it
/// is saved (and a rule one per device evaluated).
const MAX_FEATURES: usize = 64;
const MAX_RULES: usize = 16;

/// Devices read and assigned per batch when recomputing: one transaction per distinct
/// bundle in a batch. (Bind parameters: a batch's keys are bound in its statements.)
const BATCH: i64 = 5000;

/// One profile feature: an operation code of the device type's catalogue whose kind is
/// `profile`, and its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// Which devices a policy applies to. Every condition given must hold; `groups` and
/// `tags` together are one condition (a member of any listed group, or carrying any
/// listed tag). Nothing given: every device of the policy's types.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Applicability {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<Ownership>,
    /// Device owners (user names), any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    /// Static or dynamic groups, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = crate::store::tag_list_schema)]
    pub tags: Vec<String>,
    /// Values the device reported about itself, each compared as text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// What happens when a device does not comply, mildest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Record it.
    #[default]
    Monitor,
    /// Record it and raise an event.
    Warn,
    /// Send the non-compliant features again.
    Enforce,
    /// Hold every other operation until the device complies.
    Block,
}

/// A policy revision's content: everything an edit can change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
    /// Profile features per device type: `{"android": [{"code": "CAMERA", "payload": {…}}]}`.
    pub profiles: BTreeMap<String, Vec<Feature>>,
    #[serde(default)]
    pub applies_to: Applicability,
    /// Higher counts more; equal priorities are ordered by name.
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub action: Action,
    /// Compliance rules: policy-rule plugins with their parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub rules: Vec<Rule>,
}

/// One compliance rule of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The policy-rule plugin's name, e.g. `version-range`.
    pub rule: String,
    /// Its parameters, checked by the plugin when the policy is saved.
    #[serde(default)]
    pub params: serde_json::Value,
}

/// How a device's applicable policies combine (`--policy-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The highest-priority applicable policy alone.
    #[default]
    Priority,
    /// Every applicable policy's features; per feature code, the higher priority wins.
    Merged,
}

/// A policy as the engine uses it.
struct Live {
    name: String,
    revision: i64,
    spec: Spec,
    /// A tenant's policy applies to its devices only.
    tenant: Option<String>,
}

/// Refuse a spec that cannot work: unknown device types or groups, a type that takes no
/// policy bundle, features its plugin refuses (its message, naming the feature), a bundle
/// its plugin refuses.
/// A tenant's policy names its tenant's groups (`groups::find`).
pub async fn check(core: &Core, spec: &Spec, tenant: Option<&str>) -> Result<()> {
    if spec.profiles.is_empty() {
        return Err(Error::invalid("invalid", "`profiles` is empty: give the features of at least one device type"));
    }
    for (ty, features) in &spec.profiles {
        let plugin = core.registry.device_type(ty).ok_or_else(|| {
            Error::invalid("unknown_device_type", format!("profiles: no device type `{ty}` is loaded"))
        })?;
        let info = plugin.device_type_info();
        let catalogue = info.as_ref().map(|i| i.operations.as_slice()).unwrap_or_default();
        if features.is_empty() {
            // Rules only: the type is targeted, nothing is sent.
            if spec.rules.is_empty() {
                return Err(Error::invalid(
                    "invalid",
                    format!("profiles.{ty}: no features, and the policy has no rules: it would do nothing"),
                ));
            }
            continue;
        }
        if !catalogue.iter().any(|o| o.code == BUNDLE) {
            return Err(Error::invalid(
                "no_policy_bundle",
                format!(
                    "profiles.{ty}: device type `{ty}` declares no {BUNDLE}: it takes no features (a policy with rules \
                     may still target it with `\"{ty}\": []`)"
                ),
            ));
        }
        if features.len() > MAX_FEATURES {
            return Err(Error::invalid("invalid", format!("profiles.{ty}: at most {MAX_FEATURES} features")));
        }
        let mut seen = std::collections::HashSet::new();
        for f in features {
            if !seen.insert(f.code.as_str()) {
                return Err(Error::invalid("invalid", format!("profiles.{ty}: feature `{}` is listed twice", f.code)));
            }
            let payload = f.payload.as_ref().map(|p| p.to_string());
            plugin
                .validate(&f.code, payload.as_deref())
                .await
                .map_err(|e| Error::from(e).context(format!("profiles.{ty}.{}", f.code)))?;
            match catalogue.iter().find(|o| o.code == f.code).map(|o| Kind::from(o.kind)) {
                Some(Kind::Profile) => {}
                Some(k) => {
                    return Err(Error::invalid(
                        "invalid",
                        format!("profiles.{ty}.{}: a {k} operation, not a profile feature", f.code),
                    ));
                }
                None => {
                    return Err(Error::invalid(
                        "invalid",
                        format!("profiles.{ty}.{}: not in the device type's catalogue", f.code),
                    ));
                }
            }
        }
        let bundle = bundle_payload(features.iter());
        plugin.validate(BUNDLE, Some(&bundle)).await.map_err(|e| Error::from(e).context(format!("profiles.{ty}")))?;
    }
    if spec.rules.len() > MAX_RULES {
        return Err(Error::invalid("invalid", format!("`rules`: at most {MAX_RULES}")));
    }
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("rules[{i}] ({})", r.rule);
        let plugin = core
            .registry
            .get(&r.rule)
            .ok_or_else(|| Error::invalid("unknown_rule", format!("{at}: no plugin `{}` is loaded", r.rule)))?;
        if plugin.rule_info().is_none() {
            return Err(Error::invalid("unknown_rule", format!("{at}: plugin `{}` is not a policy rule", r.rule)));
        }
        plugin.check_params(&r.params.to_string()).await.map_err(|e| Error::from(e).context(&at))?;
    }
    let a = &spec.applies_to;
    for g in &a.groups {
        if crate::groups::find(&core.store, tenant, g).await?.is_none() {
            return Err(Error::invalid("unknown_group", format!("applies_to.groups: group `{g}` does not exist")));
        }
    }
    if let Some(problem) = a.tags.iter().find_map(|t| crate::store::tag_problem(t)) {
        return Err(Error::invalid("invalid", format!("applies_to.tags: {problem}")));
    }
    // Metadata keys become JSON paths in SQL parameters, as a dynamic group's do.
    if !a.metadata.is_empty()
        && let Some(problem) = (DeviceQuery { metadata: a.metadata.clone(), ..Default::default() }).problem()
    {
        return Err(Error::invalid("invalid", format!("applies_to.metadata: {problem}")));
    }
    if spec.description.chars().count() > 1024 {
        return Err(Error::invalid("invalid", "`description`: at most 1024 characters"));
    }
    Ok(())
}

/// The POLICY_BUNDLE payload of a list of features.
fn bundle_payload<'a>(features: impl Iterator<Item = &'a Feature>) -> String {
    serde_json::Value::from(features.map(|f| serde_json::to_value(f).unwrap_or_default()).collect::<Vec<_>>())
        .to_string()
}

fn event(event_type: &str, target: String, data: serde_json::Value, actor: &str, device: Option<i64>) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        actor: Some(actor.into()),
        target: Some(target),
        data: Some(data.to_string()),
        device,
        ..Default::default()
    }
}

/// The `policy.changed` event of `change` to policy `name`; a tenant's policy's is the
/// tenant's too (its callers read it).
pub fn changed(name: &str, change: &str, revision: Option<i64>, actor: &str, tenant: Option<&str>) -> NewEvent {
    NewEvent {
        tenant: tenant.map(str::to_string),
        ..event(
            "policy.changed",
            format!("policy/{name}"),
            serde_json::json!({ "policy": name, "change": change, "revision": revision }),
            actor,
            None,
        )
    }
}

fn parse(row: &PolicyRow) -> Result<Live> {
    let spec: Spec = serde_json::from_str(&row.spec)
        .map_err(|e| Error::internal(format!("policy `{}` revision {}: {e}", row.name, row.revision)))?;
    Ok(Live { name: row.name.clone(), revision: row.revision, spec, tenant: row.tenant.clone() })
}

/// Devices to give one bundle, by `(device type, digest, the policies that make it)`:
/// the bundle's payload (`None`: no policy applies) and each device with its event.
type Changes = BTreeMap<(String, String, String), (Option<String>, Vec<(i64, NewEvent)>)>;

/// Which devices recomputation looks at.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every live device of these types.
    DeviceTypes(Vec<String>),
    /// These devices.
    Devices(Vec<i64>),
}

/// What a recomputation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Recomputed {
    /// Devices looked at.
    pub devices: u64,
    /// Devices sent a new bundle.
    pub assigned: u64,
    /// Devices no policy applies to any more.
    pub cleared: u64,
}

/// Bring the devices of `scope` to their effective policy: compute it, and send a new
/// bundle to each device whose features changed. One replica at a time per process: the
/// caller's recomputations are serialised by the core's lock.
pub async fn recompute(core: &Core, scope: Scope) -> Result<Recomputed> {
    let _one = core.policy_lock.lock().await;
    let store = &core.store;
    let policies: Vec<Live> = store.policies(true).await?.iter().map(parse).collect::<Result<_>>()?;
    // No active policy: a device given no policy has nothing to change (a whole type is
    // still looked at: the last policy's deletion clears its devices' records).
    if policies.is_empty() && matches!(scope, Scope::Devices(_)) {
        return Ok(Recomputed::default());
    }
    let types: Vec<String> = match &scope {
        Scope::DeviceTypes(t) => t.clone(),
        Scope::Devices(_) => Vec::new(),
    };
    let only = match &scope {
        Scope::Devices(d) => Some(d.as_slice()),
        Scope::DeviceTypes(_) => None,
    };
    // Which devices each policy applies to: for a whole device type, one query per policy
    // over every device (a set of keys, read once); for a few devices, per page, below.
    let mut everywhere: Option<HashMap<i64, Vec<usize>>> = None;
    if only.is_none() {
        let mut map: HashMap<i64, Vec<usize>> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            if !p.spec.profiles.keys().any(|t| types.contains(t)) {
                continue;
            }
            for d in store.applicable_devices(&applies(core, p).await?, None).await? {
                map.entry(d).or_default().push(i);
            }
        }
        everywhere = Some(map);
    }
    let mut done = Recomputed::default();
    let mut after = 0;
    loop {
        let page = match only {
            Some(only) => {
                if after > 0 {
                    break;
                }
                let mut all = Vec::new();
                for chunk in only.chunks(BATCH as usize) {
                    all.extend(store.policy_targets(&types, Some(chunk), 0, BATCH).await?);
                }
                all
            }
            None => store.policy_targets(&types, None, after, BATCH).await?,
        };
        let Some(last) = page.last() else { break };
        after = last.device.max(1);
        done.devices += page.len() as u64;
        let mut here: HashMap<i64, Vec<usize>> = HashMap::new();
        if everywhere.is_none() {
            let keys: Vec<i64> = page.iter().map(|t| t.device).collect();
            for (i, p) in policies.iter().enumerate() {
                for d in store.applicable_devices(&applies(core, p).await?, Some(&keys)).await? {
                    here.entry(d).or_default().push(i);
                }
            }
        }
        let applicable = everywhere.as_ref().unwrap_or(&here);
        // Devices grouped by the bundle they should now have.
        let mut changes = Changes::new();
        let mut relabel: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for t in &page {
            let mine = applicable.get(&t.device).map(Vec::as_slice).unwrap_or_default();
            let chosen: Vec<&Live> =
                mine.iter().map(|i| &policies[*i]).filter(|p| p.spec.profiles.contains_key(&t.device_type)).collect();
            let features = effective(&chosen, &t.device_type, core.policy_mode);
            let names = serde_json::Value::from(
                chosen_for(&chosen, core.policy_mode)
                    .iter()
                    .map(|p| serde_json::json!({ "name": p.name, "revision": p.revision }))
                    .collect::<Vec<_>>(),
            )
            .to_string();
            let (digest, payload) = if features.is_empty() && chosen.is_empty() {
                (String::new(), None)
            } else if features.is_empty() {
                // Policies with rules only: evaluated, nothing to send.
                (RULES_ONLY.to_string(), None)
            } else {
                let payload = bundle_payload(features.iter());
                (hex::encode(Sha256::digest(payload.as_bytes())), Some(payload))
            };
            if t.digest.as_deref().unwrap_or_default() == digest {
                if !digest.is_empty() && t.policies.as_deref() != Some(names.as_str()) {
                    relabel.entry(names).or_default().push(t.device);
                }
                continue;
            }
            let e = event(
                "device.policy_changed",
                format!("device/{}/{}", t.device_type, t.device_id),
                serde_json::json!({ "device": t.device, "type": t.device_type, "id": t.device_id, "policies": serde_json::from_str::<serde_json::Value>(&names).unwrap_or_default(), "digest": digest }),
                ACTOR,
                Some(t.device),
            );
            changes
                .entry((t.device_type.clone(), digest, names))
                .or_insert_with(|| (payload, Vec::new()))
                .1
                .push((t.device, e));
        }
        for (names, devices) in &relabel {
            store.relabel_policy(devices, names).await?;
        }
        for ((device_type, digest, names), (payload, devices)) in &changes {
            let activity = store
                .assign_policy(&Assignment {
                    device_type,
                    digest,
                    payload: payload.as_deref(),
                    policies: names,
                    devices,
                    actor: ACTOR,
                })
                .await?;
            match activity {
                None if !digest.is_empty() => done.assigned += devices.len() as u64,
                Some(activity) => {
                    done.assigned += devices.len() as u64;
                    core.events.publish(crate::events::Event::ActivityAdded {
                        activity,
                        code: BUNDLE.into(),
                        operations: devices.len() as u64,
                        actor: ACTOR.into(),
                    });
                }
                None => done.cleared += devices.len() as u64,
            }
        }
        if page.len() < BATCH as usize || only.is_some() {
            break;
        }
    }
    if done.assigned + done.cleared > 0 {
        tracing::info!(
            devices = done.devices,
            assigned = done.assigned,
            cleared = done.cleared,
            "effective policies recomputed"
        );
    }
    Ok(done)
}

/// The store's form of a policy's applicability (group names resolved; an unknown group
/// selects nothing). A tenant's policy selects its tenant's devices only, whatever it
/// says (no `applies_to` means every device of its types *in the tenant*), and names its
/// tenant's groups.
async fn applies(core: &Core, p: &Live) -> Result<Applies> {
    let (spec, tenant) = (&p.spec, p.tenant.as_deref());
    let a = &spec.applies_to;
    let scope = if a.groups.is_empty() && a.tags.is_empty() {
        None
    } else {
        let mut t = TargetSet { tags: a.tags.clone(), ..Default::default() };
        crate::operations::add_groups(core, &mut t, &a.groups, tenant).await?;
        Some(t)
    };
    Ok(Applies {
        device_types: spec.profiles.keys().cloned().collect(),
        owners: a.owners.clone(),
        query: DeviceQuery {
            ownership: a.ownership,
            metadata: a.metadata.clone(),
            tenant: p.tenant.clone(),
            ..Default::default()
        },
        scope,
    })
}

/// The policies in `chosen` (highest priority first, as the store lists them) that give
/// a device its features.
fn chosen_for<'a>(chosen: &[&'a Live], mode: Mode) -> Vec<&'a Live> {
    match mode {
        Mode::Priority => chosen.iter().take(1).copied().collect(),
        Mode::Merged => chosen.to_vec(),
    }
}

/// The effective features for a device of `device_type` from its applicable policies,
/// highest priority first.
fn effective(chosen: &[&Live], device_type: &str, mode: Mode) -> Vec<Feature> {
    match mode {
        Mode::Priority => chosen.first().and_then(|p| p.spec.profiles.get(device_type)).cloned().unwrap_or_default(),
        Mode::Merged => {
            let mut features: Vec<Feature> = Vec::new();
            for p in chosen {
                for f in p.spec.profiles.get(device_type).into_iter().flatten() {
                    if !features.iter().any(|have| have.code == f.code) {
                        features.push(f.clone());
                    }
                }
            }
            features
        }
    }
}

/// Follow the events that change which policies apply to a device (enrollment) and keep
/// its effective policy; and every few minutes recompute everything, for what no event
/// tells (metadata that a dynamic group or a policy reads).
pub async fn follow(core: Core, mut events: tokio::sync::broadcast::Receiver<crate::events::Event>) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.tick().await;
    loop {
        let (scope, lagged) = tokio::select! {
            e = crate::events::next(&mut events, "policies") => match e {
                Some(e) => match to_recompute(&e) {
                    Some(device) => {
                        let mut devices = vec![device];
                        let lagged = drain(&mut events, &mut devices);
                        (Scope::Devices(devices), lagged)
                    }
                    None => continue,
                },
                None => return,
            },
            _ = sweep.tick() => {
                if let Err(e) = recompute_all(&core).await {
                    tracing::warn!(error = %e, "recomputing effective policies failed");
                }
                continue;
            }
        };
        if let Err(e) = recompute(&core, scope).await {
            tracing::warn!(error = %e, "recomputing effective policies failed");
        }
        // Events were lost: whatever they said, every device is looked at again.
        if lagged && let Err(e) = recompute_all(&core).await {
            tracing::warn!(error = %e, "recomputing effective policies failed");
        }
    }
}

/// The device an event asks to recompute: enrolled, or restored after removal (given
/// its effective policy afresh).
fn to_recompute(e: &crate::events::Event) -> Option<i64> {
    match e {
        crate::events::Event::DeviceEnrolled { device, .. } => Some(*device),
        crate::events::Event::DeviceStatusChanged { device, status: crate::device::Status::Registered, .. } => {
            Some(*device)
        }
        _ => None,
    }
}

/// Add the devices of events already waiting, so that a burst of enrollments is one
/// recomputation rather than one per device (which fell behind the burst). Whether the
/// listener lagged (events were lost).
fn drain(events: &mut tokio::sync::broadcast::Receiver<crate::events::Event>, devices: &mut Vec<i64>) -> bool {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut lagged = false;
    while devices.len() < BATCH as usize {
        match events.try_recv() {
            Ok(e) => devices.extend(to_recompute(&e)),
            Err(TryRecvError::Lagged(n)) => {
                tracing::warn!(listener = "policies", missed = n, "event listener fell behind: recomputing everything");
                lagged = true;
            }
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    lagged
}

/// Recompute every device of a type some active policy targets (after a change that any
/// policy may read: a group deleted, a group's members).
pub async fn recompute_all(core: &Core) -> Result<Recomputed> {
    let rows = core.store.policies(true).await?;
    if rows.is_empty() {
        return Ok(Recomputed::default());
    }
    let specs: Vec<Spec> = rows.iter().map(parse).collect::<Result<Vec<_>>>()?.into_iter().map(|l| l.spec).collect();
    recompute(core, Scope::DeviceTypes(types_of(&specs.iter().collect::<Vec<_>>()))).await
}

/// How often every device's effective policy is recomputed.
const SWEEP: std::time::Duration = std::time::Duration::from_secs(300);

/// Device types of `spec`, for recomputing after a change to a policy.
pub fn types_of(specs: &[&Spec]) -> Vec<String> {
    let mut t: Vec<String> = specs.iter().flat_map(|s| s.profiles.keys().cloned()).collect();
    t.sort();
    t.dedup();
    t
}

/// How many devices one compliance turn evaluates at most.
const COMPLIANCE_BATCH: i64 = 200;

/// A verdict older than this is due again whatever happened (rules may read the time;
/// a report may have raced an evaluation).
const REEVALUATE: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a refused bundle waits before `enforce` sends it again.
const RETRY_REFUSED_MS: i64 = 3_600_000;

/// How often compliance looks for devices to evaluate.
const COMPLIANCE_TICK: std::time::Duration = std::time::Duration::from_secs(2);

/// Evaluate compliance until the server stops: every device with an effective policy,
/// when it is new or has called in since its last verdict. Off the poll path: a verdict
/// comes a few seconds after the report it reads, and a slow or faulty rule plugin delays
/// nothing but this loop.
pub async fn evaluate_compliance(core: Core) {
    let mut tick = tokio::time::interval(COMPLIANCE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asked = std::time::Instant::now();
    loop {
        tick.tick().await;
        if let Some(every) = core.policy_monitor
            && asked.elapsed() >= every.min(MONITOR_ROUND)
        {
            asked = std::time::Instant::now();
            if let Err(e) = ask_for_compliance(&core, every).await {
                tracing::warn!(error = %e, "queueing compliance queries failed");
            }
        }
        loop {
            match compliance_turn(&core).await {
                Ok(n) if n as i64 == COMPLIANCE_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "evaluating compliance failed");
                    break;
                }
            }
        }
    }
}

/// The operation a device type may declare (kind `policy`, no payload) to report each
/// feature's compliance with what it applied (the Android agent's POLICY_MONITOR).
pub const MONITOR: &str = "POLICY_MONITOR";

/// How often, at most, devices due for a compliance query are looked for.
const MONITOR_ROUND: std::time::Duration = std::time::Duration::from_secs(60);

/// How many devices of a type one round asks at most.
const MONITOR_BATCH: i64 = 1000;

/// Queue a compliance query (`POLICY_MONITOR`) for every device whose type declares one
/// and that applied its bundle and was not asked within `every`. Like WSO2's monitoring
/// task: the answer comes with the device's next call, and the compliance loop reads it.
async fn ask_for_compliance(core: &Core, every: std::time::Duration) -> Result<u64> {
    let now = crate::store::now_ms();
    let before = now - every.as_millis() as i64;
    let mut asked = 0;
    for name in core.registry.names() {
        let Some(plugin) = core.registry.device_type(&name) else { continue };
        let declares = plugin.device_type_info().is_some_and(|i| {
            i.operations
                .iter()
                .any(|o| o.code == MONITOR && Kind::from(o.kind) == Kind::Policy && o.payload_schema.is_none())
        });
        if !declares {
            continue;
        }
        let devices = core.store.monitor_due(&name, before, MONITOR_BATCH).await?;
        if devices.is_empty() {
            continue;
        }
        let targets = TargetSet { devices, ..Default::default() };
        let (activity, operations) = core
            .store
            .add_activity(
                &crate::store::NewActivity {
                    code: MONITOR.into(),
                    kind: Kind::Policy,
                    payload: None,
                    created_by: ACTOR.into(),
                    // No expiry: a device away for long gets the one open query when it
                    // is back (one open at a time, so they do not pile up).
                    expires_at: None,
                    max_attempts: 1,
                },
                &targets,
            )
            .await?;
        core.events.publish(crate::events::Event::ActivityAdded {
            activity: activity.id,
            code: MONITOR.into(),
            operations,
            actor: ACTOR.into(),
        });
        asked += operations;
    }
    Ok(asked)
}

/// One rule's result, or one feature's state as the device reported it, for one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Check {
    pub policy: String,
    /// The rule's plugin (a rule's check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The feature code (what the device reported about a feature of its bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// `null`: not known. For a rule: it could not be evaluated; for a feature: the
    /// device has not answered yet. `reason` says which.
    pub compliant: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when this check has had this result (ms since the epoch).
    #[serde(default)]
    pub since: i64,
}

impl Check {
    fn rule(policy: &str, rule: &str, compliant: Option<bool>, reason: Option<String>) -> Check {
        Check { policy: policy.into(), rule: Some(rule.into()), feature: None, compliant, reason, since: 0 }
    }

    /// The same check in another verdict: same policy and rule or feature.
    fn same(&self, other: &Check) -> bool {
        self.policy == other.policy && self.rule == other.rule && self.feature == other.feature
    }
}

/// One feature's state in the standard per-feature record a device-type plugin returns
/// as the response of a `policy`-kind operation: `{"compliance": [{"feature": "CAMERA",
/// "compliant": false, "reason": "…"}]}` (docs/plugin-contract.md).
#[derive(Debug, Deserialize)]
struct Reported {
    feature: String,
    compliant: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// The per-feature records in a response, if it carries them.
fn reported(response: Option<&str>) -> Vec<Reported> {
    #[derive(Deserialize)]
    struct Record {
        compliance: Vec<Reported>,
    }
    response.and_then(|r| serde_json::from_str::<Record>(r).ok()).map(|r| r.compliance).unwrap_or_default()
}

/// What the device said about each feature of its bundle: the bundle's result (applied,
/// or refused with the device's error) refined by per-feature records in it and in the
/// newest later policy report. Also whether a feature still waits for the device.
fn feature_checks(d: &crate::store::DueDevice, policies: &[&Live]) -> (Vec<Check>, bool) {
    let Some(state) = d.bundle_state.as_deref() else { return (Vec::new(), false) };
    // Each feature from the policy that gives it (highest priority first).
    let mut features: Vec<(&str, &str)> = Vec::new();
    for p in policies {
        for f in p.spec.profiles.get(&d.device_type).into_iter().flatten() {
            if !features.iter().any(|(code, _)| *code == f.code) {
                features.push((&f.code, &p.name));
            }
        }
    }
    let short = |s: &str| s.chars().take(500).collect::<String>();
    let (base, why): (Option<bool>, Option<String>) = match state {
        "COMPLETED" => (Some(true), None),
        "ERROR" => (
            Some(false),
            Some(match d.bundle_response.as_deref() {
                Some(r) => format!("the device refused the bundle: {}", short(r)),
                None => "the device refused the bundle".into(),
            }),
        ),
        other => (None, Some(format!("waiting for the device: the bundle is {other}"))),
    };
    let answered = matches!(state, "COMPLETED" | "ERROR");
    let mut said: HashMap<String, Reported> = HashMap::new();
    if answered {
        for r in reported(d.bundle_response.as_deref()).into_iter().chain(reported(d.report.as_deref())) {
            said.insert(r.feature.clone(), r);
        }
    }
    let mut waiting = false;
    let checks = features
        .into_iter()
        .map(|(code, policy)| {
            let (compliant, reason) = match said.remove(code) {
                Some(r) => (Some(r.compliant), r.reason.map(|s| short(&s))),
                None => (base, why.clone()),
            };
            waiting |= compliant.is_none();
            Check { policy: policy.into(), rule: None, feature: Some(code.into()), compliant, reason, since: 0 }
        })
        .collect();
    (checks, waiting)
}

/// Evaluate one batch of due devices; how many.
async fn compliance_turn(core: &Core) -> Result<usize> {
    let now = crate::store::now_ms();
    let stale = now - REEVALUATE.as_millis() as i64;
    let due = core.store.compliance_due(COMPLIANCE_BATCH, stale).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let policies: HashMap<String, Live> = core
        .store
        .policies(true)
        .await?
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    let mut verdicts = Vec::with_capacity(due.len());
    for d in &due {
        let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&d.policies)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        let mine: Vec<&Live> = names.iter().filter_map(|n| policies.get(n)).collect();
        let mut checks = checks(core, d, &mine).await?;
        let unknown = checks.iter().any(|c| c.compliant.is_none());
        let (features, waiting) = feature_checks(d, &mine);
        checks.extend(features);
        let state = if checks.iter().any(|c| c.compliant == Some(false)) {
            "non_compliant"
        } else if unknown {
            "unknown"
        } else if waiting {
            "pending"
        } else {
            "compliant"
        };
        // Each check keeps the time it got its result.
        let previous: Vec<Check> = d.previous.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default();
        for c in &mut checks {
            c.since = previous
                .iter()
                .find(|p| p.same(c) && p.compliant == c.compliant)
                .map(|p| p.since)
                .filter(|s| *s > 0)
                .unwrap_or(now);
        }
        // The strictest action among the policies with a failing rule.
        let action = checks
            .iter()
            .filter(|c| c.compliant == Some(false))
            .filter_map(|c| policies.get(&c.policy).map(|p| p.spec.action))
            .max()
            .unwrap_or_default();
        let blocked = match state {
            "non_compliant" => action == Action::Block,
            "compliant" => false,
            // Unknown and pending keep what was decided before: a rule plugin that
            // faults neither blocks a device nor frees it, and a blocked device is
            // released once it has applied its bundle and the rules hold.
            _ => d.blocked.unwrap_or(0) != 0,
        };
        // Changes are told (an event) when a policy asks for more than monitoring; every
        // change is in the device's history either way.
        let tell = mine.iter().map(|p| p.spec.action).max() >= Some(Action::Warn);
        verdicts.push((d, state, checks, action, blocked, tell));
    }
    let texts: Vec<String> =
        verdicts.iter().map(|(_, _, c, ..)| serde_json::to_string(c).unwrap_or_default()).collect();
    let changed: Vec<bool> = verdicts.iter().map(|(d, state, ..)| d.state.as_deref() != Some(*state)).collect();
    let events: Vec<Option<NewEvent>> = verdicts
        .iter()
        .map(|(d, state, checks, action, blocked, tell)| {
            (d.state.as_deref() != Some(*state) && *tell).then(|| {
                event(
                    "device.compliance_changed",
                    format!("device/{}/{}", d.device_type, d.device_id),
                    serde_json::json!({ "device": d.device, "type": d.device_type, "id": d.device_id, "state": state,
                        "previous": d.state, "action": action, "blocked": blocked, "checks": checks }),
                    ACTOR,
                    Some(d.device),
                )
            })
        })
        .collect();
    let records: Vec<crate::store::Verdict<'_>> = verdicts
        .iter()
        .zip(&texts)
        .zip(&events)
        .zip(&changed)
        .map(|((((d, state, _, _, blocked, _), checks), event), changed)| crate::store::Verdict {
            device: d.device,
            state,
            checks,
            blocked: *blocked,
            mark: d.mark,
            changed: *changed,
            event: event.as_ref(),
        })
        .collect();
    core.store.record_compliance(&records).await?;
    // Enforce: a device that drifted out of compliance gets its bundle again. A bundle
    // the device refused is not sent straight back (it would refuse it at every call, a
    // new operation each time): it is tried again once it has been refused for an hour.
    let again: Vec<i64> = verdicts
        .iter()
        .filter(|(d, state, _, action, ..)| {
            let drifted = d.state.as_deref() != Some("non_compliant") && d.bundle_state.as_deref() != Some("ERROR");
            let refused_long_ago =
                d.bundle_state.as_deref() == Some("ERROR") && d.bundle_at.is_some_and(|at| at < now - RETRY_REFUSED_MS);
            *state == "non_compliant" && *action >= Action::Enforce && (drifted || refused_long_ago)
        })
        .map(|(d, ..)| d.device)
        .collect();
    if !again.is_empty() {
        resend(core, &again).await?;
    }
    Ok(due.len())
}

/// Every rule of `policies` evaluated against device `d`. A rule whose plugin is missing,
/// suspended, faults or refuses is `unknown` with the reason; it never stops the others.
async fn checks(core: &Core, d: &crate::store::DueDevice, policies: &[&Live]) -> Result<Vec<Check>> {
    let rules: Vec<(&str, &Rule)> =
        policies.iter().flat_map(|p| p.spec.rules.iter().map(move |r| (p.name.as_str(), r))).collect();
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let metadata: Vec<(String, String)> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&d.metadata)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect();
    let tags = core.store.tags(d.device).await?;
    let telemetry = core
        .store
        .latest_telemetry(d.device)
        .await?
        .into_iter()
        .filter_map(|t| {
            use crate::plugins::bindings::types::{TelemetryPoint, TelemetryValue};
            let value = match serde_json::from_str::<serde_json::Value>(&t.value).ok()? {
                serde_json::Value::Number(n) => TelemetryValue::Number(n.as_f64()?),
                serde_json::Value::Bool(b) => TelemetryValue::Boolean(b),
                serde_json::Value::String(s) => TelemetryValue::Text(s),
                _ => return None,
            };
            Some(TelemetryPoint { name: t.name, timestamp_ms: u64::try_from(t.at).ok(), value })
        })
        .collect::<Vec<_>>();
    let context = crate::plugins::bindings::policy_rule::drover::plugin::policy_types::EvaluationContext {
        device_type: d.device_type.clone(),
        device_id: d.device_id.clone(),
        metadata,
        tags,
        telemetry,
    };
    let mut out = Vec::with_capacity(rules.len());
    for (policy, r) in rules {
        let unknown = |reason: String| Check::rule(policy, &r.rule, None, Some(reason));
        let check = match core.registry.serving(&r.rule) {
            None => match core.registry.suspension(&r.rule) {
                Some(why) => unknown(format!("rule plugin `{}` is suspended: {why}", r.rule)),
                None => unknown(format!("no rule plugin `{}` is loaded", r.rule)),
            },
            Some(plugin) => match plugin.evaluate(&r.params.to_string(), context.clone()).await {
                Ok(v) => Check::rule(policy, &r.rule, Some(v.compliant), v.reason),
                Err(e) => unknown(format!("rule plugin `{}` could not evaluate: {e}", r.rule)),
            },
        };
        out.push(check);
    }
    Ok(out)
}

/// Send `devices` their effective bundle again (enforce), superseding the one they have.
async fn resend(core: &Core, devices: &[i64]) -> Result<()> {
    let _one = core.policy_lock.lock().await;
    let store = &core.store;
    let policies: Vec<Live> = store.policies(true).await?.iter().map(parse).collect::<Result<_>>()?;
    let targets = store.policy_targets(&[], Some(devices), 0, devices.len() as i64).await?;
    for t in targets {
        let Some(current) = store.device_policy(t.device).await? else { continue };
        let mut chosen = Vec::new();
        for p in policies.iter().filter(|p| p.spec.profiles.contains_key(&t.device_type)) {
            if !store.applicable_devices(&applies(core, p).await?, Some(&[t.device])).await?.is_empty() {
                chosen.push(p);
            }
        }
        let features = effective(&chosen, &t.device_type, core.policy_mode);
        if features.is_empty() {
            continue;
        }
        let payload = bundle_payload(features.iter());
        let e = event(
            "device.policy_resent",
            format!("device/{}/{}", t.device_type, t.device_id),
            serde_json::json!({ "device": t.device, "type": t.device_type, "id": t.device_id, "reason": "non-compliant" }),
            ACTOR,
            Some(t.device),
        );
        let devices = [(t.device, e)];
        let activity = store
            .assign_policy(&Assignment {
                device_type: &t.device_type,
                digest: &current.digest,
                payload: Some(&payload),
                policies: &current.policies,
                devices: &devices,
                actor: ACTOR,
            })
            .await?;
        if let Some(activity) = activity {
            core.events.publish(crate::events::Event::ActivityAdded {
                activity,
                code: BUNDLE.into(),
                operations: 1,
                actor: ACTOR.into(),
            });
        }
    }
    Ok(())
}

/// A policy by name, parsed.
async fn named(core: &Core, name: &str) -> Result<(PolicyRow, Spec)> {
    let row = core.store.policy(name).await?.ok_or_else(|| Error::not_found(format!("policy `{name}` not found")))?;
    let spec = parse(&row)?.spec;
    Ok((row, spec))
}

/// After a change to policies of `specs`: every device of their types gets its effective
/// policy, and its verdict is due again (the rules may have changed).
async fn changed_types(core: &Core, specs: &[&Spec]) -> Result<Recomputed> {
    let types = types_of(specs);
    let done = recompute(core, Scope::DeviceTypes(types.clone())).await?;
    core.store.compliance_stale(&types).await?;
    Ok(done)
}

/// Create policy `name` (revision 1) after its checks, of `tenant` when given (then named
/// `TENANT/NAME`: `tenants::qualified`); the devices it applies to get their new effective
/// policy before this returns. Returns the name it is stored under.
pub async fn create(
    core: &Core,
    name: &str,
    tenant: Option<&str>,
    active: bool,
    spec: &Spec,
    actor: &str,
) -> Result<(String, Recomputed)> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(Error::invalid("invalid", "`name`: use 1-64 letters, digits and . _ -"));
    }
    check(core, spec, tenant).await?;
    let name = crate::tenants::qualified(tenant, name);
    let text = serde_json::to_string(spec).unwrap_or_default();
    let event = changed(&name, "created", Some(1), actor, tenant);
    let new = crate::store::NewPolicy { name: &name, active, priority: spec.priority, spec: &text, actor, tenant };
    core.store.insert_policy(&new, &event).await?;
    Ok((name.clone(), changed_types(core, &[spec]).await?))
}

/// Save `spec` as the next revision of policy `name` (`change` says why, in its event).
async fn revise(core: &Core, name: &str, spec: &Spec, change: &str, actor: &str) -> Result<Recomputed> {
    let (row, old) = named(core, name).await?;
    check(core, spec, row.tenant.as_deref()).await?;
    let revision = row.revision + 1;
    let text = serde_json::to_string(spec).unwrap_or_default();
    let event = changed(name, change, Some(revision), actor, row.tenant.as_deref());
    core.store.revise_policy(row.id, revision, spec.priority, &text, actor, &event).await?;
    changed_types(core, &[&old, spec]).await
}

/// Edit policy `name`: `spec` is its whole new content.
pub async fn update(core: &Core, name: &str, spec: &Spec, actor: &str) -> Result<Recomputed> {
    revise(core, name, spec, "updated", actor).await
}

/// Make revision `revision`'s content current again, as a new revision, checked again by
/// the plugins as they are now.
pub async fn restore(core: &Core, name: &str, revision: i64, actor: &str) -> Result<Recomputed> {
    let (row, _) = named(core, name).await?;
    let old = core
        .store
        .policy_revision(row.id, revision)
        .await?
        .ok_or_else(|| Error::not_found(format!("policy `{name}` has no revision {revision}")))?;
    let spec: Spec = serde_json::from_str(&old.spec)
        .map_err(|e| Error::internal(format!("policy `{name}` revision {revision}: {e}")))?;
    revise(core, name, &spec, &format!("restored revision {revision}"), actor).await
}

/// Let policy `name` apply, or stop it from applying (it keeps its history).
pub async fn set_active(core: &Core, name: &str, active: bool, actor: &str) -> Result<Recomputed> {
    let (row, spec) = named(core, name).await?;
    let change = if active { "activated" } else { "deactivated" };
    let event = changed(name, change, Some(row.revision), actor, row.tenant.as_deref());
    core.store.set_policy_active(row.id, active, &event).await?;
    changed_types(core, &[&spec]).await
}

/// Delete policy `name` and its history; the devices it applied to get their new
/// effective policy (what they were sent stays on them until another replaces it).
pub async fn delete(core: &Core, name: &str, actor: &str) -> Result<Recomputed> {
    let (row, spec) = named(core, name).await?;
    if !core.store.delete_policy(row.id, &changed(name, "deleted", None, actor, row.tenant.as_deref())).await? {
        return Err(Error::not_found(format!("policy `{name}` not found")));
    }
    changed_types(core, &[&spec]).await
}
