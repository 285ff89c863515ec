//! Rollouts: the state machine of each rollout and of each of its devices, in the
//! database, so a restart or another replica continues where it was (docs/rollouts.md).
//! The service (`crate::rollouts`) decides; this module applies, and every step that
//! starts devices checks, in its transaction, that this replica still holds the lease.

use super::{Backend, NewEvent, Store, StoreError, WriteTx, now_ms, record_event, trusted, with_pool, with_write_pool};
use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutRow {
    pub id: i64,
    pub name: String,
    pub artifact: i64,
    pub spec: String,
    pub state: String,
    pub phase: i64,
    pub phase_started_at: i64,
    pub phase_ready_at: Option<i64>,
    pub reason: Option<String>,
    pub rollback: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub done_at: Option<i64>,
    /// Its artifact's tenant, whose devices alone it reaches; absent: the operators'.
    pub tenant: Option<String>,
}

const COLUMNS: &str = "id, name, artifact, spec, state, phase, phase_started_at, phase_ready_at, reason, rollback, \
                       created_by, created_at, updated_at, done_at, tenant";

/// One device of a rollout, as the API lists them.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct RolloutDeviceRow {
    #[serde(rename = "type")]
    pub device_type: String,
    pub id: String,
    pub phase: i64,
    pub state: String,
    /// Download or install progress, percent, as the device reported it.
    pub progress: Option<i64>,
    /// The version it ran when its update started.
    pub from_version: Option<String>,
    /// Its current update (or rollback) operation.
    pub operation: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub reason: Option<String>,
    #[serde(skip)]
    pub position: i64,
}

/// A device whose update (or rollback) is under way, with its operation as it is now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InFlight {
    pub device: i64,
    pub device_type: String,
    pub phase: i64,
    pub state: String,
    pub progress: Option<i64>,
    pub operation: i64,
    pub op_state: String,
    pub response: Option<String>,
    pub started_at: i64,
    /// The device's metadata now (its `firmware` is the version it reports).
    pub metadata: String,
    /// The version it reported when its update started.
    pub from_version: Option<String>,
}

/// A device waiting for its turn, with what deciding about it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Waiting {
    pub device: i64,
    pub device_type: String,
    pub metadata: String,
    pub status: String,
}

/// A device drawn into a phase at creation.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub device: i64,
    pub phase: i64,
    pub position: i64,
}

/// One device to start: its payload (with its own download URL) and grant.
#[derive(Debug, Clone, Serialize)]
pub struct Start {
    pub device: i64,
    pub payload: String,
    pub token_hash: String,
    pub from_version: Option<String>,
}

/// Devices to start in one transaction, as one activity.
pub struct StartBatch<'a> {
    pub rollout: i64,
    pub holder: &'a str,
    /// `FIRMWARE_UPDATE` or `FIRMWARE_ROLLBACK`.
    pub code: &'a str,
    pub kind: &'a str,
    pub actor: &'a str,
    /// The artifact the grants open.
    pub artifact: i64,
    /// When the grants (and the operations) expire.
    pub expires_at: i64,
    pub devices: &'a [Start],
    /// Waiting devices already at the target version.
    pub skipped: &'a [i64],
    /// `pending` for an update, `rolling_back` for a rollback.
    pub state: &'a str,
}

/// A device's new state after its operation moved.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceChange {
    pub device: i64,
    pub state: String,
    pub progress: Option<i64>,
    pub reason: Option<String>,
    pub finished: bool,
}

/// How long a replica's hold on a rollout lasts without being renewed.
pub const LEASE_MS: i64 = 15_000;

