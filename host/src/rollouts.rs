//! Rollouts: an artifact sent to a fleet in phases, each advancing when its devices
//! succeed, stopping when too many fail, and sending updated devices back to the version
//! they had (docs/rollouts.md).
//!
//! The state machine lives in the database (`store/rollouts.rs`): every replica runs
//! [`drive`], and the one holding a rollout's lease moves it. A step that starts devices
//! renews the lease in its own transaction and moves each device out of `waiting` there,
//! so a restart or a takeover continues where it was and no device is started twice.
//! Devices' progress is read from their operations, as the plugins decoded it.

use crate::core::Core;
use crate::error::{Error, Result};
use crate::operations::{DeviceName, Targets};
use crate::store::{ArtifactRow, DeviceChange, InFlight, NewEvent, Placement, RolloutRow, Start, StartBatch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::ToSchema;

/// The longest timeout or soak a rollout may ask for.
const MONTH_SECS: u64 = 30 * 86_400;

/// How often each replica looks at the live rollouts.
pub const TICK: Duration = Duration::from_secs(1);
/// Devices started in one transaction at most.
const BATCH: i64 = 5_000;

/// A rollout as an admin writes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// 1 to 128 characters, without `/`; unique.
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^/]*\S[^/]*$")]
    pub name: String,
    pub artifact: ArtifactRef,
    pub targets: RolloutTargets,
    /// At least one. Percentages and counts are cumulative (how much of the fleet has been
    /// offered the update by the end of the phase); a group phase takes that group's
    /// targets. The last phase always takes every device left.
    #[schema(min_items = 1)]
    pub phases: Vec<Phase>,
    /// When a phase moves on to the next, unless the phase says otherwise.
    #[serde(default)]
    pub advance: Advance,
    #[serde(default)]
    pub abort: Abort,
    /// Devices started per minute; none: as fast as the phases allow.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// A device that has not finished this long after its update was sent failed
    /// (`timed out`), and its operation is cancelled. Default one hour.
    #[serde(default = "default_timeout")]
    #[schema(minimum = 1, maximum = 2592000)]
    pub device_timeout_secs: u64,
    /// On abort, send devices that already updated back to the version they had.
    #[serde(default)]
    pub auto_rollback: bool,
}

fn default_timeout() -> u64 {
    3600
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutTargets {
    #[serde(default)]
    pub devices: Vec<TargetDevice>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetDevice {
    #[serde(rename = "type")]
    pub device_type: String,
    pub id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Cumulative share of the targets, 0 < p ≤ 100.
    #[schema(exclusive_minimum = 0.0, maximum = 100.0)]
    pub percent: Option<f64>,
    /// Cumulative number of targets.
    pub count: Option<u64>,
    /// The targets in this group (an explicit canary group).
    pub group: Option<String>,
    /// Overrides of the rollout's `advance` for this phase.
    pub manual: Option<bool>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub success_ratio: Option<f64>,
    pub min_finished: Option<u64>,
    #[schema(maximum = 2592000)]
    pub soak_secs: Option<u64>,
}

/// A phase advances when at least `min_finished` of its devices finished (default: all
/// of them), at least `success_ratio` of those succeeded, and then `soak_secs` passed;
/// or, when `manual`, when an admin says so.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Advance {
    #[serde(default)]
    pub manual: bool,
    #[serde(default = "default_success")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub success_ratio: f64,
    pub min_finished: Option<u64>,
    #[serde(default)]
    #[schema(maximum = 2592000)]
    pub soak_secs: u64,
}

fn default_success() -> f64 {
    0.95
}

impl Default for Advance {
    fn default() -> Self {
        Advance { manual: false, success_ratio: default_success(), min_finished: None, soak_secs: 0 }
    }
}

/// The rollout aborts when, once `min_finished` devices finished (in the current phase,
/// or overall; a phase smaller than that counts when all of it finished), the failed
/// share reaches `failure_ratio`; or when more than `max_timeouts` devices timed out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// Above 0, at most 1.
    #[serde(default = "default_failure")]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub failure_ratio: f64,
    #[serde(default = "default_min_finished")]
    pub min_finished: u64,
    pub max_timeouts: Option<u64>,
}

fn default_failure() -> f64 {
    0.2
}

fn default_min_finished() -> u64 {
    5
}

impl Default for Abort {
    fn default() -> Self {
        Abort { failure_ratio: default_failure(), min_finished: default_min_finished(), max_timeouts: None }
    }
}

/// Devices started per minute: `per_minute`, multiplied by `increment_factor` each time
/// another `increase_every` devices succeeded, up to `max_per_minute`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    #[schema(minimum = 1)]
    pub per_minute: u64,
    #[serde(default = "one")]
    #[schema(minimum = 1.0, maximum = 100.0)]
    pub increment_factor: f64,
    #[serde(default)]
    pub increase_every: u64,
    pub max_per_minute: Option<u64>,
}

fn one() -> f64 {
    1.0
}

impl Rate {
    fn now(&self, succeeded: i64) -> i64 {
        let steps = (succeeded as u64).checked_div(self.increase_every).unwrap_or(0);
        let rate = self.per_minute as f64 * self.increment_factor.powi(steps.min(64) as i32);
        let cap = self.max_per_minute.unwrap_or(u64::MAX) as f64;
        rate.min(cap).min(1e12) as i64
    }
}

