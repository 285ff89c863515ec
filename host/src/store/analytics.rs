//! Telemetry analytics in the database (docs/analytics.md): the rollups' series, group
//! metrics over them, alert rules, and alerts with their state. The rollups themselves
//! are written with the points (`writes.rs`).

use super::{
    Backend, Filters, NewEvent, Param, Store, StoreError, TargetSet, WriteTx, bind_filters, now_ms, record_event,
    trusted, with_pool, with_write_pool,
};
use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleRow {
    pub id: i64,
    pub name: String,
    /// `geofence`, `speed`, `threshold`, `anomaly` or `ignore`.
    pub kind: String,
    /// The rule as the API took it, as JSON text.
    pub spec: String,
    pub enabled: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The tenant whose rule it is (named `TENANT/NAME`, judging its devices only);
    /// absent: the operators'.
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRow {
    pub id: i64,
    /// The rule's key (a removed rule's alerts keep it and its name).
    pub rule: i64,
    pub rule_name: String,
    /// `geofence`, `speed`, `threshold` or `anomaly`.
    pub kind: String,
    /// The device's key.
    pub device: i64,
    /// The metric the alert is about (`speed` for speed alerts, empty for fences).
    pub metric: String,
    /// `open` or `resolved`.
    pub state: String,
    pub opened_at: i64,
    pub resolved_at: Option<i64>,
    /// The value that opened it.
    pub value: Option<f64>,
    /// What the rule saw, as JSON text (a fence's crossing, an anomaly's baseline …).
    pub detail: String,
    /// Why it was resolved: `cleared` (the condition ended), `rule-removed`,
    /// `device-removed`, `admin`.
    pub resolution: Option<String>,
}

/// An alert to open.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub rule: i64,
    pub rule_name: String,
    pub kind: &'static str,
    pub device: i64,
    pub metric: String,
    pub at: i64,
    pub value: Option<f64>,
    pub detail: String,
}

/// A rule to add.
#[derive(Debug, Clone, Copy)]
pub struct NewRule<'a> {
    /// `TENANT/NAME` for a tenant's.
    pub name: &'a str,
    pub kind: &'a str,
    /// The rule as JSON text.
    pub spec: &'a str,
    pub enabled: bool,
    pub actor: &'a str,
    pub tenant: Option<&'a str>,
}

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub rule: Option<String>,
    pub device: Option<i64>,
    /// Only alerts about devices a scoped or tenant's caller reaches.
    pub within: Option<crate::scope::Reach>,
}

/// One bucket of a device's series.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
#[schema(as = SeriesBucket)]
pub struct Bucket {
    /// The bucket's start, ms since the Unix epoch.
    pub at: i64,
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// The value measured last in the bucket.
    pub last: f64,
}

/// One bucket of a metric over many devices.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct GroupBucket {
    /// The bucket's start, ms since the Unix epoch.
    pub at: i64,
    /// Devices that reported the metric in the bucket.
    pub devices: i64,
    /// Points, over all of them.
    pub count: i64,
    pub min: f64,
    pub max: f64,
    /// The mean of all their points.
    pub mean: f64,
}

/// The devices a group metric covers: the union of `targets` (all devices when it names
/// none), of the types in `device_types` (all when empty).
#[derive(Debug, Clone, Default)]
pub struct MetricScope {
    pub targets: Option<TargetSet>,
    pub device_types: Vec<String>,
    /// Only devices a scoped or tenant's caller reaches.
    pub within: Option<crate::scope::Reach>,
}

