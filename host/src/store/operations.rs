//! Activities, operations and their transitions. Every state change goes through
//! [`crate::ops::next`] and is recorded in `transitions` in the same transaction.

use super::devices::{DeviceQuery, DeviceRow};
use super::writes::{self, Write, Written};
use super::{
    Backend, Filters, Param, Store, StoreError, WriteTx, bind_filters, decode, now_ms, trusted, values_placeholders,
    with_pool, with_write_pool,
};
use crate::ops::{self, Event, Kind, State};
use serde::Serialize;
use sqlx::{FromRow, Row};

/// How a device is named when it is read with its queue ([`Store::device_and_queue`]).
#[derive(Debug, Clone, Copy)]
pub enum DeviceKey<'a> {
    /// The hash of a live credential it bears (removed devices are not found).
    Credential(&'a str),
    /// Its row's key.
    Key(i64),
    /// Its type and id.
    Name(&'a str, &'a str),
}

/// Who an activity is for: the union of devices (keys), static groups (keys), tags and
/// dynamic groups' queries. Removed devices are never targets.
#[derive(Debug, Clone, Default)]
pub struct TargetSet {
    pub devices: Vec<i64>,
    pub groups: Vec<i64>,
    pub tags: Vec<String>,
    pub queries: Vec<DeviceQuery>,
    /// A scoped caller's reach: of the targets, only devices it admits.
    pub within: Option<crate::scope::Reach>,
}

/// A fan-out this large refreshes PostgreSQL's statistics before superseding.
const ANALYZE_AFTER: u64 = 10_000;

/// Explicit device lists longer than this must use a group (bind-parameter limits).
pub const MAX_EXPLICIT_DEVICES: usize = 10_000;

/// The actor of an operation's move back to the queue when its device never answered
/// it ([`Store::requeue_unanswered`]), and of its end when that happened too often.
pub const NO_ANSWER_ACTOR: &str = "system:no-answer";

/// How many times an operation handed out by a poll may go unanswered and be offered
/// again; the next time it ends in ERROR, so a device that takes an operation and never
/// answers (it crashes on it) is not given it for ever.
pub const MAX_UNANSWERED: i64 = 3;

impl TargetSet {
    /// A SQL condition over `devices d` selecting the targets (in `sql`), with its
    /// parameters numbered from `first`.
    pub(crate) fn predicate(&self, postgres: bool, first: usize) -> Filters {
        let mut f = Filters::new(first);
        let mut any = vec!["1 = 0".to_string()];
        if !self.devices.is_empty() {
            let list: Vec<String> = self.devices.iter().map(|d| f.placeholder(Param::Int(*d))).collect();
            any.push(format!("d.id IN ({})", list.join(", ")));
        }
        if !self.groups.is_empty() {
            let list: Vec<String> = self.groups.iter().map(|g| f.placeholder(Param::Int(*g))).collect();
            any.push(format!(
                "d.id IN (SELECT m.device FROM group_members m WHERE m.group_id IN ({}))",
                list.join(", ")
            ));
        }
        if !self.tags.is_empty() {
            let list: Vec<String> = self.tags.iter().map(|t| f.placeholder(Param::Text(t.clone()))).collect();
            any.push(format!("d.id IN (SELECT t.device FROM device_tags t WHERE t.tag IN ({}))", list.join(", ")));
        }
        for q in &self.queries {
            any.push(q.condition(postgres, &mut f));
        }
        f.sql = format!("d.status <> 'removed' AND ({})", any.join(" OR "));
        if let Some(reach) = &self.within {
            let condition = reach.condition(postgres, &mut f);
            f.sql = format!("{} AND {condition}", f.sql);
        }
        f
    }
}

/// What an admin adds.
#[derive(Debug, Clone)]
pub struct NewActivity {
    pub code: String,
    pub kind: Kind,
    pub payload: Option<String>,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub max_attempts: i64,
}

/// Where a page of a listing starts: after an id, oldest first (the API's default), or
/// before one, newest first (what a console or a CLI shows first).
#[derive(Debug, Clone, Copy)]
pub enum Cursor {
    After(i64),
    Before(i64),
}