/// Device states: waiting for its turn, then pending (sent), downloading, installing,
/// rebooting; finished as succeeded, failed, timed_out, skipped (already at the version) or
/// cancelled (the rollout stopped first); after a rollback rolling_back, rolled_back or
/// rollback_failed, or rollback_unsupported. In this order: the API's `DeviceState` enum
/// indexes it.
pub const DEVICE_STATES: [&str; 14] = [
    "waiting",
    "pending",
    "downloading",
    "installing",
    "rebooting",
    "succeeded",
    "failed",
    "timed_out",
    "skipped",
    "cancelled",
    "rolling_back",
    "rolled_back",
    "rollback_failed",
    "rollback_unsupported",
];

fn in_flight(state: &str) -> bool {
    matches!(state, "pending" | "downloading" | "installing" | "rebooting" | "rolling_back")
}

/// A rollout event (`rollout.*`, `artifact.*`) for the durable log.
pub fn event(event_type: &str, target: String, data: serde_json::Value, actor: &str) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        actor: Some(actor.into()),
        target: Some(target),
        data: Some(data.to_string()),
        ..Default::default()
    }
}

/// A rollout's event; a tenant's rollout's is the tenant's too (its callers read it).
fn rollout_event(r: &RolloutRow, what: &str, data: serde_json::Value, actor: &str) -> NewEvent {
    let mut data = data;
    data["rollout"] = r.name.clone().into();
    NewEvent {
        tenant: r.tenant.clone(),
        ..event(&format!("rollout.{what}"), format!("rollout/{}", r.name), data, actor)
    }
}

/// Check a spec and store the rollout with every target drawn into its phase. Returns the
/// rollout and how many targets were left out (a type or model the artifact is not for).
///
/// `caller` is the creating caller's tenant (`None`: an operator). It names the artifact
/// as it names groups (`tenants::qualified`), so a tenant's caller uses its own artifacts
/// only. The rollout is its artifact's tenant's: named `TENANT/NAME`, its targets and
/// group phases narrowed to that tenant's devices and groups, whoever made it.
pub async fn create(core: &Core, mut spec: Spec, actor: &str, caller: Option<&str>) -> Result<(RolloutRow, u64)> {
    if spec.name.trim().is_empty() || spec.name.chars().count() > 128 || spec.name.contains('/') {
        return Err(Error::invalid("invalid", "`name` must be 1 to 128 characters, without `/`"));
    }
    if spec.phases.is_empty() {
        return Err(Error::invalid("invalid", "`phases` is empty: give at least one (e.g. [{\"percent\": 100}])"));
    }
    for (i, p) in spec.phases.iter().enumerate() {
        let given = [p.percent.is_some(), p.count.is_some(), p.group.is_some()].iter().filter(|b| **b).count();
        if given > 1 {
            return Err(Error::invalid("invalid", format!("phases[{i}]: give one of `percent`, `count`, `group`")));
        }
        if let Some(pc) = p.percent
            && !(pc > 0.0 && pc <= 100.0)
        {
            return Err(Error::invalid("invalid", format!("phases[{i}]: `percent` {pc} is not in (0, 100]")));
        }
        if let Some(r) = p.success_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Error::invalid("invalid", format!("phases[{i}]: `success_ratio` {r} is not in [0, 1]")));
        }
    }
    let checks =
        [("advance.success_ratio", spec.advance.success_ratio), ("abort.failure_ratio", spec.abort.failure_ratio)];
    for (field, r) in checks {
        if !(0.0..=1.0).contains(&r) {
            return Err(Error::invalid("invalid", format!("`{field}` {r} is not in [0, 1]")));
        }
    }
    if spec.abort.failure_ratio == 0.0 {
        return Err(Error::invalid("invalid", "`abort.failure_ratio` 0 would abort before any device finished"));
    }
    if let Some(r) = &spec.rate
        && (r.per_minute == 0 || !(1.0..=100.0).contains(&r.increment_factor))
    {
        return Err(Error::invalid("invalid", "`rate.per_minute` must be at least 1, `increment_factor` 1 to 100"));
    }
    if !(1..=MONTH_SECS).contains(&spec.device_timeout_secs) {
        return Err(Error::invalid("invalid", "`device_timeout_secs` must be 1 to 2592000 (30 days)"));
    }
    // Soaks beyond a month are refused: the driver does arithmetic on them in milliseconds.
    let soaks = std::iter::once(spec.advance.soak_secs).chain(spec.phases.iter().filter_map(|p| p.soak_secs));
    if soaks.into_iter().any(|s| s > MONTH_SECS) {
        return Err(Error::invalid("invalid", "`soak_secs` must be at most 2592000 (30 days)"));
    }
    let artifact_name = crate::tenants::qualified(caller, &spec.artifact.name);
    let artifact = core
        .store
        .artifact(&artifact_name, &spec.artifact.version)
        .await?
        .filter(|a| caller.is_none() || a.tenant.as_deref() == caller)
        .ok_or_else(|| {
            Error::invalid(
                "unknown_artifact",
                format!("artifact {} {} does not exist", spec.artifact.name, spec.artifact.version),
            )
        })?;
    let tenant = artifact.tenant.clone();
    spec.artifact.name = artifact.name.clone();
    spec.name = crate::tenants::qualified(tenant.as_deref(), &spec.name);
    let t = &spec.targets;
    let names: Vec<DeviceName> =
        t.devices.iter().map(|d| DeviceName { device_type: d.device_type.clone(), device_id: d.id.clone() }).collect();
    let targets = within(
        crate::operations::target_set(
            core,
            &Targets { devices: names, groups: t.groups.clone(), tags: t.tags.clone() },
            tenant.as_deref(),
        )
        .await?,
        tenant.as_deref(),
    );
    let all = core.store.target_devices(&targets).await?;
    if all.is_empty() {
        return Err(Error::invalid("no_targets", "the targets match no enrolled device"));
    }
    let (types, models) = (artifact.types(), artifact.model_list());
    let fits = |ty: &str, metadata: &str| {
        types.iter().any(|t| t == ty)
            && (models.is_empty() || models.iter().any(|m| Some(m.as_str()) == model(metadata).as_deref()))
    };
    let devices: Vec<(i64, String)> =
        all.iter().filter(|(_, ty, md)| fits(ty, md)).map(|(id, ty, _)| (*id, ty.clone())).collect();
    let left_out = (all.len() - devices.len()) as u64;
    if devices.is_empty() {
        return Err(Error::invalid(
            "no_targets",
            format!(
                "none of the {} targeted devices is of a type ({}) or model the artifact is for",
                all.len(),
                types.join(", ")
            ),
        ));
    }
    // Every type among the devices must take this artifact's update payload.
    let mut seen = std::collections::BTreeSet::new();
    for (_, ty) in &devices {
        if !seen.insert(ty.clone()) {
            continue;
        }
        let plugin = core
            .registry
            .device_type(ty)
            .ok_or_else(|| Error::unavailable("no_plugin", format!("no plugin is loaded for device type `{ty}`")))?;
        let sample = crate::artifacts::update_payload("https://drover.invalid", &artifact, "t");
        plugin.validate(crate::artifacts::UPDATE_CODE, Some(&sample)).await.map_err(|e| Error::from(e).context(ty))?;
    }
    let placements = place(core, &spec, &devices, tenant.as_deref()).await?;
    let text = serde_json::to_string(&spec).expect("JSON");
    let created = NewEvent {
        tenant: tenant.clone(),
        ..event(
            "rollout.created",
            format!("rollout/{}", spec.name),
            serde_json::json!({"rollout": spec.name, "artifact": artifact.name, "version": artifact.version,
                           "devices": placements.len(), "phases": spec.phases.len(), "left_out": left_out}),
            actor,
        )
    };
    let row = core.store.create_rollout(&spec.name, &artifact, &text, actor, &placements, &created).await?;
    Ok((row, left_out))
}

