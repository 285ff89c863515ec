//! Each device's compliance with its policies (their rules, and what the device reports
//! about their features), and its history (`policies.rs`
//! evaluates; docs/policies.md).

use super::{Backend, NewEvent, Store, StoreError, WriteTx, now_ms, record_event, with_pool, with_write_pool};

/// A device's latest verdict.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ComplianceRow {
    /// `compliant`, `non_compliant` or `unknown`.
    pub state: String,
    /// JSON array of the checks: `{policy, rule or feature, compliant (true, false or
    /// null), reason, since}`.
    pub checks: String,
    /// Since when the device is in `state`.
    pub since: i64,
    pub evaluated_at: i64,
    pub blocked: i64,
}

/// A device due for evaluation: what the rules read about it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueDevice {
    pub device: i64,
    pub device_type: String,
    pub device_id: String,
    /// JSON object of the device's reports.
    pub metadata: String,
    /// The policies of its effective policy (JSON array of `{name, revision}`).
    pub policies: String,
    /// Its state before, if evaluated before.
    pub state: Option<String>,
    pub blocked: Option<i64>,
    /// Its newest telemetry row now.
    pub mark: i64,
    /// The state of its current bundle operation and the device's answer to it.
    pub bundle_state: Option<String>,
    pub bundle_response: Option<String>,
    /// When the bundle operation last changed (its answer's time, once answered).
    pub bundle_at: Option<i64>,
    /// The device's newest completed answer to a later `policy`-kind operation (a
    /// compliance query such as the Android agent's POLICY_MONITOR).
    pub report: Option<String>,
    /// The checks of its previous verdict (JSON), for each check's `since`.
    pub previous: Option<String>,
}

/// One history entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ComplianceChange {
    pub at: i64,
    pub state: String,
    pub checks: String,
}

/// A verdict to record.
pub struct Verdict<'a> {
    pub device: i64,
    pub state: &'a str,
    pub checks: &'a str,
    pub blocked: bool,
    /// The newest telemetry row the verdict read.
    pub mark: i64,
    /// The state changed: a history entry.
    pub changed: bool,
    /// Written with it (the change is told).
    pub event: Option<&'a NewEvent>,
}