impl Cursor {
    /// The id condition on `$1` and the order.
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            Cursor::After(_) => ("id > $1", "id"),
            Cursor::Before(_) => ("id < $1", "id DESC"),
        }
    }

    fn id(self) -> i64 {
        match self {
            Cursor::After(id) | Cursor::Before(id) => id,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct ActivityRow {
    pub id: i64,
    pub code: String,
    #[sqlx(try_from = "String")]
    pub kind: Kind,
    #[serde(skip)]
    pub payload: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub max_attempts: i64,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct OperationRow {
    pub id: i64,
    pub activity: i64,
    #[serde(skip)]
    pub device: i64,
    pub code: String,
    #[sqlx(try_from = "String")]
    pub kind: Kind,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
    /// The device's last response (JSON text).
    pub response: Option<String>,
    /// The device it is for: its type and id (the API shows them as `device`).
    #[serde(skip)]
    pub device_type: String,
    #[serde(skip)]
    pub device_id: String,
}

/// An operation ready to hand to a plugin's `encode`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedOperation {
    pub id: i64,
    pub code: String,
    #[sqlx(try_from = "String")]
    pub kind: Kind,
    pub payload: Option<String>,
    pub expires_at: Option<i64>,
    /// `PENDING`, `NOTNOW` or `IN_PROGRESS`: which of the queried states it is in.
    pub state: String,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct TransitionRow {
    pub operation: i64,
    pub from_state: String,
    pub to_state: String,
    pub actor: String,
    pub at: i64,
    pub response: Option<String>,
}

/// What became of one reported result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ResultOutcome {
    Applied {
        operation: i64,
        from: State,
        to: State,
    },
    /// Nothing changed: a repeated report, or one for a finished operation.
    Unchanged {
        operation: i64,
        state: State,
    },
    /// No such operation for this device.
    Unknown {
        operation: i64,
    },
}

/// An operation's columns, and its device's identity (by its key: one index read each).
const OP_COLUMNS: &str = "id, activity, device, code, kind, state, attempts, max_attempts, created_at, updated_at,
    expires_at, response,
    (SELECT d.device_type FROM devices d WHERE d.id = operations.device) AS device_type,
    (SELECT d.device_id FROM devices d WHERE d.id = operations.device) AS device_id";

impl Store {
    /// Store an activity and one operation per targeted device, in one transaction,
    /// before anything is delivered; returns the activity and how many operations. The
    /// fan-out is one `INSERT … SELECT` over the target predicate, so a group of 100,000
    /// devices never travels through the host. A command supersedes older PENDING
    /// commands with the same code for the devices it reaches (REPEATED).
    pub async fn add_activity(&self, a: &NewActivity, targets: &TargetSet) -> Result<(ActivityRow, u64), StoreError> {
        let now = now_ms();
        let predicate = targets.predicate(self.is_postgres(), 7);
        let insert = format!(
            "INSERT INTO operations (activity, device, code, kind, state, attempts, created_at, updated_at, expires_at, max_attempts)
             SELECT $1, d.id, $2, $3, 'PENDING', 0, $4, $4, $5, $6 FROM devices d WHERE {} ORDER BY d.id", predicate.sql);
        // The older commands: same code, still pending, for a device this activity reached,
        // against the new activity's devices as an uncorrelated set. Older only: on
        // PostgreSQL an activity added at the same moment may commit first, and its
        // commands are newer than this one's, whatever the order of commits.
        let older = "SELECT o.id FROM operations o
                     WHERE o.state = 'PENDING' AND o.code = $3 AND o.kind = 'command' AND o.activity < $4
                       AND o.device IN (SELECT n.device FROM operations n WHERE n.activity = $4)";
        let supersede =
            writes::move_where(&format!("state = 'PENDING' AND id IN ({older})"), "REPEATED", self.is_postgres());
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let activity: ActivityRow = sqlx::query_as(
                "INSERT INTO activities (code, kind, payload, created_by, created_at, expires_at, max_attempts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 RETURNING id, code, kind, payload, created_by, created_at, expires_at, max_attempts")
                .bind(&a.code).bind(a.kind.as_str()).bind(&a.payload).bind(&a.created_by).bind(now)
                .bind(a.expires_at).bind(a.max_attempts)
                .fetch_one(&mut *tx).await?;
            let q = sqlx::query(trusted(&insert))
                .bind(activity.id).bind(&a.code).bind(a.kind.as_str()).bind(now).bind(a.expires_at).bind(a.max_attempts);
            let n = bind_filters!(q, predicate).execute(&mut *tx).await?.rows_affected();
            if a.kind == Kind::Command && n >= ANALYZE_AFTER && matches!(self.backend, Backend::Postgres(_)) {
                // Right after a large fan-out PostgreSQL has no statistics for the new rows
                // and plans the superseding join as a nested loop (minutes for 100k
                // devices). ANALYZE samples the table, in this transaction, in milliseconds.
                sqlx::query("ANALYZE operations").execute(&mut *tx).await?;
            }
            if a.kind == Kind::Command {
                for sql in &supersede {
                    sqlx::query(trusted(sql)).bind(&a.created_by).bind(now).bind(&a.code).bind(activity.id)
                        .execute(&mut *tx).await?;
                }
            }
            let event = crate::events::Event::ActivityAdded {
                activity: activity.id,
                code: a.code.clone(),
                operations: n,
                actor: a.created_by.clone(),
            };
            // A tenant's caller's activity is its tenant's: the row names no device, and
            // the tenant reads it in its event log like its groups' and policies' rows.
            let mut record = event.record();
            record.tenant = targets.within.as_ref().and_then(|r| r.tenant_of()).map(str::to_string);
            super::record_event!(&mut *tx, &record);
            tx.commit().await?;
            Ok((activity, n))
        })
    }

    /// The device types among the targets (for validation by each type's plugin).
    /// How many targeted devices a reach leaves out (to refuse rather than narrow).
    pub async fn targets_outside(&self, targets: &TargetSet, reach: &crate::scope::Reach) -> Result<i64, StoreError> {
        let all = TargetSet { within: None, ..targets.clone() };
        let mut predicate = all.predicate(self.is_postgres(), 1);
        let condition = reach.condition(self.is_postgres(), &mut predicate);
        let mut sql = format!("SELECT COUNT(*) FROM devices d WHERE {} AND NOT {condition}", predicate.sql);
        // Another tenant's devices are not "outside the scope": for this caller they do not
        // exist, and a count of them would tell how many carry a tag or sit in a group.
        if let Some(tenant) = reach.tenant_of() {
            let p = predicate.placeholder(Param::Text(tenant.to_string()));
            sql.push_str(&format!(" AND d.tenant = {p}"));
        }
        let (n,): (i64,) =
            with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)), predicate).fetch_one(pool).await?);
        Ok(n)
    }

    pub async fn target_types(&self, targets: &TargetSet) -> Result<Vec<String>, StoreError> {
        let predicate = targets.predicate(self.is_postgres(), 1);
        let sql =
            format!("SELECT DISTINCT d.device_type FROM devices d WHERE {} ORDER BY d.device_type", predicate.sql);
        let rows: Vec<(String,)> =
            with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)), predicate).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// A device's queued operations (PENDING, and NOTNOW unless `skip_not_now`), oldest
    /// first, at most `limit`.
    pub async fn queued(
        &self,
        device: i64,
        limit: i64,
        skip_not_now: bool,
    ) -> Result<Vec<QueuedOperation>, StoreError> {
        let now = now_ms();
        let states = if skip_not_now { "'PENDING'" } else { super::queued_states!() };
        let fetch = || self.operations_in(device, limit, states);
        let rows = fetch().await?;
        if rows.iter().any(|q| q.expires_at.is_some_and(|e| e <= now)) {
            self.expire(Some(device), now).await?;
            return fetch().await;
        }
        Ok(rows)
    }

    /// What a device message needs before its plugin sees it, read together: the device
    /// (as [`Store::device_for_credential`], [`Store::device_by_key`] or [`Store::device`])
    /// and its queue, the PENDING and NOTNOW operations oldest first, at most `limit` (as
    /// [`Store::queued`], but without expiring: a caller that finds an expired one reads
    /// `queued` instead).
    ///
    /// Why together: a poll, and a push, need both, and each read has a fixed cost larger
    /// than its work. On SQLite that is a read transaction (the WAL's read lock and, after
    /// any commit, the page cache checked again); on PostgreSQL a round trip. A message
    /// that is not a poll reads a few rows it does not use.
    pub async fn device_and_queue(
        &self,
        which: DeviceKey<'_>,
        limit: i64,
    ) -> Result<Option<(DeviceRow, Vec<QueuedOperation>)>, StoreError> {
        let now = now_ms();
        let pool = match &self.backend {
            Backend::Sqlite { direct, .. } => {
                return direct.read(|c| super::direct::device_and_queue(c, which, now, limit));
            }
            Backend::Postgres(pool) => pool,
        };
        // One row per queued operation (or one with NULLs when none is), each with the
        // device's columns.
        macro_rules! device_and_queue {
            ($from_where:literal) => {
                concat!(
                    "SELECT d.id, d.device_type, d.device_id, d.name, d.owner, d.ownership, d.status, d.metadata,
                            d.push_token, d.session, d.enrolled_at, d.last_seen_at, d.tenant,
                            q.id AS op_id, q.code AS op_code, q.kind AS op_kind, q.payload AS op_payload,
                            q.expires_at AS op_expires_at, q.state AS op_state ",
                    $from_where,
                    " LEFT JOIN LATERAL (
                         SELECT o.id, o.code, o.kind, COALESCE(o.payload, a.payload) AS payload, o.expires_at, o.state FROM operations o
                         JOIN activities a ON a.id = o.activity
                         WHERE o.device = d.id AND o.state IN (",
                    super::queued_states!(),
                    ") AND ",
                    super::not_held_back!(),
                    " ORDER BY o.id LIMIT $1
                     ) q ON true
                     WHERE ",
                )
            };
        }
        let query = match which {
            DeviceKey::Credential(token_hash) => sqlx::query(concat!(
                device_and_queue!("FROM device_credentials c JOIN devices d ON d.id = c.device"),
                "c.token_hash = $2 AND c.revoked_at IS NULL AND c.expires_at > $3 AND d.status <> 'removed' ORDER BY q.id"
            ))
            .bind(limit)
            .bind(token_hash)
            .bind(now),
            DeviceKey::Key(id) => {
                sqlx::query(concat!(device_and_queue!("FROM devices d"), "d.id = $2 ORDER BY q.id")).bind(limit).bind(id)
            }
            DeviceKey::Name(device_type, device_id) => sqlx::query(concat!(
                device_and_queue!("FROM devices d"),
                "d.device_type = $2 AND d.device_id = $3 ORDER BY q.id"
            ))
            .bind(limit)
            .bind(device_type)
            .bind(device_id),
        };
        let rows = query.fetch_all(pool).await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let device = DeviceRow::from_row(first)?;
        let mut queue = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(id) = r.try_get::<Option<i64>, _>("op_id")? {
                queue.push(QueuedOperation {
                    id,
                    code: r.try_get("op_code")?,
                    kind: Kind::parse(r.try_get("op_kind")?).map_err(decode)?,
                    payload: r.try_get("op_payload")?,
                    expires_at: r.try_get("op_expires_at")?,
                    state: r.try_get("op_state")?,
                });
            }
        }
        Ok(Some((device, queue)))
    }

    /// A device's operations handed out but not yet answered (IN_PROGRESS), oldest first:
    /// what a push re-sends when the device comes back, in case the last send was lost.
    pub async fn in_progress(&self, device: i64, limit: i64) -> Result<Vec<QueuedOperation>, StoreError> {
        self.operations_in(device, limit, "'IN_PROGRESS'").await
    }

    /// A device's operations in `states` (a constant list of quoted states), oldest first.
    async fn operations_in(
        &self,
        device: i64,
        limit: i64,
        states: &'static str,
    ) -> Result<Vec<QueuedOperation>, StoreError> {
        if let Some(direct) = self.direct() {
            return direct.read(|c| super::direct::operations_in(c, device, limit, states));
        }
        let sql = queue_sql(states);
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(device).bind(limit).fetch_all(pool).await?))
    }

    /// The database's plan for reading a device's queue (PENDING and NOTNOW), as it
    /// explains it: for tests that the read stays on its index (`operations_queued`).
    #[doc(hidden)]
    pub async fn queue_plan(&self) -> Result<String, StoreError> {
        const QUEUED: &str = super::queued_states!();
        let pool = match &self.backend {
            Backend::Sqlite { direct, .. } => {
                return direct.read(|c| super::direct::plan(c, &super::direct::queue_sql(QUEUED)));
            }
            Backend::Postgres(pool) => pool,
        };
        let mut tx = pool.begin().await?;
        // The tests' tables are tiny, and on a tiny table a sequential scan is cheapest
        // whatever the indexes: ask which index PostgreSQL picks when it must pick one.
        sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await?;
        let explain = format!("EXPLAIN {}", queue_sql(QUEUED));
        let rows: Vec<(String,)> =
            sqlx::query_as(trusted(&explain)).bind(0_i64).bind(10_i64).fetch_all(&mut *tx).await?;
        Ok(rows.into_iter().map(|(line,)| line).collect::<Vec<_>>().join("\n"))
    }

    /// The devices for which an activity still has queued operations: key, type and id
    /// (so a caller can tell which are reachable before reading anything more of them).
    pub async fn activity_queued_devices(&self, activity: i64) -> Result<Vec<(i64, String, String)>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT o.device, d.device_type, d.device_id FROM operations o JOIN devices d ON d.id = o.device
                 WHERE o.activity = $1 AND o.state IN ('PENDING', 'NOTNOW') ORDER BY o.device")
            .bind(activity).fetch_all(pool).await?))
    }

    /// Expire live operations past their TTL: one device's, or everyone's (`None`).
    /// Returns how many expired.
    pub async fn expire(&self, device: Option<i64>, now: i64) -> Result<u64, StoreError> {
        let mut f = Filters::new(3);
        if let Some(d) = device {
            f.and("device = ?", Param::Int(d));
        }
        let filter = format!(
            "state IN ('PENDING', 'NOTNOW', 'IN_PROGRESS') AND expires_at IS NOT NULL AND expires_at <= $2{}",
            f.sql
        );
        let statements = writes::move_where(&filter, "EXPIRED", self.is_postgres());
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut n = 0;
            for sql in &statements {
                n = bind_filters!(sqlx::query(trusted(sql)).bind("system").bind(now), f)
                    .execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Put back in the queue the operations handed out by a poll (`delivery_actor`) that
    /// have had no answer since `cutoff` (the device took them and said nothing since: the
    /// poll's response was lost on the way, or the device crashed running them). Each goes
    /// back to PENDING (actor [`NO_ANSWER_ACTOR`]) and is offered again, first in its
    /// device's queue, at most [`MAX_UNANSWERED`] times; the next silence ends it in
    /// ERROR. A late answer to an earlier delivery still counts, once: a result on a
    /// PENDING operation moves it, and results are idempotent after that. Pushes are not
    /// swept: a device re-sent what it holds unanswered when it comes online (the broker
    /// keeps QoS 1 messages for it until then). Returns how many went back to the queue,
    /// and how many ended.
    pub async fn requeue_unanswered(&self, delivery_actor: &str, cutoff: i64) -> Result<(u64, u64), StoreError> {
        // The sweep is bounded; what is left is taken at the next one.
        let rows: Vec<(i64, i64, i64)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT o.id, o.device,
                        (SELECT COUNT(*) FROM transitions n WHERE n.operation = o.id AND n.actor = $3)
                 FROM operations o
                 WHERE o.state = 'IN_PROGRESS' AND o.updated_at <= $1
                   AND (SELECT t.actor FROM transitions t
                        WHERE t.operation = o.id AND t.to_state = 'IN_PROGRESS'
                        ORDER BY t.id DESC LIMIT 1) = $2
                 ORDER BY o.id LIMIT 1000")
            .bind(cutoff).bind(delivery_actor).bind(NO_ANSWER_ACTOR).fetch_all(pool).await?);
        let mut by_device: std::collections::BTreeMap<i64, Vec<(i64, Event, Option<String>)>> = Default::default();
        for (id, device, unanswered) in rows {
            let event = if unanswered < MAX_UNANSWERED {
                (id, Event::NoAnswer, None)
            } else {
                let error = format!("no answer from the device to {} deliveries", unanswered + 1);
                (id, Event::Fail, Some(serde_json::json!({ "error": error }).to_string()))
            };
            by_device.entry(device).or_default().push(event);
        }
        let (mut requeued, mut ended) = (0, 0);
        for (device, events) in by_device {
            // Each move is made only from IN_PROGRESS: an answer that came since the read
            // wins, and the sweep then changes nothing.
            for outcome in self.apply_events(device, &events, NO_ANSWER_ACTOR).await? {
                match outcome {
                    ResultOutcome::Applied { to: State::Pending, .. } => requeued += 1,
                    ResultOutcome::Applied { .. } => ended += 1,
                    _ => {}
                }
            }
        }
        Ok((requeued, ended))
    }

    /// Claim operations the device is about to be given: IN_PROGRESS, attempt counted,
    /// all of them or none. `false` when another delivery claimed one of them first (then
    /// nothing moved, and the caller must not send them). Written in a group commit with
    /// other devices' (`commit.rs`).
    pub async fn mark_delivered(&self, device: i64, ids: &[i64], actor: &str) -> Result<bool, StoreError> {
        if ids.is_empty() {
            return Ok(true);
        }
        match self.grouped(Write::Deliver { device, ids: ids.to_vec(), actor: actor.to_string() }).await? {
            Written::Delivered(claimed) => Ok(claimed),
            Written::Events(_) | Written::Recorded => {
                Err(StoreError::Db(sqlx::Error::Protocol("group commit answered out of order".into())))
            }
        }
    }

    /// Apply results a device reported, in one transaction. Reports for operations the
    /// device does not have are `Unknown`; reports that change nothing are `Unchanged`.
    pub async fn apply_results(
        &self,
        device: i64,
        results: &[(i64, ops::Reported, Option<String>)],
    ) -> Result<Vec<ResultOutcome>, StoreError> {
        let events: Vec<_> = results.iter().map(|(id, r, resp)| (*id, Event::Result(*r), resp.clone())).collect();
        self.apply_events(device, &events, "device").await
    }

    /// Give up on one operation of a device (its plugin cannot encode it): ERROR now.
    pub async fn fail(
        &self,
        device: i64,
        operation: i64,
        response: String,
        actor: &str,
    ) -> Result<ResultOutcome, StoreError> {
        let mut out = self.apply_events(device, &[(operation, Event::Fail, Some(response))], actor).await?;
        Ok(out.remove(0))
    }

    /// Move operations of one device by `events`, each through [`ops::next`], recording
    /// every change as a transition by `actor`; all in one transaction.
    pub async fn apply_events(
        &self,
        device: i64,
        results: &[(i64, Event, Option<String>)],
        actor: &str,
    ) -> Result<Vec<ResultOutcome>, StoreError> {
        match self.grouped(Write::Events { device, events: results.to_vec(), actor: actor.to_string() }).await? {
            Written::Events(out) => Ok(out),
            Written::Delivered(_) | Written::Recorded => {
                Err(StoreError::Db(sqlx::Error::Protocol("group commit answered out of order".into())))
            }
        }
    }

    /// Run `writes` in one transaction, in order; the group committer's unit of work.
    pub(super) async fn write_group(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
        let now = now_ms();
        let is_postgres = matches!(self.backend, Backend::Postgres(_));
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut written = Vec::with_capacity(writes.len());
            for w in writes {
                match w {
                    Write::Deliver { device, ids, actor } if is_postgres => {
                        let mut q = sqlx::query_as(trusted(&writes::claim_and_deliver_pg(ids.len())))
                            .bind(actor.as_str())
                            .bind(now)
                            .bind(*device);
                        for id in ids {
                            q = q.bind(*id);
                        }
                        let (moved,): (i64,) = q.fetch_one(&mut *tx).await?;
                        written.push(Written::Delivered(moved == ids.len() as i64));
                    }
                    Write::Deliver { device, ids, actor } => {
                        let [claim, transitions, update] = writes::claim_and_deliver_sql(ids.len(), is_postgres);
                        let bind = |sql: &'_ str| {
                            let mut q = sqlx::query(trusted(sql)).bind(actor.as_str()).bind(now).bind(*device);
                            for id in ids {
                                q = q.bind(*id);
                            }
                            q
                        };
                        let claim = writes::postgres(&claim);
                        let claimed = bind(&claim).fetch_all(&mut *tx).await?.len();
                        if claimed != ids.len() {
                            written.push(Written::Delivered(false));
                            continue;
                        }
                        for sql in [transitions, update] {
                            bind(&writes::postgres(&sql)).execute(&mut *tx).await?;
                        }
                        written.push(Written::Delivered(true));
                    }
                    Write::Events { device, events, actor } => {
                        let mut out = Vec::with_capacity(events.len());
                        for (id, event, response) in events {
                            let row: Option<(String, i64, i64)> =
                                sqlx::query_as(trusted(&writes::PG_EVENT[0]))
                                    .bind(*id).bind(*device).fetch_optional(&mut *tx).await?;
                            let (from, to) = match writes::step(*id, *event, row) {
                                Ok(step) => step,
                                Err(outcome) => {
                                    if writes::is_progress(*event, &outcome) {
                                        sqlx::query(trusted(&writes::PG_EVENT[3]))
                                            .bind(response).bind(now).bind(*id)
                                            .execute(&mut *tx).await?;
                                    }
                                    out.push(outcome);
                                    continue;
                                }
                            };
                            if is_postgres {
                                let rows = sqlx::query(trusted(writes::PG_EVENT_MOVE_AND_RECORD))
                                    .bind(to.as_str()).bind(response).bind(now).bind(*id).bind(from.as_str()).bind(actor)
                                    .execute(&mut *tx).await?.rows_affected();
                                out.push(writes::moved(*id, from, to, rows));
                                continue;
                            }
                            let rows = sqlx::query(trusted(&writes::PG_EVENT[1]))
                                .bind(to.as_str()).bind(response).bind(now).bind(*id).bind(from.as_str())
                                .execute(&mut *tx).await?.rows_affected();
                            if rows == 1 {
                                sqlx::query(trusted(&writes::PG_EVENT[2]))
                                    .bind(*id).bind(from.as_str()).bind(to.as_str()).bind(actor).bind(now).bind(response)
                                    .execute(&mut *tx).await?;
                            }
                            out.push(writes::moved(*id, from, to, rows));
                        }
                        written.push(Written::Events(out));
                    }
                    Write::Telemetry { device, points, rollups } => {
                        let rollups = if *rollups { writes::rollups(points) } else { Vec::new() };
                        // On PostgreSQL each statement is a round trip, and the committer
                        // waits for it: a message's points, latest values and rollups go
                        // as one statement (data-modifying CTEs), one round trip instead of
                        // three. Larger messages, and SQLite (no such CTEs), take the
                        // statements one by one below.
                        if is_postgres && points.len() <= 200 && rollups.len() <= 400 {
                            let newest = writes::newest(points);
                            let mut n = 1;
                            let v_points = values_placeholders(points.len(), 5, n);
                            n += points.len() * 5;
                            let latest = writes::postgres(writes::TELEMETRY_LATEST).replacen(
                                "($1, $2, $3, $4)",
                                &values_placeholders(newest.len(), 4, n),
                                1,
                            );
                            n += newest.len() * 4;
                            let insert = format!("INSERT INTO telemetry (device, name, at, value, number) VALUES {v_points}");
                            let sql = if rollups.is_empty() {
                                format!("WITH p AS ({insert}) {latest}")
                            } else {
                                let r = writes::rollup_sql(&values_placeholders(rollups.len(), 10, n), true);
                                format!("WITH p AS ({insert}), l AS ({latest}) {r}")
                            };
                            let mut q = sqlx::query(trusted(&sql));
                            for p in points {
                                q = q.bind(*device).bind(&p.name).bind(p.at).bind(p.value.to_string()).bind(p.number());
                            }
                            for p in &newest {
                                q = q.bind(*device).bind(&p.name).bind(p.at).bind(p.value.to_string());
                            }
                            for r in &rollups {
                                q = q.bind(*device).bind(r.name).bind(r.level).bind(r.bucket).bind(r.count)
                                    .bind(r.sum).bind(r.min).bind(r.max).bind(r.last).bind(r.last_at);
                            }
                            q.execute(&mut *tx).await?;
                            written.push(Written::Recorded);
                            continue;
                        }
                        for chunk in points.chunks(200) {
                            let sql = format!(
                                "INSERT INTO telemetry (device, name, at, value, number) VALUES {}",
                                values_placeholders(chunk.len(), 5, 1)
                            );
                            let mut q = sqlx::query(trusted(&sql));
                            for p in chunk {
                                q = q.bind(*device).bind(&p.name).bind(p.at).bind(p.value.to_string()).bind(p.number());
                            }
                            q.execute(&mut *tx).await?;
                        }
                        for chunk in writes::newest(points).chunks(200) {
                            let sql = writes::postgres(writes::TELEMETRY_LATEST).replacen(
                                "($1, $2, $3, $4)",
                                &values_placeholders(chunk.len(), 4, 1),
                                1,
                            );
                            let mut q = sqlx::query(trusted(&sql));
                            for p in chunk {
                                q = q.bind(*device).bind(&p.name).bind(p.at).bind(p.value.to_string());
                            }
                            q.execute(&mut *tx).await?;
                        }
                        for chunk in rollups.chunks(100) {
                            let sql = writes::rollup_sql(&values_placeholders(chunk.len(), 10, 1), is_postgres);
                            let mut q = sqlx::query(trusted(&sql));
                            for r in chunk {
                                q = q.bind(*device).bind(r.name).bind(r.level).bind(r.bucket).bind(r.count)
                                    .bind(r.sum).bind(r.min).bind(r.max).bind(r.last).bind(r.last_at);
                            }
                            q.execute(&mut *tx).await?;
                        }
                        written.push(Written::Recorded);
                    }
                }
            }
            tx.commit().await?;
            Ok(written)
        })
    }

    /// Cancel live operations: one (`operation`), a whole activity, or a device's
    /// (disenrollment). Returns how many were cancelled.
    pub async fn cancel(
        &self,
        operation: Option<i64>,
        activity: Option<i64>,
        device: Option<i64>,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut f = Filters::new(3);
        if let Some(v) = operation {
            f.and("id = ?", Param::Int(v));
        }
        if let Some(v) = activity {
            f.and("activity = ?", Param::Int(v));
        }
        if let Some(v) = device {
            f.and("device = ?", Param::Int(v));
        }
        if f.params.is_empty() {
            // Never cancel everything by accident.
            return Ok(0);
        }
        let filter = format!("state IN ('PENDING', 'NOTNOW', 'IN_PROGRESS'){}", f.sql);
        let statements = writes::move_where(&filter, "CANCELLED", self.is_postgres());
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut n = 0;
            for sql in &statements {
                n = bind_filters!(sqlx::query(trusted(sql)).bind(actor).bind(now), f)
                    .execute(&mut *tx).await?.rows_affected();
            }
            if n > 0 {
                let event = crate::events::Event::OperationsCancelled {
                    operation,
                    activity,
                    device,
                    count: n,
                    actor: actor.to_string(),
                };
                super::record_event!(&mut *tx, &event.record());
            }
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Disenroll: cancel every live operation, revoke credentials, mark removed, and write
    /// `removed` (the `device.removed` event) with that last step.
    pub async fn disenroll(&self, device: i64, actor: &str, removed: &super::NewEvent) -> Result<u64, StoreError> {
        let cancelled = self.cancel(None, None, Some(device), actor).await?;
        // Revoke first: from here on the device cannot call in to a half-removed record.
        self.revoke_device_credentials(device, None).await?;
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE devices SET status = 'removed' WHERE id = $1").bind(device).execute(&mut *tx).await?;
            // What it was given and its verdict go with it: whoever enrolls the identity
            // next (or the device restored) is given its effective policy afresh.
            for sql in ["DELETE FROM device_policies WHERE device = $1", "DELETE FROM device_compliance WHERE device = $1"] {
                sqlx::query(sql).bind(device).execute(&mut *tx).await?;
            }
            super::record_event!(&mut *tx, removed);
            tx.commit().await?;
        });
        Ok(cancelled)
    }

    pub async fn operation(&self, id: i64) -> Result<Option<OperationRow>, StoreError> {
        let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE id = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(id).fetch_optional(pool).await?))
    }

    /// Operations filtered by device, activity and state, in id order after `after`.
    pub async fn operations(
        &self,
        device: Option<i64>,
        activity: Option<i64>,
        state: Option<&str>,
        reach: Option<&crate::scope::Reach>,
        page: Cursor,
        limit: i64,
    ) -> Result<Vec<OperationRow>, StoreError> {
        let mut f = Filters::new(3);
        if let Some(reach) = reach {
            let condition = reach.condition(self.is_postgres(), &mut f);
            f.sql.push_str(&format!(" AND device IN (SELECT d.id FROM devices d WHERE {condition})"));
        }
        if let Some(v) = device {
            f.and("device = ?", Param::Int(v));
        }
        if let Some(v) = activity {
            f.and("activity = ?", Param::Int(v));
        }
        if let Some(v) = state {
            f.and("state = ?", Param::Text(v.to_string()));
        }
        let (bound, order) = page.sql();
        let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE {bound}{} ORDER BY {order} LIMIT $2", f.sql);
        Ok(with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)).bind(page.id()).bind(limit), f)
            .fetch_all(pool).await?))
    }

    pub async fn transitions(&self, operation: i64) -> Result<Vec<TransitionRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT operation, from_state, to_state, actor, at, response FROM transitions WHERE operation = $1 ORDER BY id")
            .bind(operation).fetch_all(pool).await?))
    }

    pub async fn activity(&self, id: i64) -> Result<Option<ActivityRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT id, code, kind, payload, created_by, created_at, expires_at, max_attempts FROM activities WHERE id = $1")
            .bind(id).fetch_optional(pool).await?))
    }

    /// Activities in id order after `after`, optionally of one operation code.
    pub async fn activities(
        &self,
        code: Option<&str>,
        page: Cursor,
        limit: i64,
    ) -> Result<Vec<ActivityRow>, StoreError> {
        let mut f = Filters::new(3);
        if let Some(c) = code {
            f.and("code = ?", Param::Text(c.to_string()));
        }
        let sql = format!(
            "SELECT id, code, kind, payload, created_by, created_at, expires_at, max_attempts FROM activities
             WHERE {}{} ORDER BY {} LIMIT $2",
            page.sql().0,
            f.sql,
            page.sql().1
        );
        Ok(with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)).bind(page.id()).bind(limit), f)
            .fetch_all(pool).await?))
    }

    /// Operation counts per state for an activity.
    pub async fn activity_counts(&self, id: i64) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT state, COUNT(*) FROM operations WHERE activity = $1 GROUP BY state ORDER BY state")
            .bind(id).fetch_all(pool).await?))
    }
}

