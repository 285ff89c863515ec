//! The analytics engine: every point a device reports, judged in memory against the rules
//! that apply to the device (`mod.rs` says why in memory and how rules reach it).
//!
//! State per device lives in one of [`SHARDS`] maps, each behind a plain mutex held only
//! while a message's points are judged (no await inside), so devices on different shards
//! never wait for each other. A panic while one is held leaves the state as it was (a
//! poisoned lock is taken over, not passed on to every later message). The state is what a rule needs to judge the next point:
//!
//! * a fence: whether the device is inside (hysteresis: it changes only past a margin);
//! * a threshold or speed limit: whether its alert is open, and since when the value has
//!   been past the limit (for a minimum duration);
//! * an anomaly rule: the metric's baseline (`anomaly.rs`) and whether its alert is open;
//! * the last position fix, for speed derived from consecutive fixes.
//!
//! What is open is also in the database (`alerts`, one open row per rule, device and
//! metric at most), and read back at start, so a restart raises no alert twice. Warm-up
//! and pending durations start over after a restart.

use super::anomaly::{Detector, Params, Verdict};
use super::geo::{self, Fix};
use super::{AppliesTo, Kind, RuleSpec, Trigger, alert_event, spec_of};
use crate::core::Core;
use crate::store::{DeviceRow, NewAlert, Point, TargetSet};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

/// Device state maps: enough that the ingestion workers rarely meet on one.
const SHARDS: usize = 64;

/// How long after a tag or group change the rules' devices are read again.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// The standard names of position telemetry (docs/plugin-contract.md): degrees, metres
/// and metres per second.
pub const LAT: &str = "location.lat";
pub const LON: &str = "location.lon";
pub const SPEED: &str = "location.speed";
pub const ACCURACY: &str = "location.accuracy";

/// The metric speed alerts are about.
pub const SPEED_METRIC: &str = "speed";

/// A rule as the engine uses it.
struct Live {
    id: i64,
    name: String,
    kind: Kind,
    types: Vec<String>,
    /// `None`: no groups, tags or devices named (any device of `types`).
    members: Option<HashSet<i64>>,
    /// A tenant's rule judges that tenant's devices only, whatever it applies to.
    tenant: Option<String>,
}

impl Live {
    fn applies(&self, device: &DeviceRow) -> bool {
        (self.types.is_empty() || self.types.contains(&device.device_type))
            && self.members.as_ref().is_none_or(|m| m.contains(&device.id))
            && self.tenant.as_ref().is_none_or(|t| *t == device.tenant)
    }
}

/// The enabled rules, indexed the way points look them up.
#[derive(Default)]
struct Compiled {
    rules: Vec<Live>,
    /// Threshold and anomaly rules by metric.
    by_metric: HashMap<String, Vec<usize>>,
    /// Geofence and speed rules.
    geo: Vec<usize>,
    ignores: Vec<usize>,
}

impl Compiled {
    fn ignored(&self, device: &DeviceRow, metric: &str) -> bool {
        self.ignores.iter().any(|&i| {
            let r = &self.rules[i];
            matches!(&r.kind, Kind::Ignore { metric: m } if m.as_deref().is_none_or(|m| m == metric))
                && r.applies(device)
        })
    }
}

/// A rule's condition for one device and metric.
#[derive(Debug, Default, Clone, Copy)]
struct Cond {
    open: bool,
    /// When the value first went past the limit (for `for_secs`).
    since: Option<i64>,
}

#[derive(Default)]
struct DeviceState {
    fix: Option<Fix>,
    /// By rule, then metric (`""` for a fence, `speed` for speed limits).
    conds: HashMap<i64, HashMap<String, Cond>>,
    /// Fences the device is inside (by rule): whether it is, once known.
    inside: HashMap<i64, bool>,
    detectors: HashMap<i64, HashMap<String, Detector>>,
}

impl DeviceState {
    fn cond(&mut self, rule: i64, metric: &str) -> &mut Cond {
        let m = self.conds.entry(rule).or_default();
        if !m.contains_key(metric) {
            m.insert(metric.to_string(), Cond::default());
        }
        m.get_mut(metric).expect("inserted")
    }
}

