//! Telemetry analytics over the admin API (docs/analytics.md): a device's series at a
//! resolution, a metric over a group, tag or device type, alert rules, and alerts.
//!
//! Series, metrics and alerts are about devices: a scoped or tenant's caller reads those
//! of the devices it reaches only (another's device is 404, and counts for nothing in a
//! metric). Alert rules belong to the operators or to a tenant (named `TENANT/NAME`,
//! judging its devices only); a tenant's callers see and manage their tenant's only
//! (docs/security.md, "Tenants").

use super::api::{DEFAULT_PAGE, Errors, MAX_PAGE, next_after};
use super::devices::{device_for, group_or_404, in_reach};
use super::{Admin, ApiError, AppState, Path, Query, ScopedOperator, ScopedViewer, TenantOperator, TenantViewer};
use crate::analytics::{self, RuleSpec};
use crate::store::{AlertFilter, AlertRow, Bucket, GroupBucket, MetricScope, RuleRow};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Resolution of a series.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    Minute,
    #[default]
    Hour,
}

impl Resolution {
    pub fn level(self) -> &'static str {
        match self {
            Resolution::Minute => "minute",
            Resolution::Hour => "hour",
        }
    }
    fn width_ms(self) -> i64 {
        crate::store::ROLLUP_LEVELS.iter().find(|(l, _)| *l == self.level()).map_or(3_600_000, |(_, w)| *w)
    }
}

/// Most buckets one series answer holds (a week of minutes is 10,080).
pub const MAX_BUCKETS: i64 = 20_000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SeriesQuery {
    /// The metric, e.g. `battery`.
    #[param(min_length = 1, max_length = 128)]
    name: String,
    /// `minute` or `hour` (default).
    #[serde(default)]
    #[param(inline)]
    resolution: Resolution,
    /// Buckets starting at or after this time (ms since the epoch; default: `to` less 24
    /// hours at `hour`, 2 hours at `minute`).
    #[param(minimum = 0)]
    from: Option<i64>,
    /// Buckets starting before this time (default: now).
    #[param(minimum = 0)]
    to: Option<i64>,
}

/// The time range of a query, checked.
fn range(name: &str, resolution: Resolution, from: Option<i64>, to: Option<i64>) -> Result<(i64, i64), ApiError> {
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::bad_request("invalid", "`name`: the metric's name, 1 to 128 characters"));
    }
    // Times are ms since the epoch, never negative: with them, `to - from` could not
    // overflow (an admin's `from=-9223372036854775808` panicked a debug build).
    if let Some(t) = from.into_iter().chain(to).find(|t| *t < 0) {
        return Err(ApiError::bad_request("invalid", format!("`from` and `to` are ms since the epoch, not {t}")));
    }
    let to = to.unwrap_or_else(|| crate::store::now_ms() + 1);
    let span = if resolution == Resolution::Hour { 24 * 3_600_000 } else { 2 * 3_600_000 };
    let from = from.unwrap_or(to.saturating_sub(span).max(0));
    if from >= to {
        return Err(ApiError::bad_request("invalid", format!("`from` ({from}) must be before `to` ({to})")));
    }
    if (to - from) / resolution.width_ms() > MAX_BUCKETS {
        return Err(ApiError::bad_request(
            "invalid",
            format!("the range spans more than {MAX_BUCKETS} {} buckets: narrow it or use `hour`", resolution.level()),
        ));
    }
    Ok((from, to))
}

#[derive(Serialize, ToSchema)]
#[schema(as = TelemetrySeries)]
pub(super) struct Series {
    name: String,
    resolution: Resolution,
    from: i64,
    to: i64,
    /// Oldest first; buckets without points are left out.
    buckets: Vec<Bucket>,
}

/// A device's metric at a resolution: count, min, max, mean and last per bucket, from
/// the rollups (kept longer than raw points).
#[utoipa::path(get, path = "/api/v1/devices/{device_type}/{device_id}/telemetry/series", tag = "analytics",
    params(("device_type" = String, Path), ("device_id" = String, Path), SeriesQuery),
    responses((status = 200, body = Series), Errors))]