/// A tenant's targets reach its devices only, whatever they name (an operator's tag
/// target too).
fn within(mut targets: crate::store::TargetSet, tenant: Option<&str>) -> crate::store::TargetSet {
    if let Some(t) = tenant {
        targets.within = Some(crate::scope::Reach::tenant(t));
    }
    targets
}

fn model(metadata: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(metadata).ok()?.get("model")?.as_str().map(str::to_string)
}

/// The version a device reports running (metadata `firmware`, the key the first-party
/// plugins use; docs/plugin-contract.md).
fn version(metadata: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(metadata).ok()?.get("firmware")?.as_str().map(str::to_string)
}

/// Draw the devices into phases: group phases take their members, the others take from
/// the rest in a shuffled order (stable for the rollout's name, so a canary is not
/// always the oldest devices), up to their cumulative share; the last takes the rest.
async fn place(core: &Core, spec: &Spec, devices: &[(i64, String)], tenant: Option<&str>) -> Result<Vec<Placement>> {
    use std::hash::{Hash, Hasher};
    let total = devices.len() as u64;
    let mut order: Vec<(u64, i64)> = devices
        .iter()
        .map(|(id, _)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&spec.name, id).hash(&mut h);
            (h.finish(), *id)
        })
        .collect();
    order.sort_unstable();
    let mut left: Vec<i64> = order.into_iter().map(|(_, id)| id).collect();
    let mut placements = Vec::with_capacity(devices.len());
    let mut placed = 0u64;
    for (i, p) in spec.phases.iter().enumerate() {
        let last = i + 1 == spec.phases.len();
        let take: Vec<i64> = if last {
            std::mem::take(&mut left)
        } else if let Some(g) = &p.group {
            let members = within(
                crate::operations::target_set(core, &Targets { groups: vec![g.clone()], ..Default::default() }, tenant)
                    .await?,
                tenant,
            );
            let members: std::collections::HashSet<i64> =
                core.store.target_devices(&members).await?.into_iter().map(|(id, _, _)| id).collect();
            let (inside, rest): (Vec<i64>, Vec<i64>) = left.into_iter().partition(|id| members.contains(id));
            left = rest;
            inside
        } else {
            let goal = match (p.percent, p.count) {
                (Some(pc), _) => ((total as f64) * pc / 100.0).ceil() as u64,
                (_, Some(c)) => c,
                _ => total,
            };
            let n = goal.saturating_sub(placed).min(left.len() as u64) as usize;
            left.drain(..n).collect()
        };
        for id in take {
            placed += 1;
            placements.push(Placement { device: id, phase: i as i64, position: placed as i64 });
        }
    }
    Ok(placements)
}

/// Pause a running rollout: devices under way go on, no new one starts.
pub async fn pause(core: &Core, name: &str, actor: &str) -> Result<RolloutRow> {
    control(core, name, &["running"], "paused", "paused", actor).await
}

