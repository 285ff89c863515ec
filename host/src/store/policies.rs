//! Policies, their revisions, and each device's effective policy (`policies.rs` decides;
//! docs/policies.md). A policy's spec is JSON text: the store keeps revisions, never reads
//! inside them.

use super::operations::TargetSet;
use super::{
    Backend, DeviceQuery, Filters, NewEvent, Param, Store, StoreError, WriteTx, bind_filters, now_ms, trusted,
    with_pool,
};
use super::{record_event, with_write_pool};

const COLUMNS: &str =
    "p.id, p.name, p.revision, p.active, p.priority, p.created_by, p.created_at, p.updated_at, r.spec, p.tenant";

/// A policy at its current revision.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyRow {
    pub id: i64,
    pub name: String,
    pub revision: i64,
    pub active: i64,
    pub priority: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The current revision's spec (JSON text).
    pub spec: String,
    /// The tenant whose it is (named `TENANT/NAME`, applied to the tenant's devices only);
    /// `None`: the operators'.
    pub tenant: Option<String>,
}

/// One revision of a policy.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RevisionRow {
    pub revision: i64,
    pub spec: String,
    pub created_by: String,
    pub created_at: i64,
}

/// A device as the policy engine sees it: its type and what it was last given.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyTarget {
    pub device: i64,
    pub device_type: String,
    pub device_id: String,
    pub digest: Option<String>,
    pub policies: Option<String>,
}

/// A device's effective policy as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DevicePolicyRow {
    pub digest: String,
    /// JSON array of `{name, revision}`, highest priority first.
    pub policies: String,
    pub operation: Option<i64>,
    pub assigned_at: i64,
}

/// Which devices a policy applies to, as the store can select them: every condition given
/// must hold; `scope` (groups and tags) is a union; no scope means every device.
#[derive(Debug, Clone, Default)]
pub struct Applies {
    pub device_types: Vec<String>,
    pub owners: Vec<String>,
    /// Ownership and metadata conditions (its `device_type` and `tags` unused).
    pub query: DeviceQuery,
    pub scope: Option<TargetSet>,
}

/// Devices given a new effective bundle at once: one activity, one operation each.
pub struct Assignment<'a> {
    pub device_type: &'a str,
    pub digest: &'a str,
    /// The POLICY_BUNDLE payload (JSON text). `None` with a `digest`: policies apply but
    /// give no features (rules only), so the record stays, without a bundle; `None` with
    /// an empty `digest`: no policy applies any more.
    pub payload: Option<&'a str>,
    /// The policies that make it (JSON), the same for every device here.
    pub policies: &'a str,
    /// `(device, its event)`.
    pub devices: &'a [(i64, NewEvent)],
    pub actor: &'a str,
}

/// A policy to store, at its first revision.
pub struct NewPolicy<'a> {
    /// `TENANT/NAME` for a tenant's.
    pub name: &'a str,
    pub active: bool,
    pub priority: i64,
    /// The spec (JSON text).
    pub spec: &'a str,
    pub actor: &'a str,
    pub tenant: Option<&'a str>,
}