pub(super) async fn device_series(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Path((t, id)): Path<(String, String)>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<Series>, ApiError> {
    let d = device_for(&state, &admin, &t, &id).await?;
    let (from, to) = range(&q.name, q.resolution, q.from, q.to)?;
    let buckets = state.store.series(d.id, &q.name, q.resolution.level(), from, to).await?;
    Ok(Json(Series { name: q.name, resolution: q.resolution, from, to, buckets }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct MetricQuery {
    /// The metric, e.g. `battery`.
    #[param(min_length = 1, max_length = 128)]
    name: String,
    /// `minute` or `hour` (default).
    #[serde(default)]
    #[param(inline)]
    resolution: Resolution,
    #[param(minimum = 0)]
    from: Option<i64>,
    #[param(minimum = 0)]
    to: Option<i64>,
    /// Devices of this group (static or dynamic).
    group: Option<String>,
    /// Devices with this tag.
    tag: Option<String>,
    /// Devices of this type. With `group` or `tag`, those of them of this type.
    device_type: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = GroupMetric)]
pub(super) struct Metric {
    name: String,
    resolution: Resolution,
    from: i64,
    to: i64,
    /// Oldest first; buckets in which no device reported are left out.
    buckets: Vec<GroupBucket>,
}

/// A metric over many devices: per bucket, how many devices reported it and the count,
/// min, max and mean of all their points. Over a group, a tag, a device type, or the
/// whole fleet when none is given; of those, only the devices the caller reaches.
#[utoipa::path(get, path = "/api/v1/telemetry/metrics", tag = "analytics", params(MetricQuery),
    responses((status = 200, body = Metric), Errors))]
pub(super) async fn group_metric(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Query(q): Query<MetricQuery>,
) -> Result<Json<Metric>, ApiError> {
    let (from, to) = range(&q.name, q.resolution, q.from, q.to)?;
    let mut scope = MetricScope {
        device_types: q.device_type.into_iter().collect(),
        within: admin.reach(&state).await?,
        ..Default::default()
    };
    if q.group.is_some() || q.tag.is_some() {
        let mut t = crate::store::TargetSet { tags: q.tag.into_iter().collect(), ..Default::default() };
        if let Some(g) = &q.group {
            let group = group_or_404(&state, &admin, g).await?;
            match group.query() {
                Some(query) => t.queries.push(query),
                None => t.groups.push(group.id),
            }
        }
        scope.targets = Some(t);
    }
    let buckets = state.store.group_metric(&q.name, q.resolution.level(), from, to, &scope).await?;
    Ok(Json(Metric { name: q.name, resolution: q.resolution, from, to, buckets }))
}

/// An alert rule as stored.
#[derive(Serialize, ToSchema)]
pub(super) struct AlertRule {
    /// A tenant's rule is named `TENANT/NAME`.
    #[serde(flatten)]
    spec: RuleSpec,
    /// The tenant whose rule it is (judging its devices only); absent: the operators'.
    tenant: Option<String>,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

fn rule(row: &RuleRow) -> Result<AlertRule, ApiError> {
    let spec = analytics::spec_of(row).ok_or_else(|| {
        ApiError::from(crate::error::Error::internal(format!("alert rule `{}` is unreadable", row.name)))
    })?;
    Ok(AlertRule {
        spec,
        tenant: row.tenant.clone(),
        created_by: row.created_by.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// Every alert rule, by name; a tenant's callers, their tenant's.
#[utoipa::path(get, path = "/api/v1/alert-rules", tag = "analytics", responses((status = 200, body = Vec<AlertRule>), Errors))]
pub(super) async fn list_rules(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
) -> Result<Json<Vec<AlertRule>>, ApiError> {
    let rows = state.store.rules().await?;
    Ok(Json(rows.iter().filter(|r| admin.reaches_tenant(&r.tenant)).map(rule).collect::<Result<_, _>>()?))
}

/// The rule `admin` names, if it may see it: any for an operator, its tenant's for a
/// tenant's caller (named with or without `TENANT/`); else 404.
async fn rule_or_404(state: &AppState, admin: &Admin, name: &str) -> Result<RuleRow, ApiError> {
    state
        .store
        .rule(&crate::tenants::qualified(admin.tenant.as_deref(), name))
        .await?
        .filter(|r| admin.reaches_tenant(&r.tenant))
        .ok_or_else(|| ApiError::not_found(format!("alert rule `{name}` does not exist")))
}

/// Add an alert rule: a geo-fence, a speed limit, a threshold, an anomaly detector, or
/// an `ignore` that silences anomaly alerts. It judges points from the next one on. A
/// tenant's caller's rule is its tenant's: named `TENANT/NAME`, naming the tenant's
/// groups, judging the tenant's devices only.
#[utoipa::path(post, path = "/api/v1/alert-rules", tag = "analytics", request_body = RuleSpec,
    responses((status = 201, body = AlertRule), (status = 409, description = "A rule has that name"), Errors))]
pub(super) async fn create_rule(
    State(state): State<AppState>,
    TenantOperator(admin): TenantOperator,
    super::ApiJson(body): super::ApiJson<serde_json::Value>,
) -> Result<(StatusCode, Json<AlertRule>), ApiError> {
    let spec = RuleSpec::parse(body)?;
    let row = analytics::create_rule(&state, &spec, &admin.actor(), admin.tenant.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(rule(&row)?)))
}

/// One alert rule.
#[utoipa::path(get, path = "/api/v1/alert-rules/{name}", tag = "analytics", params(("name" = String, Path)),
    responses((status = 200, body = AlertRule), Errors))]