pub async fn resume(core: &Core, name: &str, actor: &str) -> Result<RolloutRow> {
    control(core, name, &["paused"], "running", "resumed", actor).await
}

/// Cancel: no new device starts and queued updates are cancelled; nothing is rolled back.
pub async fn cancel(core: &Core, name: &str, actor: &str) -> Result<RolloutRow> {
    let r = control(core, name, &["running", "paused"], "cancelled", "cancelled", actor).await?;
    cancel_queued(core, &r, actor).await?;
    Ok(r)
}

/// Abort now, as the criteria would (rolling back when the rollout says so).
pub async fn abort(core: &Core, name: &str, actor: &str) -> Result<RolloutRow> {
    let r = find(core, name).await?;
    if !aborted(core, &r, "aborted by an admin", actor).await? {
        return Err(Error::conflict(
            "state",
            format!("rollout `{name}` is {}: only a running or paused one aborts", r.state),
        ));
    }
    find(core, name).await
}

async fn control(core: &Core, name: &str, from: &[&str], to: &str, what: &str, actor: &str) -> Result<RolloutRow> {
    let r = find(core, name).await?;
    let e = rollout_event(&r, what, serde_json::json!({}), actor);
    if !core.store.rollout_transition(r.id, from, to, None, &e).await? {
        return Err(Error::conflict(
            "state",
            format!("rollout `{name}` is {}: it can be {what} only when {}", r.state, from.join(" or ")),
        ));
    }
    find(core, name).await
}

/// Move to the next phase now (a manual phase, or an admin who has seen enough).
pub async fn advance(core: &Core, name: &str, actor: &str) -> Result<RolloutRow> {
    let r = find(core, name).await?;
    let spec = spec_of(&r)?;
    if !matches!(r.state.as_str(), "running" | "paused") {
        return Err(Error::conflict("state", format!("rollout `{name}` is {}", r.state)));
    }
    if r.phase + 1 >= spec.phases.len() as i64 {
        return Err(Error::conflict("last_phase", format!("rollout `{name}` is in its last phase")));
    }
    next_phase(core, &r, actor).await?;
    find(core, name).await
}

/// Roll back devices that updated, on an admin's request (an aborted or cancelled
/// rollout whose `auto_rollback` was off, or a finished one found bad afterwards).
pub async fn rollback(core: &Core, name: &str, actor: &str) -> Result<RolloutRow> {
    let r = find(core, name).await?;
    if matches!(r.state.as_str(), "running" | "paused") {
        return Err(Error::conflict("state", format!("rollout `{name}` is {}: abort or cancel it first", r.state)));
    }
    if r.rollback != "none" {
        return Err(Error::conflict("state", format!("rollout `{name}`'s rollback is already {}", r.rollback)));
    }
    let e = rollout_event(&r, "rollback_started", serde_json::json!({}), actor);
    core.store.rollout_rollback(r.id, "running", Some(&e)).await?;
    // The driver does the sending; a finished rollout is driven again until it is done.
    core.store.rollout_reopen(r.id).await?;
    find(core, name).await
}

/// Delete a rollout that is over, with its devices' history (then its artifact can go).
pub async fn remove(core: &Core, name: &str, actor: &str) -> Result<()> {
    let r = find(core, name).await?;
    let e = rollout_event(&r, "removed", serde_json::json!({}), actor);
    if !core.store.delete_rollout(r.id, &e).await? {
        return Err(Error::conflict(
            "state",
            format!("rollout `{name}` is not over ({}): cancel or abort it, and let its devices finish", r.state),
        ));
    }
    Ok(())
}

pub async fn find(core: &Core, name: &str) -> Result<RolloutRow> {
    core.store.rollout(name).await?.ok_or_else(|| Error::not_found(format!("rollout `{name}` not found")))
}

pub fn spec_of(r: &RolloutRow) -> Result<Spec> {
    serde_json::from_str(&r.spec).map_err(|e| Error::internal(format!("rollout `{}`: {e}", r.name)))
}

/// Counts per phase and state: `counts[phase][state]`.
pub async fn counts(core: &Core, id: i64) -> Result<BTreeMap<i64, BTreeMap<String, i64>>> {
    let mut out: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    for (phase, state, n) in core.store.rollout_counts(id).await? {
        out.entry(phase).or_default().insert(state, n);
    }
    Ok(out)
}

/// A name for this replica's hold on rollouts, unique among replicas.
pub fn holder() -> String {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).expect("the OS random source works");
    format!("replica-{}", hex::encode(raw))
}

/// Every replica runs this: every [`TICK`], drive each live rollout this replica holds
/// (or can take) the lease of. Ends when the core's server stops (the task is dropped).
pub async fn run(core: Core, holder: String) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per rollout, when this replica last read where its devices are: the next step reads
    // only the operations that changed since (less a margin for other replicas' clocks).
    let mut tracked: std::collections::HashMap<i64, i64> = Default::default();
    loop {
        tick.tick().await;
        let live = match core.store.live_rollouts().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("rollouts: {e}");
                continue;
            }
        };
        tracked.retain(|id, _| live.contains(id));
        for id in live {
            match core.store.lease_rollout(id, &holder).await {
                Ok(true) => {
                    let since = tracked.get(&id).copied().unwrap_or(0);
                    let now = crate::store::now_ms();
                    match drive_since(&core, id, &holder, since).await {
                        Ok(()) => {
                            tracked.insert(id, now - CLOCK_MARGIN_MS);
                        }
                        Err(e) => tracing::warn!(rollout = id, "rollout step failed: {e}"),
                    }
                }
                Ok(false) => {
                    // Another replica drives it: read everything if it comes back here.
                    tracked.remove(&id);
                }
                Err(e) => tracing::warn!(rollout = id, "rollout lease: {e}"),
            }
        }
    }
}