impl Store {
    /// Retention: delete finished operations (and their transitions) last changed before
    /// `before`, and activities left without operations. Returns operations deleted.
    pub async fn purge_finished(&self, before: i64) -> Result<u64, StoreError> {
        let finished = "state IN ('COMPLETED', 'ERROR', 'CANCELLED', 'REPEATED', 'EXPIRED') AND updated_at < $1";
        let transitions =
            format!("DELETE FROM transitions WHERE operation IN (SELECT id FROM operations WHERE {finished})");
        let operations = format!("DELETE FROM operations WHERE {finished}");
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(trusted(&transitions)).bind(before).execute(&mut *tx).await?;
            let n = sqlx::query(trusted(&operations)).bind(before).execute(&mut *tx).await?.rows_affected();
            sqlx::query("DELETE FROM activities WHERE created_at < $1 AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.activity = activities.id)")
                .bind(before).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(n)
        })
    }
}

/// The statement of `operations_in` on the sqlx path (PostgreSQL; `direct.rs` has SQLite's
/// twin). For the queue, `states` is [`queued_states!`](super::queued_states).
fn queue_sql(states: &str) -> String {
    format!(
        "SELECT o.id, o.code, o.kind, COALESCE(o.payload, a.payload) AS payload, o.expires_at, o.state FROM operations o
         JOIN activities a ON a.id = o.activity
         WHERE o.device = $1 AND o.state IN ({states}) AND {} ORDER BY o.id LIMIT $2",
        super::not_held_back!()
    )
}
