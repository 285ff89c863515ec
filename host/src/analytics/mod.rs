//! Telemetry analytics (docs/analytics.md): rollups and group metrics are the store's
//! (written with the points); this module holds the alert rules (geo-fences, speed
//! limits, thresholds, anomaly detectors and what they ignore), judges every point a
//! device reports against the rules that apply to it, and opens and resolves alerts.
//!
//! Evaluation happens in memory in the ingestion path, O(1) per point per rule: a rule's
//! state per device (inside a fence or not, how long a threshold has been crossed, an
//! anomaly baseline) is a few numbers in [`engine`]. Which devices a rule applies to is
//! resolved to a set of keys when rules change, soon after tags and groups change, and
//! every [`REFRESH`], so judging a point never
//! reads the database. Only an alert that opens or resolves is written, with its event.
//! Tag and group changes made on this replica are read within [`engine::SETTLE`]; other
//! replicas' rule changes, and devices whose reported metadata moves them into a dynamic
//! group, within [`REFRESH`].

pub mod anomaly;
pub mod engine;
pub mod geo;
pub mod synthetic;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::store::{AlertRow, NewEvent, RuleRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use engine::Analytics;

/// How often rules and their devices are read again (rule changes on this replica are
/// read at once).
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// Which devices a rule applies to: those of `device_types` (any type when empty) that
/// are in any of `groups`, `tags` or `devices` (every device when all three are empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleAppliesTo)]
pub struct AppliesTo {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_types: Vec<String>,
    /// Static or dynamic groups, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = crate::store::tag_list_schema)]
    pub tags: Vec<String>,
    /// Devices as `type/id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

impl AppliesTo {
    /// Whether a set of device keys is needed (not just types).
    pub fn has_members(&self) -> bool {
        !(self.groups.is_empty() && self.tags.is_empty() && self.devices.is_empty())
    }
}

/// Which crossing of a fence opens its alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = GeofenceTrigger)]
pub enum Trigger {
    /// Alert while the device is inside (a keep-out zone, or a place to know arrivals at).
    #[default]
    Enter,
    /// Alert while it is outside (a keep-in zone: a depot, a site).
    Exit,
}

fn default_hysteresis_m() -> f64 {
    25.0
}
fn default_speed_hysteresis() -> f64 {
    5.0
}
fn default_window() -> u32 {
    anomaly::Params::default().window
}
fn default_warmup() -> u32 {
    anomaly::Params::default().warmup
}
fn default_sensitivity() -> f64 {
    anomaly::Params::default().sensitivity
}
fn default_shift_after() -> u32 {
    anomaly::Params::default().shift_after
}
fn yes() -> bool {
    true
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[schema(as = AlertRuleKind)]
pub enum Kind {
    /// A geo-fence: an alert opens when a device crosses into it (`trigger: enter`) or out
    /// of it (`exit`) and resolves at the opposite crossing. A crossing counts only once
    /// the fix is `hysteresis_m` (or its own accuracy, if larger) past the boundary, so a
    /// noisy fix near it does not flap. With `speed_limit_kmh`, a device inside faster
    /// than that raises a speed alert.
    Geofence {
        shape: geo::Shape,
        #[serde(default)]
        trigger: Trigger,
        #[serde(default = "default_hysteresis_m")]
        hysteresis_m: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speed_limit_kmh: Option<f64>,
    },
    /// A speed limit: from the speed a device reports (`location.speed`, m/s) or else
    /// derived from its consecutive positions. Resolves below `limit_kmh - hysteresis_kmh`.
    Speed {
        limit_kmh: f64,
        #[serde(default = "default_speed_hysteresis")]
        hysteresis_kmh: f64,
        /// Seconds the limit must be exceeded before the alert opens.
        #[serde(default)]
        for_secs: u64,
    },
    /// A threshold on a numeric metric: `above` or `below` (one of them) for `for_secs`
    /// opens the alert; it resolves once the value is back by `hysteresis`.
    Threshold {
        metric: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        above: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        below: Option<f64>,
        #[serde(default)]
        hysteresis: f64,
        #[serde(default)]
        for_secs: u64,
    },
    /// Spike and dip detection on a metric, against each device's learned baseline
    /// (`anomaly.rs`). Resolves at the next point within the baseline's band.
    Anomaly {
        metric: String,
        /// Points the baseline averages over.
        #[serde(default = "default_window")]
        window: u32,
        /// Points learned before the first verdict.
        #[serde(default = "default_warmup")]
        warmup: u32,
        /// Standard deviations from the baseline that make an anomaly.
        #[serde(default = "default_sensitivity")]
        sensitivity: f64,
        /// The least deviation that is an anomaly, in the metric's unit.
        #[serde(default)]
        min_change: f64,
        /// Anomalies in a row after which the new level is the baseline.
        #[serde(default = "default_shift_after")]
        shift_after: u32,
    },
    /// No anomaly alerts for the devices it applies to: on `metric`, or on every metric.
    Ignore {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metric: Option<String>,
    },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Geofence { .. } => "geofence",
            Kind::Speed { .. } => "speed",
            Kind::Threshold { .. } => "threshold",
            Kind::Anomaly { .. } => "anomaly",
            Kind::Ignore { .. } => "ignore",
        }
    }