/// How far other replicas' clocks may be behind this one's (operations' `updated_at`
/// is written by whichever replica received the device's report).
const CLOCK_MARGIN_MS: i64 = 10_000;

/// One step of one rollout: record where its devices are, then abort, advance, start
/// devices or finish, as its state and counts say.
pub async fn drive(core: &Core, id: i64, holder: &str) -> Result<()> {
    drive_since(core, id, holder, 0).await
}

/// [`drive`], reading only the devices whose operation changed since `since` (and those
/// due for their timeout).
pub async fn drive_since(core: &Core, id: i64, holder: &str, since: i64) -> Result<()> {
    let Some(r) = core.store.rollout_by_key(id).await? else { return Ok(()) };
    let spec = spec_of(&r)?;
    let artifact = core
        .store
        .artifact_by_key(r.artifact)
        .await?
        .ok_or_else(|| Error::internal(format!("rollout `{}`: its artifact is gone", r.name)))?;
    track(core, &r, &spec, &artifact, since).await?;
    let counts = counts(core, r.id).await?;
    let phase = Tally::of(counts.get(&r.phase));
    let overall = Tally::sum(counts.values());

    if matches!(r.state.as_str(), "running" | "paused")
        && let Some(why) = abort_reason(&spec, &phase, &overall, r.phase)
    {
        aborted(core, &r, &why, "rollout").await?;
        return Ok(());
    }
    if r.state == "running" {
        let last = r.phase + 1 >= spec.phases.len() as i64;
        if !last && phase.waiting == 0 && phase_ready(core, &r, &spec, &phase).await? {
            next_phase(core, &r, "rollout").await?;
            return Ok(());
        }
        if overall.waiting > 0 {
            start(core, &r, &spec, &artifact, &overall, holder).await?;
            return Ok(());
        }
        if last && overall.under_way == 0 {
            let e = rollout_event(
                &r,
                "finished",
                serde_json::json!({"succeeded": overall.succeeded, "failed": overall.failed, "skipped": overall.skipped}),
                "rollout",
            );
            if core.store.rollout_transition(r.id, &["running"], "finished", None, &e).await? && r.rollback == "none" {
                core.store.rollout_done(r.id, None, None).await?;
            }
        }
        return Ok(());
    }
    if r.rollback == "running" {
        if overall.succeeded > 0 {
            roll_back(core, &r, holder).await?;
            return Ok(());
        }
        // Devices still under way when the rollout stopped are rolled back as they succeed:
        // the rollback is done only when none is left.
        if overall.under_way == 0 {
            let e = rollout_event(
                &r,
                "rolled_back",
                serde_json::json!({"rolled_back": overall.rolled_back, "failed": overall.rollback_failed,
                                   "unsupported": overall.rollback_unsupported}),
                "rollout",
            );
            core.store.rollout_rollback(r.id, "done", Some(&e)).await?;
        }
        return Ok(());
    }
    if matches!(r.state.as_str(), "aborted" | "cancelled" | "finished") && overall.under_way == 0 {
        core.store.rollout_done(r.id, None, None).await?;
    }
    Ok(())
}

/// Counts of one phase, or of all.
#[derive(Debug, Default, Clone)]
struct Tally {
    waiting: i64,
    under_way: i64,
    succeeded: i64,
    failed: i64,
    skipped: i64,
    timed_out: i64,
    rolling_back: i64,
    rolled_back: i64,
    rollback_failed: i64,
    rollback_unsupported: i64,
    total: i64,
}

impl Tally {
    fn of(states: Option<&BTreeMap<String, i64>>) -> Tally {
        let mut t = Tally::default();
        for (s, n) in states.into_iter().flatten() {
            t.add(s, *n);
        }
        t
    }

    fn sum<'a>(all: impl Iterator<Item = &'a BTreeMap<String, i64>>) -> Tally {
        let mut t = Tally::default();
        for states in all {
            for (s, n) in states {
                t.add(s, *n);
            }
        }
        t
    }

    fn add(&mut self, state: &str, n: i64) {
        self.total += n;
        match state {
            "waiting" => self.waiting += n,
            "succeeded" => self.succeeded += n,
            "failed" => self.failed += n,
            "timed_out" => {
                self.failed += n;
                self.timed_out += n;
            }
            "skipped" => self.skipped += n,
            "rolled_back" => self.rolled_back += n,
            "rollback_failed" => self.rollback_failed += n,
            "rollback_unsupported" => self.rollback_unsupported += n,
            "rolling_back" => {
                self.rolling_back += n;
                self.under_way += n;
            }
            s if in_flight(s) => self.under_way += n,
            _ => {}
        }
    }

    /// Finished with a verdict on the update: succeeded or failed (a device rolled back
    /// had succeeded).
    fn finished(&self) -> i64 {
        self.succeeded + self.failed + self.rolled_back + self.rollback_failed + self.rollback_unsupported
    }

    fn successes(&self) -> i64 {
        self.succeeded + self.rolled_back + self.rollback_failed + self.rollback_unsupported
    }
}