impl Store {
    /// Add a rule, with its event.
    pub async fn insert_rule(&self, rule: &NewRule<'_>, event: &NewEvent) -> Result<RuleRow, StoreError> {
        let NewRule { name, kind, spec, enabled, actor, tenant } = *rule;
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: RuleRow = sqlx::query_as(
                    "INSERT INTO alert_rules (name, kind, spec, enabled, created_by, created_at, updated_at, tenant)
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7) RETURNING *")
                .bind(name).bind(kind).bind(spec).bind(i64::from(enabled)).bind(actor).bind(now).bind(tenant)
                .fetch_one(&mut *tx).await
                .map_err(|e| StoreError::conflict_or(e, || format!("alert rule `{name}`")))?;
            record_event!(&mut *tx, event);
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Replace a rule's spec (its kind stays). Its open alerts stay open: the next point
    /// is judged by the new spec and resolves them if it no longer holds.
    pub async fn update_rule(
        &self,
        name: &str,
        spec: &str,
        enabled: bool,
        event: &NewEvent,
    ) -> Result<Option<RuleRow>, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: Option<RuleRow> = sqlx::query_as(
                    "UPDATE alert_rules SET spec = $1, enabled = $2, updated_at = $3 WHERE name = $4 RETURNING *")
                .bind(spec).bind(i64::from(enabled)).bind(now_ms()).bind(name)
                .fetch_optional(&mut *tx).await?;
            if row.is_some() {
                record_event!(&mut *tx, event);
            }
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Remove a rule and resolve its open alerts (`rule-removed`), with the rule's event
    /// and one per alert (`events` builds them from the alerts resolved).
    pub async fn delete_rule(
        &self,
        name: &str,
        event: &NewEvent,
        events: impl Fn(&AlertRow) -> NewEvent,
    ) -> Result<Option<(RuleRow, Vec<AlertRow>)>, StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let Some(row): Option<RuleRow> = sqlx::query_as("DELETE FROM alert_rules WHERE name = $1 RETURNING *")
                .bind(name).fetch_optional(&mut *tx).await? else {
                return Ok(None);
            };
            let resolved: Vec<AlertRow> = sqlx::query_as(
                    "UPDATE alerts SET state = 'resolved', resolved_at = $1, resolution = 'rule-removed'
                     WHERE rule = $2 AND state = 'open' RETURNING *")
                .bind(now).bind(row.id).fetch_all(&mut *tx).await?;
            record_event!(&mut *tx, event);
            for a in &resolved {
                record_event!(&mut *tx, &events(a));
            }
            tx.commit().await?;
            Ok(Some((row, resolved)))
        })
    }

    pub async fn rules(&self) -> Result<Vec<RuleRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as("SELECT * FROM alert_rules ORDER BY name").fetch_all(pool).await?))
    }

    pub async fn rule(&self, name: &str) -> Result<Option<RuleRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as("SELECT * FROM alert_rules WHERE name = $1")
            .bind(name).fetch_optional(pool).await?))
    }

    /// Open an alert unless one is open for the same rule, device and metric (then
    /// `None`: another replica, or an earlier message, opened it), with its event.
    pub async fn open_alert(
        &self,
        a: &NewAlert,
        event: impl FnOnce(&AlertRow) -> NewEvent,
    ) -> Result<Option<AlertRow>, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: Option<AlertRow> = sqlx::query_as(
                    "INSERT INTO alerts (rule, rule_name, kind, device, metric, state, opened_at, value, detail)
                     VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8)
                     ON CONFLICT (rule, device, metric) WHERE state = 'open' DO NOTHING RETURNING *")
                .bind(a.rule).bind(&a.rule_name).bind(a.kind).bind(a.device).bind(&a.metric).bind(a.at)
                .bind(a.value).bind(&a.detail)
                .fetch_optional(&mut *tx).await?;
            if let Some(r) = &row {
                record_event!(&mut *tx, &event(r));
            }
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Resolve the open alert of a rule, device and metric, if one is open, with its event.
    pub async fn resolve_alert(
        &self,
        rule: i64,
        device: i64,
        metric: &str,
        at: i64,
        resolution: &str,
        event: impl FnOnce(&AlertRow) -> NewEvent,
    ) -> Result<Option<AlertRow>, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: Option<AlertRow> = sqlx::query_as(
                    "UPDATE alerts SET state = 'resolved', resolved_at = $1, resolution = $2
                     WHERE rule = $3 AND device = $4 AND metric = $5 AND state = 'open' RETURNING *")
                .bind(at).bind(resolution).bind(rule).bind(device).bind(metric)
                .fetch_optional(&mut *tx).await?;
            if let Some(r) = &row {
                record_event!(&mut *tx, &event(r));
            }
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Resolve every open alert of a device (`resolution`), each with its event.
    pub async fn resolve_device_alerts(
        &self,
        device: i64,
        resolution: &str,
        event: impl Fn(&AlertRow) -> NewEvent,
    ) -> Result<Vec<AlertRow>, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let rows: Vec<AlertRow> = sqlx::query_as(
                    "UPDATE alerts SET state = 'resolved', resolved_at = $1, resolution = $2
                     WHERE device = $3 AND state = 'open' RETURNING *")
                .bind(now_ms()).bind(resolution).bind(device).fetch_all(&mut *tx).await?;
            for r in &rows {
                record_event!(&mut *tx, &event(r));
            }
            tx.commit().await?;
            Ok(rows)
        })
    }

    pub async fn alert(&self, id: i64) -> Result<Option<AlertRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as("SELECT * FROM alerts WHERE id = $1")
            .bind(id).fetch_optional(pool).await?))
    }

    /// Alerts matching `f`, newest first, with ids below `before`.
    pub async fn alerts(&self, f: &AlertFilter, before: Option<i64>, limit: i64) -> Result<Vec<AlertRow>, StoreError> {
        let mut w = Filters::new(2);
        if let Some(s) = &f.state {
            w.and("state = ?", Param::Text(s.clone()));
        }
        if let Some(k) = &f.kind {
            w.and("kind = ?", Param::Text(k.clone()));
        }
        if let Some(r) = &f.rule {
            w.and("rule_name = ?", Param::Text(r.clone()));
        }
        if let Some(d) = f.device {
            w.and("device = ?", Param::Int(d));
        }
        if let Some(b) = before {
            w.and("id < ?", Param::Int(b));
        }
        if let Some(reach) = &f.within {
            let condition = reach.condition(self.is_postgres(), &mut w);
            w.sql.push_str(&format!(" AND device IN (SELECT d.id FROM devices d WHERE {condition})"));
        }
        let sql = format!("SELECT * FROM alerts WHERE 1 = 1{} ORDER BY id DESC LIMIT $1", w.sql);
        Ok(with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)).bind(limit), w).fetch_all(pool).await?))
    }

    /// Every open alert (the analytics engine's state at start).
    pub async fn open_alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as("SELECT * FROM alerts WHERE state = 'open'").fetch_all(pool).await?))
    }

    /// The keys of the devices `targets` selects (enrolled, not removed).
    pub async fn target_keys(&self, targets: &TargetSet) -> Result<Vec<i64>, StoreError> {
        let f = targets.predicate(matches!(self.backend, Backend::Postgres(_)), 1);
        let sql = format!("SELECT d.id FROM devices d WHERE {}", f.sql);
        let rows: Vec<(i64,)> =
            with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)), f).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(k,)| k).collect())
    }

    /// A device's series of `name` at `level` (`minute` or `hour`), buckets starting in
    /// `[from, to)`, oldest first.
    pub async fn series(
        &self,
        device: i64,
        name: &str,
        level: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT bucket AS at, count, min, max, sum / count AS mean, last FROM telemetry_rollups
                 WHERE device = $1 AND name = $2 AND level = $3 AND bucket >= $4 AND bucket < $5 ORDER BY bucket")
            .bind(device).bind(name).bind(level).bind(from).bind(to).fetch_all(pool).await?))
    }

    /// `name` at `level` over the devices of `scope`, buckets starting in `[from, to)`,
    /// oldest first. Read from the rollups: one index probe per device and bucket.
    pub async fn group_metric(
        &self,
        name: &str,
        level: &str,
        from: i64,
        to: i64,
        scope: &MetricScope,
    ) -> Result<Vec<GroupBucket>, StoreError> {
        let postgres = matches!(self.backend, Backend::Postgres(_));
        let mut f = match &scope.targets {
            Some(t) => t.predicate(postgres, 5),
            None => {
                let mut f = Filters::new(5);
                f.sql = "d.status <> 'removed'".into();
                f
            }
        };
        if !scope.device_types.is_empty() {
            let list: Vec<String> = scope.device_types.iter().map(|t| f.placeholder(Param::Text(t.clone()))).collect();
            f.sql = format!("({}) AND d.device_type IN ({})", f.sql, list.join(", "));
        }
        if let Some(reach) = &scope.within {
            let condition = reach.condition(postgres, &mut f);
            f.sql = format!("({}) AND {condition}", f.sql);
        }
        let sql = format!(
            "SELECT r.bucket AS at, COUNT(*) AS devices, CAST(SUM(r.count) AS BIGINT) AS count, MIN(r.min) AS min,
                    MAX(r.max) AS max, SUM(r.sum) / CAST(SUM(r.count) AS DOUBLE PRECISION) AS mean
             FROM devices d JOIN telemetry_rollups r ON r.device = d.id
             WHERE r.name = $1 AND r.level = $2 AND r.bucket >= $3 AND r.bucket < $4 AND {}
             GROUP BY r.bucket ORDER BY r.bucket",
            f.sql
        );
        Ok(with_pool!(self, pool => bind_filters!(
                sqlx::query_as(trusted(&sql)).bind(name).bind(level).bind(from).bind(to), f)
            .fetch_all(pool).await?))
    }

    /// Retention: delete rollups of `level` whose bucket began before `before`.
    pub async fn purge_rollups(&self, level: &str, before: i64) -> Result<u64, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query("DELETE FROM telemetry_rollups WHERE level = $1 AND bucket < $2")
            .bind(level).bind(before).execute(pool).await?.rows_affected()))
    }
}