impl Store {
    /// Store a rollout and its devices (each in its phase), with its `rollout.created`
    /// event. The first phase starts now.
    pub async fn create_rollout(
        &self,
        name: &str,
        artifact: &super::ArtifactRow,
        spec: &str,
        actor: &str,
        placements: &[Placement],
        event: &NewEvent,
    ) -> Result<RolloutRow, StoreError> {
        let now = now_ms();
        let rows = serde_json::to_string(placements).expect("JSON");
        let insert = if self.is_postgres() {
            "INSERT INTO rollout_devices (rollout, device, phase, position, state)
             SELECT $1, e.device, e.phase, e.position, 'waiting'
             FROM jsonb_to_recordset(CAST($2 AS jsonb)) AS e(device bigint, phase bigint, position bigint)"
        } else {
            "INSERT INTO rollout_devices (rollout, device, phase, position, state)
             SELECT $1, json_extract(value, '$.device'), json_extract(value, '$.phase'), json_extract(value, '$.position'),
                    'waiting'
             FROM json_each($2)"
        };
        let sql = format!(
            "INSERT INTO rollouts (name, artifact, spec, state, phase, phase_started_at, created_by, created_at, updated_at,
                                   tenant)
             VALUES ($1, $2, $3, 'running', 0, $4, $5, $4, $4, $6) RETURNING {COLUMNS}"
        );
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: RolloutRow = sqlx::query_as(trusted(&sql))
                .bind(name).bind(artifact.id).bind(spec).bind(now).bind(actor).bind(&artifact.tenant)
                .fetch_one(&mut *tx).await
                .map_err(|e| StoreError::conflict_or(e, || format!("rollout `{name}`")))?;
            sqlx::query(insert).bind(row.id).bind(&rows).execute(&mut *tx).await?;
            record_event!(&mut *tx, event);
            tx.commit().await?;
            Ok(row)
        })
    }

    pub async fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM rollouts ORDER BY id");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).fetch_all(pool).await?))
    }

    pub async fn rollout(&self, name: &str) -> Result<Option<RolloutRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM rollouts WHERE name = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(name).fetch_optional(pool).await?))
    }

    pub async fn rollout_by_key(&self, id: i64) -> Result<Option<RolloutRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(id).fetch_optional(pool).await?))
    }

    /// Rollouts that still have something to do (running, paused, or over with devices
    /// still under way).
    pub async fn live_rollouts(&self) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT id FROM rollouts WHERE done_at IS NULL ORDER BY id").fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Take or renew this replica's hold on a rollout; false when another replica holds it.
    pub async fn lease_rollout(&self, id: i64, holder: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = with_write_pool!(self, pool => sqlx::query(
                "UPDATE rollouts SET lease_holder = $1, lease_until = $2
                 WHERE id = $3 AND done_at IS NULL AND (lease_holder = $1 OR lease_until < $4)")
            .bind(holder).bind(now + LEASE_MS).bind(id).bind(now)
            .execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Give up a hold (at shutdown), so another replica takes over at once.
    pub async fn release_rollouts(&self, holder: &str) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "UPDATE rollouts SET lease_until = 0 WHERE lease_holder = $1")
            .bind(holder).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// How many devices are in each `(phase, state)`.
    pub async fn rollout_counts(&self, id: i64) -> Result<Vec<(i64, String, i64)>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT phase, state, COUNT(*) FROM rollout_devices WHERE rollout = $1 GROUP BY phase, state
                 ORDER BY phase, state")
            .bind(id).fetch_all(pool).await?))
    }

    /// Devices whose update or rollback is under way, with their operations.
    /// Those whose operation changed at or after `changed_since`, or that started before
    /// `started_before` (due for the timeout), to be precise; `(0, i64::MAX)` reads all.
    pub async fn rollout_in_flight(
        &self,
        id: i64,
        changed_since: i64,
        started_before: i64,
    ) -> Result<Vec<InFlight>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT rd.device, d.device_type, rd.phase, rd.state, rd.progress, rd.operation, o.state AS op_state,
                        o.response, rd.started_at, d.metadata, rd.from_version
                 FROM rollout_devices rd JOIN operations o ON o.id = rd.operation JOIN devices d ON d.id = rd.device
                 WHERE rd.rollout = $1
                   AND rd.state IN ('pending', 'downloading', 'installing', 'rebooting', 'rolling_back')
                   AND (o.updated_at >= $2 OR rd.started_at < $3)")
            .bind(id).bind(changed_since).bind(started_before).fetch_all(pool).await?))
    }

    /// Up to `limit` waiting devices of phases up to `phase`, in their draw order.
    pub async fn rollout_waiting(&self, id: i64, phase: i64, limit: i64) -> Result<Vec<Waiting>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT rd.device, d.device_type, d.metadata, d.status
                 FROM rollout_devices rd JOIN devices d ON d.id = rd.device
                 WHERE rd.rollout = $1 AND rd.state = 'waiting' AND rd.phase <= $2
                 ORDER BY rd.phase, rd.position LIMIT $3")
            .bind(id).bind(phase).bind(limit).fetch_all(pool).await?))
    }

    /// Devices started in the last minute (the rate limit's window).
    pub async fn rollout_started_since(&self, id: i64, since: i64) -> Result<i64, StoreError> {
        let n: (i64,) = with_pool!(self, pool => sqlx::query_as(
                "SELECT COUNT(*) FROM rollout_devices WHERE rollout = $1 AND started_at > $2 AND state <> 'skipped'")
            .bind(id).bind(since).fetch_one(pool).await?);
        Ok(n.0)
    }

    /// Start devices: one activity, one operation per device with its own payload, its
    /// download grant, and the device's row moved from `waiting` (or `succeeded`, for a
    /// rollback) in the same transaction, after checking this replica still holds the
    /// lease. `None`: the lease was lost and nothing was written. A device's row moves
    /// only from the state it was read in, so no device is started twice.
    pub async fn start_rollout_devices(&self, b: &StartBatch<'_>) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let postgres = self.is_postgres();
        let rows = serde_json::to_string(b.devices).expect("JSON");
        let skipped = super::key_list(b.skipped);
        let from_state = if b.state == "rolling_back" { "succeeded" } else { "waiting" };
        let json = |cols: &str| {
            if postgres {
                format!(
                    "(SELECT * FROM jsonb_to_recordset(CAST($1 AS jsonb)) AS e(device bigint, payload text, \
                     token_hash text, from_version text)) AS j{cols}"
                )
            } else {
                format!(
                    "(SELECT json_extract(value, '$.device') AS device, json_extract(value, '$.payload') AS payload,
                             json_extract(value, '$.token_hash') AS token_hash,
                             json_extract(value, '$.from_version') AS from_version FROM json_each($1)) AS j{cols}"
                )
            }
        };
        let operations = format!(
            "INSERT INTO operations (activity, device, code, kind, state, attempts, created_at, updated_at, expires_at,
                                     max_attempts, payload)
             SELECT $2, j.device, $3, $4, 'PENDING', 0, $5, $5, $6, 1, j.payload FROM {} ORDER BY j.device
             RETURNING id, device",
            json("")
        );
        let grants = format!(
            "INSERT INTO artifact_grants (token_hash, artifact, device, expires_at)
             SELECT j.token_hash, $2, j.device, $3 FROM {}",
            json("")
        );
        // An upsert driven by the batch's rows, each a primary-key lookup, with the
        // operation ids the insert returned. An UPDATE … FROM over the JSON rows, or a
        // lookup of each device's operation, makes SQLite parse the batch again for every
        // row of the other side (4 s for 5,000 devices). Every row exists (it was read);
        // only one still in `from_state` moves, and the count of those that moved is
        // checked below.
        let moves = if postgres {
            "(SELECT * FROM jsonb_to_recordset(CAST($1 AS jsonb))
              AS e(device bigint, operation bigint, from_version text)) AS j"
        } else {
            "(SELECT json_extract(value, '$.device') AS device, json_extract(value, '$.operation') AS operation,
                     json_extract(value, '$.from_version') AS from_version FROM json_each($1)) AS j"
        };
        let update = format!(
            "INSERT INTO rollout_devices (rollout, device, phase, position, state, started_at, from_version,
                                          rollback_artifact, operation)
             SELECT $5, j.device, 0, 0, $2, $3, j.from_version,
                    CASE WHEN $2 = 'rolling_back' THEN $6 ELSE NULL END, j.operation
             FROM {moves} WHERE $4 = $4
             ON CONFLICT (rollout, device) DO UPDATE SET state = excluded.state, progress = NULL, reason = NULL,
                 started_at = excluded.started_at, finished_at = NULL,
                 from_version = COALESCE(excluded.from_version, rollout_devices.from_version),
                 rollback_artifact = COALESCE(excluded.rollback_artifact, rollout_devices.rollback_artifact),
                 operation = excluded.operation
             WHERE rollout_devices.state = '{from_state}'"
        );
        let skip = format!(
            "UPDATE rollout_devices SET state = 'skipped', started_at = $1, finished_at = $1,
                 reason = 'already at the target version'
             WHERE rollout = $2 AND state = 'waiting' AND device IN {}",
            super::key_rows(postgres, "$3")
        );
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let held = sqlx::query(
                    "UPDATE rollouts SET lease_until = $1, updated_at = $2
                     WHERE id = $3 AND lease_holder = $4 AND lease_until >= $2")
                .bind(now + LEASE_MS).bind(now).bind(b.rollout).bind(b.holder)
                .execute(&mut *tx).await?.rows_affected();
            if held == 0 {
                return Ok(None);
            }
            if !b.skipped.is_empty() {
                sqlx::query(trusted(&skip)).bind(now).bind(b.rollout).bind(&skipped).execute(&mut *tx).await?;
            }
            if b.devices.is_empty() {
                tx.commit().await?;
                return Ok(Some(0));
            }
            let (activity,): (i64,) = sqlx::query_as(
                    "INSERT INTO activities (code, kind, payload, created_by, created_at, expires_at, max_attempts)
                     VALUES ($1, $2, NULL, $3, $4, $5, 1) RETURNING id")
                .bind(b.code).bind(b.kind).bind(b.actor).bind(now).bind(b.expires_at)
                .fetch_one(&mut *tx).await?;
            let inserted: Vec<(i64, i64)> = sqlx::query_as(trusted(&operations))
                .bind(&rows).bind(activity).bind(b.code).bind(b.kind).bind(now).bind(b.expires_at)
                .fetch_all(&mut *tx).await?;
            let operation: std::collections::HashMap<i64, i64> = inserted.into_iter().map(|(id, d)| (d, id)).collect();
            let moves: Vec<serde_json::Value> = b.devices.iter().map(|d| serde_json::json!({
                "device": d.device, "operation": operation.get(&d.device), "from_version": d.from_version,
            })).collect();
            let moves = serde_json::Value::from(moves).to_string();
            sqlx::query(trusted(&grants)).bind(&rows).bind(b.artifact).bind(b.expires_at).execute(&mut *tx).await?;
            let moved = sqlx::query(trusted(&update))
                .bind(&moves).bind(b.state).bind(now).bind(activity).bind(b.rollout).bind(b.artifact)
                .execute(&mut *tx).await?.rows_affected();
            if moved != b.devices.len() as u64 {
                // A device left the state it was read in (this replica's view was stale):
                // nothing of this batch is written.
                tx.rollback().await?;
                return Ok(None);
            }
            let event = crate::events::Event::ActivityAdded {
                activity,
                code: b.code.to_string(),
                operations: b.devices.len() as u64,
                actor: b.actor.to_string(),
            };
            record_event!(&mut *tx, &event.record());
            tx.commit().await?;
            Ok(Some(activity))
        })
    }

    /// Record where devices' updates are, in one statement.
    pub async fn update_rollout_devices(&self, rollout: i64, changes: &[DeviceChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let rows = serde_json::to_string(changes).expect("JSON");
        let source = if self.is_postgres() {
            "(SELECT * FROM jsonb_to_recordset(CAST($1 AS jsonb))
              AS e(device bigint, state text, progress bigint, reason text, finished boolean)) AS j"
        } else {
            "(SELECT json_extract(value, '$.device') AS device, json_extract(value, '$.state') AS state,
                     json_extract(value, '$.progress') AS progress, json_extract(value, '$.reason') AS reason,
                     json_extract(value, '$.finished') AS finished FROM json_each($1)) AS j"
        };
        // An upsert driven by the changes (a primary-key lookup each; see
        // `start_rollout_devices`): every row exists.
        let sql = format!(
            "INSERT INTO rollout_devices (rollout, device, phase, position, state, progress, reason, finished_at)
             SELECT $3, j.device, 0, 0, j.state, j.progress, j.reason, CASE WHEN j.finished THEN $2 ELSE NULL END
             FROM {source} WHERE true
             ON CONFLICT (rollout, device) DO UPDATE SET state = excluded.state,
                 progress = COALESCE(excluded.progress, rollout_devices.progress),
                 reason = COALESCE(excluded.reason, rollout_devices.reason),
                 finished_at = COALESCE(excluded.finished_at, rollout_devices.finished_at)"
        );
        with_write_pool!(self, pool => sqlx::query(trusted(&sql)).bind(&rows).bind(now).bind(rollout)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Move a rollout from one of `from` to `to` (with a reason, and rollback state when
    /// given), with its event; false when it was in none of `from`.
    pub async fn rollout_transition(
        &self,
        id: i64,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let list: Vec<String> = from.iter().map(|s| format!("'{s}'")).collect();
        let sql = format!(
            "UPDATE rollouts SET state = $1, reason = COALESCE($2, reason), updated_at = $3
             WHERE id = $4 AND state IN ({})",
            list.join(", ")
        );
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(trusted(&sql)).bind(to).bind(reason).bind(now).bind(id)
                .execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                if to == "aborted" || to == "cancelled" {
                    sqlx::query(
                        "UPDATE rollout_devices SET state = 'cancelled', finished_at = $1,
                             reason = 'the rollout stopped before its turn'
                         WHERE rollout = $2 AND state = 'waiting'")
                        .bind(now).bind(id).execute(&mut *tx).await?;
                }
                record_event!(&mut *tx, event);
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    /// Enter phase `phase` (from `phase - 1`), with its event.
    pub async fn rollout_next_phase(&self, id: i64, phase: i64, event: &NewEvent) -> Result<bool, StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                    "UPDATE rollouts SET phase = $1, phase_started_at = $2, phase_ready_at = NULL, updated_at = $2
                     WHERE id = $3 AND phase = $4 AND state IN ('running', 'paused')")
                .bind(phase).bind(now).bind(id).bind(phase - 1)
                .execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                record_event!(&mut *tx, event);
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    /// Note (or clear) when the current phase first met its advance condition.
    pub async fn rollout_phase_ready(&self, id: i64, at: Option<i64>) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query("UPDATE rollouts SET phase_ready_at = $1 WHERE id = $2")
            .bind(at).bind(id).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Set the rollback state (`running`, `done`), with its event when given.
    pub async fn rollout_rollback(&self, id: i64, state: &str, event: Option<&NewEvent>) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE rollouts SET rollback = $1, updated_at = $2 WHERE id = $3")
                .bind(state).bind(now_ms()).bind(id).execute(&mut *tx).await?;
            if let Some(e) = event {
                record_event!(&mut *tx, e);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Mark a rollout over (nothing left to drive), with its event when given.
    pub async fn rollout_done(&self, id: i64, state: Option<&str>, event: Option<&NewEvent>) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE rollouts SET done_at = $1, updated_at = $1, state = COALESCE($2, state) WHERE id = $3")
                .bind(now).bind(state).bind(id).execute(&mut *tx).await?;
            if let Some(e) = event {
                record_event!(&mut *tx, e);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Devices that updated and may be rolled back: `(device, type, the version they had)`.
    pub async fn rollout_succeeded(
        &self,
        id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, Option<String>)>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT rd.device, d.device_type, rd.from_version FROM rollout_devices rd JOIN devices d ON d.id = rd.device
                 WHERE rd.rollout = $1 AND rd.state = 'succeeded' ORDER BY rd.phase, rd.position LIMIT $2")
            .bind(id).bind(limit).fetch_all(pool).await?))
    }

    /// A rollout's devices, in phase and draw order, filtered by state and phase.
    pub async fn rollout_devices(
        &self,
        id: i64,
        state: Option<&str>,
        phase: Option<i64>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RolloutDeviceRow>, StoreError> {
        let mut f = super::Filters::new(4);
        if let Some(s) = state {
            f.and("rd.state = ?", super::Param::Text(s.into()));
        }
        if let Some(p) = phase {
            f.and("rd.phase = ?", super::Param::Int(p));
        }
        let sql = format!(
            "SELECT d.device_type, d.device_id AS id, rd.phase, rd.state, rd.progress, rd.from_version, rd.operation,
                    rd.started_at, rd.finished_at, rd.reason, rd.position
             FROM rollout_devices rd JOIN devices d ON d.id = rd.device
             WHERE rd.rollout = $1 AND rd.position > $2{} ORDER BY rd.position LIMIT $3",
            f.sql
        );
        Ok(with_pool!(self, pool => super::bind_filters!(
                sqlx::query_as(trusted(&sql)).bind(id).bind(after).bind(limit), f)
            .fetch_all(pool).await?))
    }
}

impl Store {
    /// The live devices `targets` names: `(key, type, metadata)`, by key.
    pub async fn target_devices(&self, targets: &super::TargetSet) -> Result<Vec<(i64, String, String)>, StoreError> {
        let predicate = targets.predicate(self.is_postgres(), 1);
        let sql =
            format!("SELECT d.id, d.device_type, d.metadata FROM devices d WHERE {} ORDER BY d.id", predicate.sql);
        Ok(with_pool!(self, pool => super::bind_filters!(sqlx::query_as(trusted(&sql)), predicate)
            .fetch_all(pool).await?))
    }
}

impl Store {
    /// Drive a rollout again (an admin's rollback of one that was over).
    pub async fn rollout_reopen(&self, id: i64) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query("UPDATE rollouts SET done_at = NULL WHERE id = $1")
            .bind(id).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Cancel the update operations of a rollout not yet delivered (PENDING, NOTNOW), and
    /// count their devices `cancelled`, not failed: in one transaction, whatever their
    /// number, with one `operations.cancelled` event. Returns how many.
    pub async fn rollout_cancel_queued(&self, id: i64, name: &str, actor: &str) -> Result<u64, StoreError> {
        let now = now_ms();
        let queued = "SELECT rd.operation FROM rollout_devices rd WHERE rd.rollout = $3 AND rd.state = 'pending'";
        let statements = super::writes::move_where(
            &format!("state IN ('PENDING', 'NOTNOW') AND id IN ({queued})"),
            "CANCELLED",
            self.is_postgres(),
        );
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut n = 0;
            for sql in &statements {
                n = sqlx::query(trusted(sql)).bind(actor).bind(now).bind(id).execute(&mut *tx).await?.rows_affected();
            }
            sqlx::query(
                "UPDATE rollout_devices SET state = 'cancelled', finished_at = $1,
                     reason = 'the rollout stopped before the update was delivered'
                 WHERE rollout = $2 AND state = 'pending'
                   AND operation IN (SELECT id FROM operations WHERE state = 'CANCELLED')")
                .bind(now).bind(id).execute(&mut *tx).await?;
            if n > 0 {
                let event = crate::events::Event::OperationsCancelled {
                    operation: None,
                    activity: None,
                    device: None,
                    count: n,
                    actor: actor.to_string(),
                };
                let mut e = event.record();
                e.target = Some(format!("rollout/{name}"));
                record_event!(&mut *tx, &e);
            }
            tx.commit().await?;
            Ok(n)
        })
    }
}

impl Store {
    /// Delete a rollout that is over (`done_at` set) and its devices' rows, with its event;
    /// false when it is not over.
    pub async fn delete_rollout(&self, id: i64, event: &NewEvent) -> Result<bool, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM rollout_devices WHERE rollout = $1 AND EXISTS
                         (SELECT 1 FROM rollouts WHERE id = $1 AND done_at IS NOT NULL)")
                .bind(id).execute(&mut *tx).await?;
            let n = sqlx::query("DELETE FROM rollouts WHERE id = $1 AND done_at IS NOT NULL")
                .bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                record_event!(&mut *tx, event);
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }
}