fn abort_reason(spec: &Spec, phase: &Tally, overall: &Tally, phase_index: i64) -> Option<String> {
    let a = &spec.abort;
    if let Some(max) = a.max_timeouts
        && overall.timed_out as u64 > max
    {
        return Some(format!("{} devices timed out (more than {max})", overall.timed_out));
    }
    let crossed = |t: &Tally| {
        let finished = t.finished();
        // A phase smaller than `min_finished` is judged once all of it finished.
        let enough = (finished as u64) >= a.min_finished.min((t.total - t.skipped).max(1) as u64);
        enough && finished > 0 && (t.failed as f64) / (finished as f64) >= a.failure_ratio
    };
    if crossed(phase) {
        return Some(format!(
            "phase {}: {} of {} finished devices failed (abort at {}%)",
            phase_index + 1,
            phase.failed,
            phase.finished(),
            a.failure_ratio * 100.0
        ));
    }
    if crossed(overall) {
        return Some(format!(
            "{} of {} finished devices failed (abort at {}%)",
            overall.failed,
            overall.finished(),
            a.failure_ratio * 100.0
        ));
    }
    None
}

/// Whether the current phase may advance now (noting when it first could, for its soak).
async fn phase_ready(core: &Core, r: &RolloutRow, spec: &Spec, t: &Tally) -> Result<bool> {
    let Some(p) = usize::try_from(r.phase).ok().and_then(|i| spec.phases.get(i)) else {
        return Err(Error::internal(format!(
            "rollout `{}` is in phase {} of {}",
            r.name,
            r.phase + 1,
            spec.phases.len()
        )));
    };
    if p.manual.unwrap_or(spec.advance.manual) {
        return Ok(false);
    }
    let counted = t.total - t.skipped;
    let min = p
        .min_finished
        .or(spec.advance.min_finished)
        .map_or(counted, |m| i64::try_from(m).unwrap_or(i64::MAX).min(counted));
    let finished = t.finished();
    let ratio = if finished == 0 { 1.0 } else { t.successes() as f64 / finished as f64 };
    let ok = finished >= min && ratio >= p.success_ratio.unwrap_or(spec.advance.success_ratio);
    let now = crate::store::now_ms();
    match (ok, r.phase_ready_at) {
        (false, Some(_)) => {
            core.store.rollout_phase_ready(r.id, None).await?;
            Ok(false)
        }
        (false, None) => Ok(false),
        (true, None) => {
            core.store.rollout_phase_ready(r.id, Some(now)).await?;
            Ok(p.soak_secs.unwrap_or(spec.advance.soak_secs) == 0)
        }
        (true, Some(at)) => Ok(now - at >= (p.soak_secs.unwrap_or(spec.advance.soak_secs) as i64) * 1000),
    }
}

async fn next_phase(core: &Core, r: &RolloutRow, actor: &str) -> Result<()> {
    let e = rollout_event(
        r,
        "phase_started",
        serde_json::json!({"phase": r.phase + 2, "of": spec_of(r)?.phases.len(), "after_phase": r.phase + 1}),
        actor,
    );
    core.store.rollout_next_phase(r.id, r.phase + 1, &e).await?;
    Ok(())
}

/// Record where each device under way is, from its operation.
async fn track(core: &Core, r: &RolloutRow, spec: &Spec, artifact: &ArtifactRow, since: i64) -> Result<()> {
    let now = crate::store::now_ms();
    let timeout = spec.device_timeout_secs as i64 * 1000;
    let mut changes = Vec::new();
    let mut timed_out = Vec::new();
    for d in core.store.rollout_in_flight(r.id, since, now - timeout).await? {
        if let Some(c) = device_change(&d, artifact, now, timeout) {
            if c.state == "timed_out" || (c.state == "rollback_failed" && d.op_state == "PENDING") {
                timed_out.push(d.operation);
            }
            changes.push(c);
        }
    }
    core.store.update_rollout_devices(r.id, &changes).await?;
    for op in timed_out {
        // Its operation goes too: a late device must not start an update the rollout has
        // counted as failed.
        let _ = core.store.cancel(Some(op), None, None, "rollout").await;
    }
    Ok(())
}