/// An alert to open or resolve.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Open(NewAlert),
    Resolve { rule: i64, metric: String, at: i64 },
}

/// The engine: rules and per-device state. One per server.
pub struct Analytics {
    compiled: RwLock<Arc<Compiled>>,
    shards: Vec<Mutex<HashMap<i64, DeviceState>>>,
    /// One reload at a time; and whether open alerts have been read back yet.
    reloading: tokio::sync::Mutex<bool>,
    /// Tags or groups changed on this replica: read memberships again soon.
    changed: tokio::sync::Notify,
}

impl Default for Analytics {
    fn default() -> Self {
        Analytics {
            compiled: RwLock::new(Arc::default()),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            reloading: tokio::sync::Mutex::new(false),
            changed: tokio::sync::Notify::new(),
        }
    }
}

/// Judge a value against a limit with hysteresis and a minimum duration; `Some(true)`:
/// open now, `Some(false)`: resolve now.
fn judge(
    c: &mut Cond,
    x: f64,
    at: i64,
    above: Option<f64>,
    below: Option<f64>,
    hysteresis: f64,
    for_ms: i64,
) -> Option<bool> {
    if c.open {
        let clear = above.is_none_or(|a| x <= a - hysteresis) && below.is_none_or(|b| x >= b + hysteresis);
        if clear {
            *c = Cond::default();
            return Some(false);
        }
        return None;
    }
    let past = above.is_some_and(|a| x > a) || below.is_some_and(|b| x < b);
    if !past {
        c.since = None;
        return None;
    }
    let since = *c.since.get_or_insert(at);
    if at - since >= for_ms {
        *c = Cond { open: true, since: None };
        Some(true)
    } else {
        None
    }
}

/// The position fixes among a message's points, oldest first: a latitude and longitude of
/// the same time, with the speed and accuracy of that time if reported.
fn fixes(points: &[Point]) -> Vec<Fix> {
    #[derive(Default)]
    struct Part {
        lat: Option<f64>,
        lon: Option<f64>,
        speed: Option<f64>,
        accuracy: Option<f64>,
    }
    let mut by_time: BTreeMap<i64, Part> = BTreeMap::new();
    for p in points {
        if !matches!(p.name.as_str(), LAT | LON | SPEED | ACCURACY) {
            continue;
        }
        let Some(x) = p.number().filter(|x| x.is_finite()) else { continue };
        let q = by_time.entry(p.at).or_default();
        let slot = match p.name.as_str() {
            LAT => &mut q.lat,
            LON => &mut q.lon,
            SPEED => &mut q.speed,
            _ => &mut q.accuracy,
        };
        *slot = Some(x);
    }
    by_time
        .into_iter()
        .filter_map(|(at, q)| {
            let (lat, lon) = (q.lat?, q.lon?);
            ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some(Fix {
                lat,
                lon,
                at,
                accuracy: q.accuracy.filter(|a| *a >= 0.0),
                speed: q.speed.filter(|s| *s >= 0.0),
            })
        })
        .collect()
}