    /// What is wrong with it, if anything.
    fn problem(&self) -> Option<String> {
        let finite = |what: &str, v: f64| (!v.is_finite()).then(|| format!("{what} must be a finite number"));
        let metric_problem = |m: &str| {
            (m.is_empty() || m.len() > 128 || m.chars().any(char::is_control))
                .then(|| format!("metric `{m}` must be 1 to 128 printable characters"))
        };
        const WEEK_SECS: u64 = 7 * 24 * 3600;
        match self {
            Kind::Geofence { shape, hysteresis_m, speed_limit_kmh, .. } => shape
                .problem()
                .or_else(|| {
                    (!(0.0..=10_000.0).contains(hysteresis_m)).then(|| "hysteresis_m must be 0 to 10,000".into())
                })
                .or_else(|| {
                    speed_limit_kmh.and_then(|l| {
                        (!(l > 0.0 && l <= 2000.0)).then(|| "speed_limit_kmh must be above 0 and at most 2,000".into())
                    })
                }),
            Kind::Speed { limit_kmh, hysteresis_kmh, for_secs } => (!(*limit_kmh > 0.0 && *limit_kmh <= 2000.0))
                .then(|| "limit_kmh must be above 0 and at most 2,000".to_string())
                .or_else(|| {
                    (!(0.0..*limit_kmh).contains(hysteresis_kmh))
                        .then(|| "hysteresis_kmh must be 0 or more and below limit_kmh".into())
                })
                .or_else(|| (*for_secs > WEEK_SECS).then(|| "for_secs may be at most a week (604800)".into())),
            Kind::Threshold { metric, above, below, hysteresis, for_secs } => metric_problem(metric)
                .or_else(|| match (above, below) {
                    (Some(_), Some(_)) | (None, None) => Some("a threshold has one of `above` or `below`".into()),
                    (Some(v), None) | (None, Some(v)) => finite("the threshold", *v),
                })
                .or_else(|| {
                    (!(hysteresis.is_finite() && *hysteresis >= 0.0)).then(|| "hysteresis must be 0 or more".into())
                })
                .or_else(|| (*for_secs > WEEK_SECS).then(|| "for_secs may be at most a week (604800)".into())),
            Kind::Anomaly { metric, window, warmup, sensitivity, min_change, shift_after } => metric_problem(metric)
                .or_else(|| (!(2..=10_000).contains(window)).then(|| "window must be 2 to 10,000 points".into()))
                .or_else(|| (!(1..=100_000).contains(warmup)).then(|| "warmup must be 1 to 100,000 points".into()))
                .or_else(|| {
                    (!(*sensitivity > 0.0 && *sensitivity <= 100.0))
                        .then(|| "sensitivity must be above 0 and at most 100".into())
                })
                .or_else(|| {
                    (!(min_change.is_finite() && *min_change >= 0.0)).then(|| "min_change must be 0 or more".into())
                })
                .or_else(|| (!(1..=1000).contains(shift_after)).then(|| "shift_after must be 1 to 1,000".into())),
            Kind::Ignore { metric } => metric.as_deref().and_then(metric_problem),
        }
    }
}

/// An alert rule as the API takes and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = AlertRuleSpec)]
pub struct RuleSpec {
    /// Letters, digits, `.`, `_`, `-`; 1 to 64.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(max_length = 1024)]
    pub description: String,
    /// A disabled rule judges nothing and opens no alerts (its open alerts stay until
    /// removed or resolved by an admin).
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub applies_to: AppliesTo,
    #[serde(flatten)]
    pub kind: Kind,
}

/// Fields a rule of `kind` may have (serde's `flatten` cannot refuse unknown ones).
fn known_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "geofence" => &["shape", "trigger", "hysteresis_m", "speed_limit_kmh"],
        "speed" => &["limit_kmh", "hysteresis_kmh", "for_secs"],
        "threshold" => &["metric", "above", "below", "hysteresis", "for_secs"],
        "anomaly" => &["metric", "window", "warmup", "sensitivity", "min_change", "shift_after"],
        "ignore" => &["metric"],
        _ => &[],
    }
}