/// A device's new state from its operation, if it changed.
fn device_change(d: &InFlight, artifact: &ArtifactRow, now: i64, timeout: i64) -> Option<DeviceChange> {
    let rolling_back = d.state == "rolling_back";
    let response: serde_json::Value =
        d.response.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
    let reason = || {
        ["error", "meaning", "reason", "message"]
            .iter()
            .find_map(|k| response.get(*k).and_then(|v| v.as_str()).map(str::to_string))
            .or_else(|| (!response.is_null()).then(|| response.to_string()))
    };
    let done = |state: &str, reason: Option<String>| {
        Some(DeviceChange { device: d.device, state: state.into(), progress: None, reason, finished: true })
    };
    match d.op_state.as_str() {
        "COMPLETED" if rolling_back => done("rolled_back", None),
        "COMPLETED" => {
            // Succeeded means running the target version: the version the device reports
            // must be the artifact's, when it reports one: in its result, or as a metadata
            // `firmware` it reported since the update started (an LwM2M device's stays what
            // it was until the server reads /3/0 again: an unchanged one says nothing).
            let reported = response
                .get("version")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .or(version(&d.metadata).filter(|v| Some(v) != d.from_version.as_ref()));
            match reported {
                Some(v) if v != artifact.version => {
                    done("failed", Some(format!("reports version {v} after the update, not {}", artifact.version)))
                }
                _ => done("succeeded", None),
            }
        }
        "ERROR" | "EXPIRED" if rolling_back => done("rollback_failed", reason()),
        "ERROR" => done("failed", reason()),
        "EXPIRED" => done("timed_out", Some("its operation expired".into())),
        "CANCELLED" | "REPEATED" if rolling_back => done("rollback_failed", Some("its operation was cancelled".into())),
        "CANCELLED" | "REPEATED" => done("failed", Some("its update operation was cancelled".into())),
        _ if now - d.started_at > timeout => {
            let state = if rolling_back { "rollback_failed" } else { "timed_out" };
            done(state, Some(format!("not finished after {} s", timeout / 1000)))
        }
        _ if rolling_back => None,
        "IN_PROGRESS" => {
            // The plugin maps the device's protocol onto the standard states
            // (docs/plugin-contract.md, "Updates").
            let state = response
                .get("update_state")
                .and_then(|s| s.as_str())
                .filter(|s| matches!(*s, "downloading" | "installing" | "rebooting"))
                .unwrap_or("downloading");
            let progress = response.get("progress").and_then(|p| p.as_i64()).filter(|p| (0..=100).contains(p));
            (state != d.state || progress.is_some_and(|p| Some(p) != d.progress)).then(|| DeviceChange {
                device: d.device,
                state: state.into(),
                progress,
                reason: None,
                finished: false,
            })
        }
        _ => None,
    }
}

/// Start the next devices, as many as the phase and the rate allow.
async fn start(
    core: &Core,
    r: &RolloutRow,
    spec: &Spec,
    artifact: &ArtifactRow,
    t: &Tally,
    holder: &str,
) -> Result<()> {
    let budget = match &spec.rate {
        Some(rate) => {
            let since = core.store.rollout_started_since(r.id, crate::store::now_ms() - 60_000).await?;
            (rate.now(t.successes()) - since).clamp(0, BATCH)
        }
        None => BATCH,
    };
    if budget == 0 {
        return Ok(());
    }
    let waiting = core.store.rollout_waiting(r.id, r.phase, budget).await?;
    if waiting.is_empty() {
        return Ok(());
    }
    let expires_at = crate::store::now_ms() + spec.device_timeout_secs as i64 * 1000 + 60_000;
    let mut starts = Vec::new();
    let mut skipped = Vec::new();
    for w in &waiting {
        let running = version(&w.metadata);
        if running.as_deref() == Some(artifact.version.as_str()) {
            skipped.push(w.device);
            continue;
        }
        let (token, token_hash) = crate::artifacts::new_grant();
        starts.push(Start {
            device: w.device,
            payload: crate::artifacts::update_payload(&core.public_url, artifact, &token),
            token_hash,
            from_version: running,
        });
    }
    let actor = format!("rollout:{}", r.name);
    let batch = StartBatch {
        rollout: r.id,
        holder,
        code: crate::artifacts::UPDATE_CODE,
        kind: "command",
        actor: &actor,
        artifact: artifact.id,
        expires_at,
        devices: &starts,
        skipped: &skipped,
        state: "pending",
    };
    if let Some(activity) = core.store.start_rollout_devices(&batch).await?
        && !starts.is_empty()
    {
        core.events.publish(crate::events::Event::ActivityAdded {
            activity,
            code: crate::artifacts::UPDATE_CODE.into(),
            operations: starts.len() as u64,
            actor,
        });
    }
    Ok(())
}

/// Abort: the state, queued updates cancelled, and the rollback started when the rollout
/// says so. False when the rollout was not running or paused.
async fn aborted(core: &Core, r: &RolloutRow, why: &str, actor: &str) -> Result<bool> {
    let spec = spec_of(r)?;
    let e = rollout_event(r, "aborted", serde_json::json!({"reason": why, "auto_rollback": spec.auto_rollback}), actor);
    if !core.store.rollout_transition(r.id, &["running", "paused"], "aborted", Some(why), &e).await? {
        return Ok(false);
    }
    tracing::warn!(rollout = %r.name, "rollout aborted: {why}");
    cancel_queued(core, r, actor).await?;
    if spec.auto_rollback {
        let e = rollout_event(r, "rollback_started", serde_json::json!({}), actor);
        core.store.rollout_rollback(r.id, "running", Some(&e)).await?;
    }
    Ok(true)
}

/// Cancel the update operations not yet delivered; the devices count as cancelled.
async fn cancel_queued(core: &Core, r: &RolloutRow, actor: &str) -> Result<()> {
    let n = core.store.rollout_cancel_queued(r.id, &r.name, actor).await?;
    if n > 0 {
        // The fronts hear it as an admin's cancel (nothing of it is delivered any more).
        core.events.publish(crate::events::Event::OperationsCancelled {
            operation: None,
            activity: None,
            device: None,
            count: n,
            actor: actor.to_string(),
        });
    }
    Ok(())
}