pub(super) async fn get_rule(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
    Path(name): Path<String>,
) -> Result<Json<AlertRule>, ApiError> {
    Ok(Json(rule(&rule_or_404(&state, &admin, &name).await?)?))
}

/// Replace an alert rule (same kind; the body's `name`, if given, must be the path's).
/// Open alerts stay open until the new rule resolves them.
#[utoipa::path(put, path = "/api/v1/alert-rules/{name}", tag = "analytics", params(("name" = String, Path)),
    request_body = RuleSpec, responses((status = 200, body = AlertRule), Errors))]
pub(super) async fn update_rule(
    State(state): State<AppState>,
    TenantOperator(admin): TenantOperator,
    Path(name): Path<String>,
    super::ApiJson(mut body): super::ApiJson<serde_json::Value>,
) -> Result<Json<AlertRule>, ApiError> {
    let old = rule_or_404(&state, &admin, &name).await?;
    // The body names the rule as the path does, or as GET shows it (`TENANT/NAME`); the
    // spec is checked under the name it was made with, and stored under its whole name.
    let qualified = |n: &str| crate::tenants::qualified(old.tenant.as_deref(), n);
    let given = old.tenant.as_deref().and_then(|t| old.name.strip_prefix(t)?.strip_prefix('/')).unwrap_or(&old.name);
    if let Some(obj) = body.as_object_mut() {
        match obj.get("name").and_then(|n| n.as_str()) {
            Some(n) if qualified(n) != old.name => {
                return Err(ApiError::bad_request("invalid", format!("the body names rule `{n}`, the path `{name}`")));
            }
            _ => {
                obj.insert("name".into(), given.into());
            }
        }
    }
    let mut spec = RuleSpec::parse(body)?;
    spec.name = old.name.clone();
    let row = analytics::update_rule(&state, &old, &spec, &admin.actor()).await?;
    Ok(Json(rule(&row)?))
}

#[derive(Serialize, ToSchema)]
pub(super) struct RuleRemoved {
    /// Open alerts of the rule, now resolved (`rule-removed`).
    resolved_alerts: usize,
}

/// Remove an alert rule; its open alerts are resolved, its alerts stay as history.
#[utoipa::path(delete, path = "/api/v1/alert-rules/{name}", tag = "analytics", params(("name" = String, Path)),
    responses((status = 200, body = RuleRemoved), Errors))]
pub(super) async fn delete_rule(
    State(state): State<AppState>,
    TenantOperator(admin): TenantOperator,
    Path(name): Path<String>,
) -> Result<Json<RuleRemoved>, ApiError> {
    let old = rule_or_404(&state, &admin, &name).await?;
    Ok(Json(RuleRemoved { resolved_alerts: analytics::delete_rule(&state, &old, &admin.actor()).await? }))
}

/// An alert.
#[derive(Serialize, ToSchema)]
pub(super) struct Alert {
    id: i64,
    rule: String,
    /// `geofence`, `speed`, `threshold` or `anomaly`.
    kind: String,
    /// The device as `type/id`.
    device: Option<String>,
    /// The metric (`speed` for speed alerts; empty for a fence's crossing).
    metric: String,
    /// `open` or `resolved`.
    state: String,
    opened_at: i64,
    resolved_at: Option<i64>,
    /// The value that opened it.
    value: Option<f64>,
    /// What the rule saw: a fence's crossing and position, an anomaly's baseline …
    #[schema(value_type = Object)]
    detail: serde_json::Value,
    /// `cleared`, `rule-removed`, `device-removed` or `admin`.
    resolution: Option<String>,
}