impl Analytics {
    /// Judge a device's points; the alerts to open and resolve.
    pub fn observe(&self, device: &DeviceRow, points: &[Point]) -> Vec<Change> {
        let compiled = self.compiled.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if compiled.rules.is_empty() {
            return Vec::new();
        }
        let mut changes = Vec::new();
        let mut shard = self.shards[device.id.rem_euclid(SHARDS as i64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let st = shard.entry(device.id).or_default();
        let open = |r: &Live, metric: &str, at: i64, value: Option<f64>, detail: serde_json::Value| {
            let mut detail = detail;
            detail["device"] = format!("{}/{}", device.device_type, device.device_id).into();
            Change::Open(NewAlert {
                rule: r.id,
                rule_name: r.name.clone(),
                kind: r.kind.name(),
                device: device.id,
                metric: metric.to_string(),
                at,
                value,
                detail: detail.to_string(),
            })
        };
        let resolve = |r: &Live, metric: &str, at: i64| Change::Resolve { rule: r.id, metric: metric.to_string(), at };

        for p in points {
            let Some(idxs) = compiled.by_metric.get(&p.name) else { continue };
            let Some(x) = p.number().filter(|x| x.is_finite()) else { continue };
            for &i in idxs {
                let r = &compiled.rules[i];
                if !r.applies(device) {
                    continue;
                }
                match &r.kind {
                    Kind::Threshold { above, below, hysteresis, for_secs, .. } => {
                        let c = st.cond(r.id, &p.name);
                        match judge(c, x, p.at, *above, *below, *hysteresis, *for_secs as i64 * 1000) {
                            Some(true) => changes.push(open(
                                r,
                                &p.name,
                                p.at,
                                Some(x),
                                serde_json::json!({ "above": above, "below": below }),
                            )),
                            Some(false) => changes.push(resolve(r, &p.name, p.at)),
                            None => {}
                        }
                    }
                    Kind::Anomaly { window, warmup, sensitivity, min_change, shift_after, .. } => {
                        if compiled.ignored(device, &p.name) {
                            continue;
                        }
                        let params = Params {
                            window: *window,
                            warmup: *warmup,
                            sensitivity: *sensitivity,
                            min_change: *min_change,
                            shift_after: *shift_after,
                        };
                        let d = st.detectors.entry(r.id).or_default();
                        let verdict = match d.get_mut(&p.name) {
                            Some(d) => d.step(x, &params),
                            None => d.entry(p.name.clone()).or_default().step(x, &params),
                        };
                        let c = st.cond(r.id, &p.name);
                        match verdict {
                            Verdict::Spike { mean, sd, z } | Verdict::Dip { mean, sd, z } if !c.open => {
                                c.open = true;
                                let what = if matches!(verdict, Verdict::Spike { .. }) { "spike" } else { "dip" };
                                changes.push(open(
                                    r,
                                    &p.name,
                                    p.at,
                                    Some(x),
                                    serde_json::json!({ "anomaly": what, "baseline": mean, "sd": sd,
                                        "z": if z.is_finite() { Some(z) } else { None } }),
                                ));
                            }
                            Verdict::Normal if c.open => {
                                c.open = false;
                                changes.push(resolve(r, &p.name, p.at));
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
        }

        if !compiled.geo.is_empty() {
            for fix in fixes(points) {
                // A fix older than the last one judged is history: it moves nothing.
                if st.fix.is_some_and(|f| fix.at <= f.at) {
                    continue;
                }
                let speed = geo::speed_kmh(st.fix.as_ref(), &fix);
                for &i in &compiled.geo {
                    let r = &compiled.rules[i];
                    if !r.applies(device) {
                        continue;
                    }
                    match &r.kind {
                        Kind::Geofence { shape, trigger, hysteresis_m, speed_limit_kmh } => {
                            let s = shape.signed_distance_m(fix.lat, fix.lon);
                            let margin = hysteresis_m.max(fix.accuracy.unwrap_or(0.0));
                            let was = *st.inside.entry(r.id).or_insert(*trigger == Trigger::Exit);
                            let now = if was { s < margin } else { s <= -margin };
                            st.inside.insert(r.id, now);
                            if now != was {
                                let alerting = now == (*trigger == Trigger::Enter);
                                let detail = serde_json::json!({
                                    "crossing": if now { "enter" } else { "exit" },
                                    "lat": fix.lat, "lon": fix.lon, "distance_m": s,
                                });
                                st.cond(r.id, "").open = alerting;
                                changes.push(if alerting {
                                    open(r, "", fix.at, None, detail)
                                } else {
                                    resolve(r, "", fix.at)
                                });
                            }
                            if let Some(limit) = speed_limit_kmh {
                                let c = st.cond(r.id, SPEED_METRIC);
                                if !now {
                                    if c.open {
                                        *c = Cond::default();
                                        changes.push(resolve(r, SPEED_METRIC, fix.at));
                                    }
                                    c.since = None;
                                } else if let Some(v) = speed {
                                    match judge(c, v, fix.at, Some(*limit), None, super::default_speed_hysteresis(), 0)
                                    {
                                        Some(true) => changes.push(open(
                                            r,
                                            SPEED_METRIC,
                                            fix.at,
                                            Some(v),
                                            serde_json::json!({ "limit_kmh": limit, "lat": fix.lat, "lon": fix.lon,
                                                "reported": fix.speed.is_some() }),
                                        )),
                                        Some(false) => changes.push(resolve(r, SPEED_METRIC, fix.at)),
                                        None => {}
                                    }
                                }
                            }
                        }
                        Kind::Speed { limit_kmh, hysteresis_kmh, for_secs } => {
                            let Some(v) = speed else { continue };
                            let c = st.cond(r.id, SPEED_METRIC);
                            match judge(c, v, fix.at, Some(*limit_kmh), None, *hysteresis_kmh, *for_secs as i64 * 1000)
                            {
                                Some(true) => changes.push(open(
                                    r,
                                    SPEED_METRIC,
                                    fix.at,
                                    Some(v),
                                    serde_json::json!({ "limit_kmh": limit_kmh, "lat": fix.lat, "lon": fix.lon,
                                        "reported": fix.speed.is_some() }),
                                )),
                                Some(false) => changes.push(resolve(r, SPEED_METRIC, fix.at)),
                                None => {}
                            }
                        }
                        _ => {}
                    }
                }
                st.fix = Some(fix);
            }
        }
        changes
    }

    /// Read the rules again and resolve which devices each applies to; the first time,
    /// also read back which alerts are open.
    pub async fn reload(&self, core: &Core) {
        let mut seeded = self.reloading.lock().await;
        match compile(core).await {
            Ok(c) => {
                *self.compiled.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(c);
            }
            Err(e) => {
                tracing::warn!("reading alert rules failed (the previous ones stay): {e}");
                return;
            }
        }
        if !*seeded {
            match core.store.open_alerts().await {
                Ok(open) => {
                    let compiled = self.compiled.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                    for a in open {
                        let mut shard = self.shards[a.device.rem_euclid(SHARDS as i64) as usize]
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let st = shard.entry(a.device).or_default();
                        st.cond(a.rule, &a.metric).open = true;
                        if let Some(Kind::Geofence { trigger, .. }) =
                            compiled.rules.iter().find(|r| r.id == a.rule).map(|r| &r.kind)
                            && a.metric.is_empty()
                        {
                            st.inside.insert(a.rule, *trigger == Trigger::Enter);
                        }
                    }
                    *seeded = true;
                }
                Err(e) => tracing::warn!("reading open alerts failed (tried again at the next refresh): {e}"),
            }
        }
    }

    /// Forget what the engine holds of a device (it was removed).
    pub fn forget(&self, device: i64) {
        self.shards[device.rem_euclid(SHARDS as i64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&device);
    }

    /// Tags or group members changed on this replica: the rules' devices are read again
    /// within [`SETTLE`] (changes in a burst, a CSV import, are read once).
    pub fn membership_changed(&self) {
        self.changed.notify_one();
    }

    /// Read the rules again every [`super::REFRESH`] (rule changes another replica
    /// made, devices whose metadata moved them into a dynamic group) and soon after
    /// [`Self::membership_changed`], for as long as the server runs.
    pub fn spawn_refresh(core: Core) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(super::REFRESH);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = core.analytics.changed.notified() => tokio::time::sleep(SETTLE).await,
                }
                core.analytics.reload(&core).await;
            }
        })
    }
}

/// The enabled rules with the devices each applies to.
async fn compile(core: &Core) -> crate::error::Result<Compiled> {
    let mut c = Compiled::default();
    for row in core.store.rules().await? {
        if row.enabled == 0 {
            continue;
        }
        let Some(RuleSpec { applies_to, kind, .. }) = spec_of(&row) else {
            tracing::warn!(rule = %row.name, "alert rule unreadable: skipped");
            continue;
        };
        let tenant = row.tenant.as_deref();
        let members = if applies_to.has_members() { Some(members(core, &applies_to, tenant).await?) } else { None };
        let i = c.rules.len();
        match &kind {
            Kind::Threshold { metric, .. } | Kind::Anomaly { metric, .. } => {
                c.by_metric.entry(metric.clone()).or_default().push(i)
            }
            Kind::Geofence { .. } | Kind::Speed { .. } => c.geo.push(i),
            Kind::Ignore { .. } => c.ignores.push(i),
        }
        let tenant = row.tenant.clone();
        c.rules.push(Live { id: row.id, name: row.name, kind, types: applies_to.device_types, members, tenant });
    }
    Ok(c)
}

/// The keys of the devices in a rule's groups, tags and device list (unknown groups and
/// devices select nothing); a tenant's rule's groups are its tenant's, and its members
/// the tenant's devices.
async fn members(core: &Core, a: &AppliesTo, tenant: Option<&str>) -> crate::error::Result<HashSet<i64>> {
    let within = tenant.map(crate::scope::Reach::tenant);
    let mut t = TargetSet { tags: a.tags.clone(), within, ..Default::default() };
    crate::operations::add_groups(core, &mut t, &a.groups, tenant).await?;
    for d in &a.devices {
        if let Some((ty, id)) = d.split_once('/')
            && let Some(row) = core.store.device(ty, id).await?
        {
            t.devices.push(row.id);
        }
    }
    if t.devices.is_empty() && t.groups.is_empty() && t.tags.is_empty() && t.queries.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(core.store.target_keys(&t).await?.into_iter().collect())
}

/// Judge a device's points and write what opened and resolved, each with its event. An
/// alert that another replica (or an earlier message) already opened or resolved is not
/// written twice. Failures are logged: the points are stored either way.
pub async fn observe(core: &Core, device: &DeviceRow, points: &[Point]) {
    let changes = core.analytics.observe(device, points);
    for c in changes {
        let written = match &c {
            Change::Open(a) => core.store.open_alert(a, alert_event).await.map(|_| ()),
            Change::Resolve { rule, metric, at } => {
                core.store.resolve_alert(*rule, device.id, metric, *at, "cleared", alert_event).await.map(|_| ())
            }
        };
        if let Err(e) = written {
            tracing::warn!(device_type = %device.device_type, device_id = %device.device_id, "writing an alert failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_waits_its_duration_and_clears_with_hysteresis() {
        let mut c = Cond::default();
        let j = |c: &mut Cond, x, at| judge(c, x, at, Some(80.0), None, 5.0, 10_000);
        assert_eq!(j(&mut c, 85.0, 0), None, "past the limit, not for long enough");
        assert_eq!(j(&mut c, 79.0, 5_000), None, "back under: the wait starts over");
        assert_eq!(j(&mut c, 85.0, 6_000), None);
        assert_eq!(j(&mut c, 90.0, 16_000), Some(true));
        assert_eq!(j(&mut c, 78.0, 17_000), None, "inside the hysteresis band: still open");
        assert_eq!(j(&mut c, 74.0, 18_000), Some(false));
        let mut d = Cond::default();
        assert_eq!(judge(&mut d, 5.0, 0, None, Some(10.0), 0.0, 0), Some(true), "below, at once");
    }

    #[test]
    fn fixes_pair_latitude_and_longitude_of_one_time() {
        let p = |n: &str, at, v: f64| Point { name: n.into(), at, value: v.into() };
        let f = fixes(&[
            p(LAT, 2, 1.0),
            p(LON, 2, 2.0),
            p(SPEED, 2, 3.0),
            p(LAT, 1, 9.0),
            p(LON, 3, 4.0),
            p(LAT, 4, 95.0),
            p(LON, 4, 0.0),
        ]);
        assert_eq!(f, [Fix { lat: 1.0, lon: 2.0, at: 2, accuracy: None, speed: Some(3.0) }]);
    }
}