/// Send the devices that updated back to the version they had, where their type can go
/// back and an artifact of that version exists.
async fn roll_back(core: &Core, r: &RolloutRow, holder: &str) -> Result<()> {
    let artifact = core.store.artifact_by_key(r.artifact).await?.ok_or_else(|| Error::internal("artifact gone"))?;
    let spec = spec_of(r)?;
    let devices = core.store.rollout_succeeded(r.id, BATCH).await?;
    // One batch per previous artifact; devices with none are marked.
    let mut by_artifact: BTreeMap<i64, (ArtifactRow, Vec<Start>)> = BTreeMap::new();
    let mut unsupported = Vec::new();
    // The artifact to go back to, per (type, version): a few lookups for a whole fleet.
    let mut previous_of: std::collections::HashMap<(String, String), Option<ArtifactRow>> = Default::default();
    for (device, ty, from) in devices {
        let supports = core.registry.device_type(&ty).is_some_and(|p| {
            p.device_type_info().is_some_and(|i| i.operations.iter().any(|o| o.code == crate::artifacts::ROLLBACK_CODE))
        });
        let previous = match (&from, supports) {
            (Some(v), true) => match previous_of.get(&(ty.clone(), v.clone())) {
                Some(found) => found.clone(),
                None => {
                    let found = core.store.artifact_for_version(&artifact.name, v, &ty, r.tenant.as_deref()).await?;
                    previous_of.insert((ty.clone(), v.clone()), found.clone());
                    found
                }
            },
            _ => None,
        };
        let Some(previous) = previous else {
            let why = match (&from, supports) {
                (_, false) => format!("device type `{ty}` cannot go back (its plugin declares no FIRMWARE_ROLLBACK)"),
                (None, _) => "the version it had is unknown".to_string(),
                (Some(v), _) => format!("no artifact of version {v} for `{ty}` to go back to"),
            };
            unsupported.push(DeviceChange {
                device,
                state: "rollback_unsupported".into(),
                progress: None,
                reason: Some(why),
                finished: true,
            });
            continue;
        };
        let (token, token_hash) = crate::artifacts::new_grant();
        let payload = crate::artifacts::update_payload(&core.public_url, &previous, &token);
        let entry = by_artifact.entry(previous.id).or_insert_with(|| (previous.clone(), Vec::new()));
        entry.1.push(Start { device, payload, token_hash, from_version: None });
    }
    core.store.update_rollout_devices(r.id, &unsupported).await?;
    let actor = format!("rollout:{}", r.name);
    let expires_at = crate::store::now_ms() + spec.device_timeout_secs as i64 * 1000 + 60_000;
    for (id, (_, starts)) in by_artifact {
        let batch = StartBatch {
            rollout: r.id,
            holder,
            code: crate::artifacts::ROLLBACK_CODE,
            kind: "command",
            actor: &actor,
            artifact: id,
            expires_at,
            devices: &starts,
            skipped: &[],
            state: "rolling_back",
        };
        if let Some(activity) = core.store.start_rollout_devices(&batch).await? {
            core.events.publish(crate::events::Event::ActivityAdded {
                activity,
                code: crate::artifacts::ROLLBACK_CODE.into(),
                operations: starts.len() as u64,
                actor: actor.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(pairs: &[(&str, i64)]) -> Tally {
        let mut t = Tally::default();
        for (s, n) in pairs {
            t.add(s, *n);
        }
        t
    }

    fn spec(abort: Abort) -> Spec {
        serde_json::from_value::<Spec>(serde_json::json!({
            "name": "r", "artifact": {"name": "fw", "version": "2"}, "targets": {"tags": ["x"]},
            "phases": [{"percent": 10}, {"percent": 100}]
        }))
        .map(|mut s| {
            s.abort = abort;
            s
        })
        .unwrap()
    }

    #[test]
    fn abort_waits_for_enough_finished_devices() {
        let s = spec(Abort { failure_ratio: 0.5, min_finished: 4, max_timeouts: None });
        // 1 of 1 failed, 9 more in the phase: too early to judge.
        let p = tally(&[("failed", 1), ("pending", 9)]);
        assert_eq!(abort_reason(&s, &p, &p, 0), None);
        let p = tally(&[("failed", 2), ("succeeded", 2), ("pending", 6)]);
        assert!(abort_reason(&s, &p, &p, 0).unwrap().contains("2 of 4"));
        // A canary phase of 2, smaller than min_finished: judged when both finished.
        let p = tally(&[("failed", 1), ("succeeded", 1)]);
        assert!(abort_reason(&s, &p, &p, 0).is_some());
        let p = tally(&[("failed", 1), ("succeeded", 3)]);
        assert_eq!(abort_reason(&s, &p, &p, 0), None);
    }

    #[test]
    fn timeouts_count_as_failures_and_have_their_own_limit() {
        let s = spec(Abort { failure_ratio: 0.9, min_finished: 1, max_timeouts: Some(1) });
        let p = tally(&[("timed_out", 2), ("succeeded", 50)]);
        assert!(abort_reason(&s, &p, &p, 0).unwrap().contains("timed out"));
        assert_eq!(p.failed, 2);
    }

    #[test]
    fn rate_ramps_up_to_its_cap() {
        let r = Rate { per_minute: 10, increment_factor: 2.0, increase_every: 5, max_per_minute: Some(35) };
        assert_eq!(r.now(0), 10);
        assert_eq!(r.now(5), 20);
        assert_eq!(r.now(10), 35);
    }
}