impl Store {
    /// Devices with an effective policy whose verdict is missing or older than what it
    /// reads: new telemetry, the device called in since (its metadata may have changed),
    /// it was given another policy, it answered its bundle or a later policy query, or
    /// the verdict is older than `stale_before` (rules may read the time). At most `limit`, by device key.
    pub async fn compliance_due(&self, limit: i64, stale_before: i64) -> Result<Vec<DueDevice>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT d.id AS device, d.device_type, d.device_id, d.metadata, p.policies, c.state, c.blocked,
                        COALESCE((SELECT MAX(t.id) FROM telemetry t WHERE t.device = d.id), 0) AS mark,
                        o.state AS bundle_state, o.response AS bundle_response, o.updated_at AS bundle_at,
                        (SELECT m.response FROM operations m
                         WHERE m.device = p.device AND m.state = 'COMPLETED' AND m.id > p.operation
                           AND m.kind = 'policy'
                         ORDER BY m.id DESC LIMIT 1) AS report,
                        c.checks AS previous
                 FROM device_policies p JOIN devices d ON d.id = p.device
                 LEFT JOIN device_compliance c ON c.device = p.device
                 LEFT JOIN operations o ON o.id = p.operation
                 WHERE d.status <> 'removed'
                   AND (c.device IS NULL OR c.evaluated_at < p.assigned_at OR c.evaluated_at < COALESCE(d.last_seen_at, 0)
                        OR c.evaluated_at < $2
                        OR EXISTS (SELECT 1 FROM telemetry t WHERE t.device = d.id AND t.id > c.telemetry_mark)
                        OR o.updated_at > c.evaluated_at
                        OR EXISTS (SELECT 1 FROM operations m
                                   WHERE m.device = p.device AND m.state = 'COMPLETED' AND m.id > p.operation
                                     AND m.kind = 'policy' AND m.updated_at > c.evaluated_at))
                 ORDER BY d.id LIMIT $1")
            .bind(limit).bind(stale_before).fetch_all(pool).await?))
    }

    /// Devices of `device_type` to ask for their compliance: they applied their bundle
    /// before `before` and have had no policy query since then, nor one still open (an
    /// offline device is asked once, not once per round). At most `limit`, by key.
    pub async fn monitor_due(&self, device_type: &str, before: i64, limit: i64) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT p.device FROM device_policies p
                 JOIN devices d ON d.id = p.device
                 JOIN operations o ON o.id = p.operation
                 WHERE d.device_type = $1 AND d.status = 'active' AND o.state = 'COMPLETED' AND o.updated_at < $2
                   AND NOT EXISTS (SELECT 1 FROM operations m
                                   WHERE m.device = p.device AND m.id > p.operation AND m.kind = 'policy'
                                     AND (m.created_at >= $2 OR m.state IN ('PENDING', 'IN_PROGRESS', 'NOTNOW')))
                 ORDER BY p.device LIMIT $3")
            .bind(device_type).bind(before).bind(limit).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }

    /// Evaluate the devices of these types again at the next turn (their policies' rules
    /// changed).
    pub async fn compliance_stale(&self, device_types: &[String]) -> Result<(), StoreError> {
        for t in device_types {
            with_write_pool!(self, pool => sqlx::query(
                    "UPDATE device_compliance SET evaluated_at = 0
                     WHERE device IN (SELECT id FROM devices WHERE device_type = $1)")
                .bind(t).execute(pool).await.map(|_| ())?);
        }
        Ok(())
    }

    /// Record verdicts; a changed state adds a history entry and its event, in the same
    /// transaction.
    pub async fn record_compliance(&self, verdicts: &[Verdict<'_>]) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for v in verdicts {
                sqlx::query(
                        "INSERT INTO device_compliance (device, state, checks, since, evaluated_at, blocked, telemetry_mark)
                         VALUES ($1, $2, $3, $4, $4, $5, $6)
                         ON CONFLICT (device) DO UPDATE SET checks = excluded.checks, evaluated_at = excluded.evaluated_at,
                             blocked = excluded.blocked, telemetry_mark = excluded.telemetry_mark,
                             since = CASE WHEN device_compliance.state = excluded.state THEN device_compliance.since ELSE excluded.since END,
                             state = excluded.state")
                    .bind(v.device).bind(v.state).bind(v.checks).bind(now).bind(i64::from(v.blocked)).bind(v.mark)
                    .execute(&mut *tx).await?;
                if v.changed {
                    sqlx::query("INSERT INTO compliance_history (device, at, state, checks) VALUES ($1, $2, $3, $4)")
                        .bind(v.device).bind(now).bind(v.state).bind(v.checks).execute(&mut *tx).await?;
                }
                if let Some(event) = v.event {
                    record_event!(&mut *tx, event);
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Forget compliance changes older than `before` (ms), as events are; returns how many.
    pub async fn prune_compliance_history(&self, before: i64) -> Result<u64, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query("DELETE FROM compliance_history WHERE at < $1")
            .bind(before).execute(pool).await?.rows_affected()))
    }

    pub async fn compliance(&self, device: i64) -> Result<Option<ComplianceRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT state, checks, since, evaluated_at, blocked FROM device_compliance WHERE device = $1")
            .bind(device).fetch_optional(pool).await?))
    }

    /// A device's compliance changes, newest first, at most `limit`.
    pub async fn compliance_history(&self, device: i64, limit: i64) -> Result<Vec<ComplianceChange>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT at, state, checks FROM compliance_history WHERE device = $1 ORDER BY at DESC LIMIT $2")
            .bind(device).bind(limit).fetch_all(pool).await?))
    }

    /// Devices whose effective policy includes policy `name`, by device type and state
    /// (`pending` when not evaluated yet).
    pub async fn compliance_counts(&self, name: &str) -> Result<Vec<(String, String, i64)>, StoreError> {
        // The policies column is JSON text; a name is matched as its JSON string.
        let quoted =
            serde_json::Value::from(name).to_string().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        let needle = format!("%\"name\":{quoted}%");
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT d.device_type, COALESCE(c.state, 'pending') AS state, COUNT(*) AS n
                 FROM device_policies p JOIN devices d ON d.id = p.device
                 LEFT JOIN device_compliance c ON c.device = p.device
                 WHERE d.status <> 'removed' AND p.policies LIKE $1 ESCAPE '\\'
                 GROUP BY d.device_type, COALESCE(c.state, 'pending') ORDER BY 1, 2")
            .bind(needle).fetch_all(pool).await?))
    }
}