impl RuleSpec {
    /// Parse and check a rule: a clear error naming the field for anything wrong.
    pub fn parse(v: serde_json::Value) -> Result<RuleSpec> {
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        if let Some(obj) = v.as_object() {
            let common = ["name", "description", "enabled", "applies_to", "kind"];
            if let Some(k) =
                obj.keys().find(|k| !common.contains(&k.as_str()) && !known_fields(&kind).contains(&k.as_str()))
            {
                return Err(Error::invalid("invalid", format!("unknown field `{k}` for a rule of kind `{kind}`")));
            }
        }
        let spec: RuleSpec =
            serde_json::from_value(v).map_err(|e| Error::invalid("invalid", format!("alert rule: {e}")))?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(Error::invalid(
                "invalid",
                format!("rule name `{}`: use 1 to 64 letters, digits, `.`, `_`, `-`", self.name),
            ));
        }
        if self.description.len() > 1024 {
            return Err(Error::invalid("invalid", "description: at most 1024 bytes"));
        }
        if let Some(p) = self.applies_to.tags.iter().find_map(|t| crate::store::tag_problem(t)) {
            return Err(Error::invalid("invalid", format!("applies_to.tags: {p}")));
        }
        if let Some(d) =
            self.applies_to.devices.iter().find(|d| d.split_once('/').is_none_or(|(t, i)| t.is_empty() || i.is_empty()))
        {
            return Err(Error::invalid("invalid", format!("applies_to.devices: `{d}` is not `type/id`")));
        }
        if self.applies_to.devices.len() > crate::store::MAX_EXPLICIT_DEVICES {
            return Err(Error::invalid("too_many_devices", "applies_to.devices: list at most 10,000, or use a group"));
        }
        match self.kind.problem() {
            Some(p) => Err(Error::invalid("invalid", format!("{} rule `{}`: {p}", self.kind.name(), self.name))),
            None => Ok(()),
        }
    }
}

/// What a rule (as the API shows it, JSON) applies to, in a few words, for the console
/// and the CLI: `tag vans, type android`, or `every device`.
pub fn scope_text(rule: &serde_json::Value) -> String {
    let a = &rule["applies_to"];
    let mut parts = Vec::new();
    for (k, label) in [("device_types", "type"), ("groups", "group"), ("tags", "tag"), ("devices", "device")] {
        for v in a[k].as_array().into_iter().flatten() {
            parts.push(format!("{label} {}", v.as_str().unwrap_or("-")));
        }
    }
    if parts.is_empty() { "every device".into() } else { parts.join(", ") }
}

/// The actor of alerts: the analytics engine.
pub const ACTOR: &str = "analytics";

/// An alert rule's event (`alert_rule.changed`): `change` is `created`, `updated` or
/// `removed`. A tenant's rule's is the tenant's too (its callers read it).
fn rule_event(name: &str, kind: &str, change: &str, actor: &str, tenant: Option<&str>) -> NewEvent {
    NewEvent {
        event_type: "alert_rule.changed".into(),
        actor: Some(actor.into()),
        target: Some(format!("alert-rule/{name}")),
        data: Some(serde_json::json!({ "rule": name, "kind": kind, "change": change }).to_string()),
        tenant: tenant.map(str::to_string),
        ..Default::default()
    }
}

/// An alert's event: `alert.opened` or `alert.resolved`. The device's name is in the
/// alert's detail (the engine puts it there).
pub fn alert_event(a: &AlertRow) -> NewEvent {
    let opened = a.state == "open";
    let detail: serde_json::Value = serde_json::from_str(&a.detail).unwrap_or_default();
    NewEvent {
        event_type: if opened { "alert.opened" } else { "alert.resolved" }.into(),
        actor: Some(ACTOR.into()),
        target: Some(format!("alert/{}", a.id)),
        data: Some(
            serde_json::json!({
                "alert": a.id, "rule": a.rule_name, "kind": a.kind, "metric": a.metric,
                "device": detail.get("device"),
                "value": a.value, "detail": detail, "resolution": a.resolution,
            })
            .to_string(),
        ),
        device: Some(a.device),
        ..Default::default()
    }
}