impl Store {
    pub async fn insert_policy(&self, p: &NewPolicy<'_>, event: &NewEvent) -> Result<i64, StoreError> {
        let NewPolicy { name, active, priority, spec, actor, tenant } = *p;
        let now = now_ms();
        let name_owned = name.to_string();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO policies (name, revision, active, priority, created_by, created_at, updated_at, tenant)
                     VALUES ($1, 1, $2, $3, $4, $5, $5, $6) RETURNING id")
                .bind(name).bind(i64::from(active)).bind(priority).bind(actor).bind(now).bind(tenant)
                .fetch_one(&mut *tx).await
                .map_err(|e| StoreError::conflict_or(e, || format!("policy `{name_owned}`")))?;
            sqlx::query("INSERT INTO policy_revisions (policy, revision, spec, created_by, created_at) VALUES ($1, 1, $2, $3, $4)")
                .bind(id).bind(spec).bind(actor).bind(now).execute(&mut *tx).await?;
            record_event!(&mut *tx, event);
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Make `revision` (the current one + 1) current with `spec`. Refused as a conflict when
    /// another edit made that revision first.
    pub async fn revise_policy(
        &self,
        id: i64,
        revision: i64,
        priority: i64,
        spec: &str,
        actor: &str,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                    "UPDATE policies SET revision = $1, priority = $2, updated_at = $3 WHERE id = $4 AND revision = $5")
                .bind(revision).bind(priority).bind(now).bind(id).bind(revision - 1).execute(&mut *tx).await?
                .rows_affected();
            if n != 1 {
                return Err(StoreError::Refused(format!(
                    "revision {revision} of this policy was saved by another edit: read it and try again"
                )));
            }
            sqlx::query("INSERT INTO policy_revisions (policy, revision, spec, created_by, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(id).bind(revision).bind(spec).bind(actor).bind(now).execute(&mut *tx).await?;
            record_event!(&mut *tx, event);
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn set_policy_active(&self, id: i64, active: bool, event: &NewEvent) -> Result<bool, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query("UPDATE policies SET active = $1, updated_at = $2 WHERE id = $3 AND active <> $1")
                .bind(i64::from(active)).bind(now_ms()).bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                record_event!(&mut *tx, event);
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    pub async fn delete_policy(&self, id: i64, event: &NewEvent) -> Result<bool, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query("DELETE FROM policies WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                record_event!(&mut *tx, event);
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    pub async fn policy(&self, name: &str) -> Result<Option<PolicyRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM policies p JOIN policy_revisions r ON r.policy = p.id AND r.revision = p.revision
             WHERE p.name = $1"
        );
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(name).fetch_optional(pool).await?))
    }

    /// Every policy (`active_only`: the active ones), in the order they rank: the
    /// operators' above every tenant's, then highest priority first, then by name.
    pub async fn policies(&self, active_only: bool) -> Result<Vec<PolicyRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM policies p JOIN policy_revisions r ON r.policy = p.id AND r.revision = p.revision
             WHERE p.active = 1 OR $1 = 0
             ORDER BY CASE WHEN p.tenant IS NULL THEN 0 ELSE 1 END, p.priority DESC, p.name"
        );
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(i64::from(active_only)).fetch_all(pool).await?))
    }

    pub async fn policy_revisions(&self, id: i64) -> Result<Vec<RevisionRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT revision, spec, created_by, created_at FROM policy_revisions WHERE policy = $1 ORDER BY revision DESC")
            .bind(id).fetch_all(pool).await?))
    }

    pub async fn policy_revision(&self, id: i64, revision: i64) -> Result<Option<RevisionRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT revision, spec, created_by, created_at FROM policy_revisions WHERE policy = $1 AND revision = $2")
            .bind(id).bind(revision).fetch_optional(pool).await?))
    }

    /// The devices `a` selects (enrolled, not removed), restricted to `only` when given.
    pub async fn applicable_devices(&self, a: &Applies, only: Option<&[i64]>) -> Result<Vec<i64>, StoreError> {
        if a.device_types.is_empty() {
            return Ok(Vec::new());
        }
        let postgres = self.is_postgres();
        let mut f = match &a.scope {
            Some(scope) => scope.predicate(postgres, 1),
            None => {
                let mut f = Filters::new(1);
                f.sql = "d.status <> 'removed'".into();
                f
            }
        };
        let types: Vec<String> = a.device_types.iter().map(|t| f.placeholder(Param::Text(t.clone()))).collect();
        let mut sql = format!("{} AND d.device_type IN ({})", f.sql, types.join(", "));
        if !a.owners.is_empty() {
            let owners: Vec<String> = a.owners.iter().map(|o| f.placeholder(Param::Text(o.clone()))).collect();
            sql.push_str(&format!(" AND d.owner IN ({})", owners.join(", ")));
        }
        let condition = a.query.condition(postgres, &mut f);
        sql.push_str(&format!(" AND {condition}"));
        if let Some(only) = only {
            let p = f.placeholder(Param::Text(super::key_list(only)));
            sql.push_str(&format!(" AND d.id IN {}", super::key_rows(postgres, &p)));
        }
        let sql = format!("SELECT d.id FROM devices d WHERE {sql} ORDER BY d.id");
        let rows: Vec<(i64,)> =
            with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)), f).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }

    /// Live devices of `device_types` (or the devices `only`), with what they were last
    /// given, `limit` at a time after device key `after`.
    pub async fn policy_targets(
        &self,
        device_types: &[String],
        only: Option<&[i64]>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<PolicyTarget>, StoreError> {
        let mut f = Filters::new(3);
        let mut sql = String::from(
            "SELECT d.id AS device, d.device_type, d.device_id, p.digest, p.policies FROM devices d
             LEFT JOIN device_policies p ON p.device = d.id
             WHERE d.status <> 'removed' AND d.id > $1",
        );
        match only {
            Some(only) => {
                let p = f.placeholder(Param::Text(super::key_list(only)));
                sql.push_str(&format!(" AND d.id IN {}", super::key_rows(self.is_postgres(), &p)));
            }
            None => {
                let types: Vec<String> = device_types.iter().map(|t| f.placeholder(Param::Text(t.clone()))).collect();
                if types.is_empty() {
                    return Ok(Vec::new());
                }
                sql.push_str(&format!(" AND d.device_type IN ({})", types.join(", ")));
            }
        }
        sql.push_str(" ORDER BY d.id LIMIT $2");
        Ok(with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)).bind(after).bind(limit), f)
            .fetch_all(pool).await?))
    }

    pub async fn device_policy(&self, device: i64) -> Result<Option<DevicePolicyRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT digest, policies, operation, assigned_at FROM device_policies WHERE device = $1")
            .bind(device).fetch_optional(pool).await?))
    }

    /// Give devices a new effective bundle, in one transaction: the bundle's activity and
    /// an operation per device; each device's older bundle, if still unfinished, superseded
    /// (PENDING → REPEATED, NOTNOW or IN_PROGRESS → CANCELLED: never two in flight); the
    /// record of what each device was given, and its event. With no payload, the devices
    /// lose their record (no policy applies) and their unfinished bundle is cancelled.
    /// Returns the activity, if one was added.
    pub async fn assign_policy(&self, a: &Assignment<'_>) -> Result<Option<i64>, StoreError> {
        if a.devices.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let postgres = self.is_postgres();
        let mut f = Filters::new(3);
        let list: Vec<i64> = a.devices.iter().map(|(d, _)| *d).collect();
        let keys = super::key_rows(postgres, &f.placeholder(Param::Text(super::key_list(&list))));
        let older = format!("SELECT p.operation FROM device_policies p WHERE p.device IN {keys}");
        let supersede = |from: &str, to: &str| {
            super::writes::move_where(&format!("state IN ({from}) AND id IN ({older})"), to, postgres)
        };
        let statements: Vec<String> = supersede("'PENDING'", "REPEATED")
            .into_iter()
            .chain(supersede("'NOTNOW', 'IN_PROGRESS'", "CANCELLED"))
            .collect();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for sql in &statements {
                bind_filters!(sqlx::query(trusted(sql)).bind(a.actor).bind(now), f).execute(&mut *tx).await?;
            }
            let mut activity = None;
            match a.payload {
                Some(payload) => {
                    let (id,): (i64,) = sqlx::query_as(
                            "INSERT INTO activities (code, kind, payload, created_by, created_at, expires_at, max_attempts)
                             VALUES ('POLICY_BUNDLE', 'policy', $1, $2, $3, NULL, 1) RETURNING id")
                        .bind(payload).bind(a.actor).bind(now).fetch_one(&mut *tx).await?;
                    let insert = format!(
                        "INSERT INTO operations (activity, device, code, kind, state, attempts, created_at, updated_at, expires_at, max_attempts)
                         SELECT $1, d.id, 'POLICY_BUNDLE', 'policy', 'PENDING', 0, $2, $2, NULL, 1 FROM devices d
                         WHERE d.id IN {keys} ORDER BY d.id");
                    bind_filters!(sqlx::query(trusted(&insert)).bind(id).bind(now), f).execute(&mut *tx).await?;
                    let upsert = "INSERT INTO device_policies (device, digest, policies, operation, assigned_at)
                         SELECT o.device, $1, $4, o.id, $2 FROM operations o WHERE o.activity = $3
                         ON CONFLICT (device) DO UPDATE SET digest = excluded.digest, operation = excluded.operation,
                             assigned_at = excluded.assigned_at, policies = excluded.policies";
                    sqlx::query(upsert).bind(a.digest).bind(now).bind(id).bind(a.policies).execute(&mut *tx).await?;
                    let added = crate::events::Event::ActivityAdded {
                        activity: id,
                        code: "POLICY_BUNDLE".into(),
                        operations: a.devices.len() as u64,
                        actor: a.actor.to_string(),
                    };
                    record_event!(&mut *tx, &added.record());
                    activity = Some(id);
                }
                None if !a.digest.is_empty() => {
                    let upsert = format!(
                        "INSERT INTO device_policies (device, digest, policies, operation, assigned_at)
                         SELECT d.id, $1, $4, NULL, $2 FROM devices d WHERE d.id IN {keys}
                         ON CONFLICT (device) DO UPDATE SET digest = excluded.digest, operation = NULL,
                             assigned_at = excluded.assigned_at, policies = excluded.policies");
                    bind_filters!(sqlx::query(trusted(&upsert)).bind(a.digest).bind(now), f)
                        .bind(a.policies)
                        .execute(&mut *tx)
                        .await?;
                }
                None => {
                    let delete = format!("DELETE FROM device_policies WHERE device IN {keys} AND $1 = $1 AND $2 = $2");
                    bind_filters!(sqlx::query(trusted(&delete)).bind(a.actor).bind(now), f).execute(&mut *tx).await?;
                }
            }
            // The devices' events in one statement: their rows as one JSON parameter.
            let rows: Vec<serde_json::Value> = a.devices.iter()
                .map(|(_, e)| serde_json::json!({ "type": e.event_type, "actor": e.actor, "target": e.target, "data": e.data, "device": e.device }))
                .collect();
            let sql = if postgres {
                "INSERT INTO events (at, type, actor, target, data, device)
                 SELECT $1, e.type, e.actor, e.target, e.data, e.device
                 FROM jsonb_to_recordset(CAST($2 AS jsonb)) AS e(type text, actor text, target text, data text, device bigint)"
            } else {
                "INSERT INTO events (at, type, actor, target, data, device)
                 SELECT $1, json_extract(value, '$.type'), json_extract(value, '$.actor'), json_extract(value, '$.target'),
                        json_extract(value, '$.data'), json_extract(value, '$.device')
                 FROM json_each($2) ORDER BY key"
            };
            sqlx::query(sql).bind(now).bind(serde_json::Value::from(rows).to_string()).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(activity)
        })
    }

    /// The same bundle, from other policies (or revisions): only the record changes.
    pub async fn relabel_policy(&self, devices: &[i64], policies: &str) -> Result<(), StoreError> {
        if devices.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE device_policies SET policies = $1 WHERE device IN {}",
            super::key_rows(self.is_postgres(), "$2")
        );
        with_write_pool!(self, pool => sqlx::query(trusted(&sql)).bind(policies).bind(super::key_list(devices))
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }
}