impl From<&AlertRow> for Alert {
    fn from(a: &AlertRow) -> Alert {
        let detail: serde_json::Value = serde_json::from_str(&a.detail).unwrap_or_default();
        Alert {
            id: a.id,
            rule: a.rule_name.clone(),
            kind: a.kind.clone(),
            device: detail.get("device").and_then(|d| d.as_str()).map(str::to_string),
            metric: a.metric.clone(),
            state: a.state.clone(),
            opened_at: a.opened_at,
            resolved_at: a.resolved_at,
            value: a.value,
            detail,
            resolution: a.resolution.clone(),
        }
    }
}

/// Alert state filter.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Open,
    Resolved,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AlertQuery {
    #[param(inline)]
    state: Option<AlertState>,
    /// `geofence`, `speed`, `threshold` or `anomaly`.
    kind: Option<String>,
    /// The rule's name.
    rule: Option<String>,
    /// With `device_id`: one device's alerts.
    device_type: Option<String>,
    device_id: Option<String>,
    /// Alerts older than this one (the previous page's `next_before`).
    before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct AlertPage {
    /// Newest first.
    items: Vec<Alert>,
    /// Pass as `before` for older alerts; absent on the last page.
    next_before: Option<i64>,
}

/// Alerts, newest first: open ones (`state=open`) are what needs attention now. A scoped
/// or tenant's caller reads those about the devices it reaches, whoever's rule opened them.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "analytics", params(AlertQuery),
    responses((status = 200, body = AlertPage), Errors))]
pub(super) async fn list_alerts(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Query(q): Query<AlertQuery>,
) -> Result<Json<AlertPage>, ApiError> {
    let device = match (&q.device_type, &q.device_id) {
        (Some(t), Some(i)) => Some(device_for(&state, &admin, t, i).await?.id),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("invalid", "give both `device_type` and `device_id`, or neither")),
    };
    let f = AlertFilter {
        state: q.state.map(|s| if matches!(s, AlertState::Open) { "open" } else { "resolved" }.to_string()),
        kind: q.kind,
        rule: q.rule,
        device,
        within: admin.reach(&state).await?,
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let rows = state.store.alerts(&f, q.before, limit).await?;
    let next_before = next_after(&rows, limit, |a| a.id);
    Ok(Json(AlertPage { items: rows.iter().map(Alert::from).collect(), next_before }))
}

/// Alert `id`, if it is about a device `admin` reaches; else 404.
async fn alert_or_404(state: &AppState, admin: &Admin, id: i64) -> Result<AlertRow, ApiError> {
    let a = state.store.alert(id).await?.ok_or_else(|| ApiError::not_found(format!("alert {id} not found")))?;
    in_reach(state, admin, a.device, || format!("alert {id} not found")).await?;
    Ok(a)
}

/// One alert.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "analytics", params(("id" = i64, Path)),
    responses((status = 200, body = Alert), Errors))]
pub(super) async fn get_alert(
    State(state): State<AppState>,
    ScopedViewer(admin): ScopedViewer,
    Path(id): Path<i64>,
) -> Result<Json<Alert>, ApiError> {
    Ok(Json(Alert::from(&alert_or_404(&state, &admin, id).await?)))
}

/// Resolve an open alert by hand (`admin`). While its condition lasts it does not open
/// again; it opens again when the condition ends and starts anew.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/resolve", tag = "analytics", params(("id" = i64, Path)),
    responses((status = 200, body = Alert), (status = 409, description = "Already resolved"), Errors))]
pub(super) async fn resolve_alert(
    State(state): State<AppState>,
    ScopedOperator(admin): ScopedOperator,
    Path(id): Path<i64>,
) -> Result<Json<Alert>, ApiError> {
    let a = alert_or_404(&state, &admin, id).await?;
    if a.state != "open" {
        return Err(crate::error::Error::conflict("resolved", format!("alert {id} is already resolved")).into());
    }
    match analytics::resolve_by_admin(&state, &a, &admin.actor()).await? {
        Some(r) => Ok(Json(Alert::from(&r))),
        None => Err(crate::error::Error::conflict("resolved", format!("alert {id} is already resolved")).into()),
    }
}