/// Check a rule against what exists (its groups), store it with its event, and have the
/// engine read rules again. A rule of `tenant` is named `TENANT/NAME` (`tenants::qualified`),
/// names the tenant's groups, and judges the tenant's devices only.
pub async fn create_rule(core: &Core, spec: &RuleSpec, actor: &str, tenant: Option<&str>) -> Result<RuleRow> {
    known_groups(core, spec, tenant).await?;
    let mut spec = spec.clone();
    spec.name = crate::tenants::qualified(tenant, &spec.name);
    let text = serde_json::to_string(&spec).map_err(|e| Error::internal(e.to_string()))?;
    let new = crate::store::NewRule {
        name: &spec.name,
        kind: spec.kind.name(),
        spec: &text,
        enabled: spec.enabled,
        actor,
        tenant,
    };
    let row = core.store.insert_rule(&new, &rule_event(&spec.name, spec.kind.name(), "created", actor, tenant)).await?;
    core.analytics.reload(core).await;
    Ok(row)
}

/// Replace rule `old` (same name, same kind; `spec.name` is its stored name).
pub async fn update_rule(core: &Core, old: &RuleRow, spec: &RuleSpec, actor: &str) -> Result<RuleRow> {
    let tenant = old.tenant.as_deref();
    known_groups(core, spec, tenant).await?;
    if old.kind != spec.kind.name() {
        return Err(Error::invalid(
            "invalid",
            format!(
                "rule `{}` is a {} rule; remove it to make a {} rule of that name",
                spec.name,
                old.kind,
                spec.kind.name()
            ),
        ));
    }
    let row = core
        .store
        .update_rule(
            &spec.name,
            &serde_json::to_string(spec).map_err(|e| Error::internal(e.to_string()))?,
            spec.enabled,
            &rule_event(&spec.name, spec.kind.name(), "updated", actor, tenant),
        )
        .await?
        .ok_or_else(|| not_found(&spec.name))?;
    core.analytics.reload(core).await;
    Ok(row)
}

/// Remove rule `old`; its open alerts resolve (`rule-removed`). Returns how many.
pub async fn delete_rule(core: &Core, old: &RuleRow, actor: &str) -> Result<usize> {
    let name = &old.name;
    let (_, resolved) = core
        .store
        .delete_rule(name, &rule_event(name, &old.kind, "removed", actor, old.tenant.as_deref()), alert_event)
        .await?
        .ok_or_else(|| not_found(name))?;
    core.analytics.reload(core).await;
    Ok(resolved.len())
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!("alert rule `{name}` does not exist"))
}

async fn known_groups(core: &Core, spec: &RuleSpec, tenant: Option<&str>) -> Result<()> {
    for g in &spec.applies_to.groups {
        if crate::groups::find(&core.store, tenant, g).await?.is_none() {
            return Err(Error::invalid("unknown_group", format!("applies_to.groups: group `{g}` does not exist")));
        }
    }
    Ok(())
}

/// A device left management: its open alerts resolve (`device-removed`) and the engine
/// forgets it. Failures are logged (the removal itself has happened).
pub async fn device_removed(core: &Core, device: i64) {
    core.analytics.forget(device);
    if let Err(e) = core.store.resolve_device_alerts(device, "device-removed", alert_event).await {
        tracing::warn!(device, "resolving a removed device's alerts failed: {e}");
    }
}

/// A stored rule's spec (as it was checked when saved).
pub fn spec_of(row: &RuleRow) -> Option<RuleSpec> {
    serde_json::from_str(&row.spec).ok()
}

/// Resolve an open alert by hand (an admin saw to it). The engine still holds the
/// condition as ongoing, so the alert opens again only once the condition has ended and
/// starts again (not at the next point).
pub async fn resolve_by_admin(core: &Core, alert: &AlertRow, actor: &str) -> Result<Option<AlertRow>> {
    Ok(core
        .store
        .resolve_alert(alert.rule, alert.device, &alert.metric, crate::store::now_ms(), "admin", |a| NewEvent {
            actor: Some(actor.into()),
            ..alert_event(a)
        })
        .await?)
}
