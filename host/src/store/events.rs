//! The durable event log (`events`): what happened, in `seq` order. Its first rows are the
//! audit trail of the admin API (`admin.action`); docs/events.md lists the types.

use super::{Backend, Filters, Param, Store, StoreError, bind_filters, now_ms, trusted, with_pool, with_write_pool};

/// Append `$event` (a [`NewEvent`]) with the executor `$exec`: `&mut *tx`, the
/// transaction of the change it reports (committed with it, or not at all), or the write
/// pool for an event of its own. For both backends (the caller is inside
/// `with_write_pool!`).
macro_rules! record_event {
    ($exec:expr, $event:expr) => {{
        let e: &$crate::store::NewEvent = $event;
        sqlx::query(
            "INSERT INTO events (at, type, actor, role, action, target, outcome, status, data, device, tenant)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind($crate::store::now_ms())
        .bind(&e.event_type)
        .bind(&e.actor)
        .bind(&e.role)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.outcome)
        .bind(e.status)
        .bind(&e.data)
        .bind(e.device)
        .bind(&e.tenant)
        .execute($exec)
        .await?;
    }};
}
pub(crate) use record_event;

/// The type of an audit row: an admin-API call that changed something or was refused.
pub const ADMIN_ACTION: &str = "admin.action";

text_enum! {
    /// How an audited call ended.
    pub enum Outcome ("outcome") {
        /// Answered 2xx.
        Ok = "ok",
        /// The token's role does not allow it (403).
        Refused = "refused",
        /// Any other error: nothing changed.
        Failed = "failed",
    }
}

/// An event, before it has a sequence number.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub event_type: String,
    /// The acting admin token's name (`None`: the server itself).
    pub actor: Option<String>,
    pub role: Option<String>,
    /// What was asked: for an admin action, `METHOD /route/{param}`.
    pub action: Option<String>,
    /// What it was asked of: for an admin action, the request's path.
    pub target: Option<String>,
    /// For an admin action, [`Outcome::as_str`].
    pub outcome: Option<String>,
    /// The HTTP status an admin action was answered with.
    pub status: Option<i64>,
    /// More, as JSON text.
    pub data: Option<String>,
    /// The key of the device it is about, if one (for group and tag filters).
    pub device: Option<i64>,
    /// For an event about no device, the tenant whose thing it is about (a group, a
    /// policy, a subscription of the tenant): the tenant's callers read it too.
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct EventRow {
    /// Position in the log: increases with every event.
    pub seq: i64,
    /// When, in milliseconds since the Unix epoch.
    pub at: i64,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub event_type: String,
    pub actor: Option<String>,
    pub role: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<String>,
    pub status: Option<i64>,
    #[schema(value_type = Option<Object>)]
    #[serde(serialize_with = "json_text")]
    pub data: Option<String>,
    /// The key of the device it is about, if one.
    pub device: Option<i64>,
    /// For an event about no device, the tenant whose thing it is about; absent: the
    /// server's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `data` is stored as JSON text and served as JSON.
fn json_text<S: serde::Serializer>(data: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    match data {
        Some(text) => serde_json::from_str::<serde_json::Value>(text).unwrap_or(serde_json::Value::Null).serialize(s),
        None => s.serialize_none(),
    }
}

/// Which events to read: all filters optional and `AND`-ed.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub event_type: Option<String>,
    /// Events whose type starts with this (`device.`).
    pub type_prefix: Option<String>,
    /// Events whose type starts with any of these; empty: any type.
    pub type_prefixes: Vec<String>,
    /// Events up to this sequence number (inclusive).
    pub up_to: Option<i64>,
    /// Events about a device of this group (static or dynamic, as it is now).
    pub group: Option<String>,
    /// Events about a device with this tag (as it is now).
    pub tag: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Events whose target starts with this.
    pub target_prefix: Option<String>,
    pub outcome: Option<String>,
    /// From this time on (ms, inclusive).
    pub since: Option<i64>,
    /// Before this time (ms, exclusive).
    pub until: Option<i64>,
    /// Only events about a device in this reach (a scoped or tenant's caller): events
    /// about no device are the whole server's and left out, except with `tenant_events`.
    pub within: Option<crate::scope::Reach>,
    /// With `within`: also the events about no device that are this tenant's (its groups,
    /// policies, subscriptions), for a tenant's caller that is not scoped.
    pub tenant_events: Option<String>,
}

/// How long a missing sequence number is waited for before readers move past it
/// (`http/events.rs` says why).
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// The furthest sequence number a reader at `after` may move its cursor to now: up to
    /// the first missing number, unless the event after it is older than [`SETTLE`] (the
    /// transaction that took the number rolled back, or retention deleted it).
    pub async fn settled(&self, after: i64) -> Result<i64, StoreError> {
        let old = now_ms() - SETTLE.as_millis() as i64;
        let mut horizon = after;
        for (seq, at) in self.event_positions(after, 1000).await? {
            if seq == horizon + 1 || at <= old {
                horizon = seq;
            } else {
                break;
            }
        }
        Ok(horizon)
    }

    /// Append one event of its own (not part of another change).
    pub async fn append_event(&self, e: &NewEvent) -> Result<(), StoreError> {
        with_write_pool!(self, pool => record_event!(pool, e));
        Ok(())
    }

    /// Events after `after` (a sequence number) that match `q`, oldest first.
    pub async fn events(&self, q: &EventQuery, after: i64, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        let mut f = Filters::new(3);
        if let Some(t) = &q.event_type {
            f.and("type = ?", Param::Text(t.clone()));
        }
        if let Some(t) = &q.type_prefix {
            f.and("substr(type, 1, length(?)) = ?", Param::Text(t.clone()));
        }
        if !q.type_prefixes.is_empty() {
            let any: Vec<String> = q
                .type_prefixes
                .iter()
                .map(|t| {
                    let p = f.placeholder(Param::Text(t.clone()));
                    format!("substr(type, 1, length({p})) = {p}")
                })
                .collect();
            f.sql.push_str(&format!(" AND ({})", any.join(" OR ")));
        }
        if let Some(u) = q.up_to {
            f.and("seq <= ?", Param::Int(u));
        }
        if let Some(name) = &q.group {
            match self.group(name).await? {
                Some(g) => {
                    let devices = match g.query() {
                        Some(query) => {
                            format!("SELECT d.id FROM devices d WHERE {}", query.condition(self.is_postgres(), &mut f))
                        }
                        None => format!(
                            "SELECT m.device FROM group_members m WHERE m.group_id = {}",
                            f.placeholder(Param::Int(g.id))
                        ),
                    };
                    f.sql.push_str(&format!(" AND device IN ({devices})"));
                }
                // A group deleted since: nothing is about its devices.
                None => f.sql.push_str(" AND 1 = 0"),
            }
        }
        if let Some(t) = &q.tag {
            f.and("device IN (SELECT t.device FROM device_tags t WHERE t.tag = ?)", Param::Text(t.clone()));
        }
        if let Some(a) = &q.actor {
            f.and("actor = ?", Param::Text(a.clone()));
        }
        if let Some(a) = &q.action {
            f.and("action = ?", Param::Text(a.clone()));
        }
        if let Some(t) = &q.target_prefix {
            // A prefix without LIKE's wildcards: the first characters compared as text.
            // (Both `?` are the same placeholder.)
            f.and("substr(target, 1, length(?)) = ?", Param::Text(t.clone()));
        }
        if let Some(o) = &q.outcome {
            f.and("outcome = ?", Param::Text(o.clone()));
        }
        if let Some(s) = q.since {
            f.and("at >= ?", Param::Int(s));
        }
        if let Some(u) = q.until {
            f.and("at < ?", Param::Int(u));
        }
        if let Some(reach) = &q.within {
            let cond = reach.condition(self.is_postgres(), &mut f);
            let about_devices = format!("device IN (SELECT d.id FROM devices d WHERE {cond})");
            match &q.tenant_events {
                Some(t) => {
                    let p = f.placeholder(Param::Text(t.clone()));
                    f.sql.push_str(&format!(" AND ({about_devices} OR (device IS NULL AND tenant = {p}))"));
                }
                None => f.sql.push_str(&format!(" AND {about_devices}")),
            }
        }
        let sql = format!(
            "SELECT seq, at, type, actor, role, action, target, outcome, status, data, device, tenant FROM events
             WHERE seq > $1{} ORDER BY seq LIMIT $2",
            f.sql
        );
        Ok(with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)).bind(after).bind(limit), f)
            .fetch_all(pool).await?))
    }

    /// `(seq, at)` of the events after `after`, oldest first: where a reader may safely
    /// move its cursor to (`http/events.rs`).
    pub async fn event_positions(&self, after: i64, limit: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT seq, at FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after).bind(limit).fetch_all(pool).await?))
    }

    /// The newest sequence number (0 for an empty log).
    pub async fn latest_event(&self) -> Result<i64, StoreError> {
        let (seq,): (Option<i64>,) =
            with_pool!(self, pool => sqlx::query_as("SELECT MAX(seq) FROM events").fetch_one(pool).await?);
        Ok(seq.unwrap_or(0))
    }

    /// Make sure feed `name` exists; a new one starts after `cursor` (a feed turned on
    /// publishes what happens from then on, not the whole retained log).
    pub async fn open_feed(&self, name: &str, cursor: i64) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO event_feeds (name, cursor) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name).bind(cursor).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Take or extend the lease on feed `name` for `holder` until `until`; the feed's
    /// cursor when this holder has it, `None` while another holder's lease runs.
    pub async fn lease_feed(&self, name: &str, holder: &str, until: i64) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = with_write_pool!(self, pool => sqlx::query_as(
                "UPDATE event_feeds SET holder = $1, lease_until = $2
                 WHERE name = $3 AND (holder = $1 OR holder IS NULL OR lease_until < $4) RETURNING cursor")
            .bind(holder).bind(until).bind(name).bind(now_ms()).fetch_optional(pool).await?);
        Ok(row.map(|(c,)| c))
    }

    /// Everything of feed `name` up to `cursor` reached its receiver. A holder whose lease
    /// was taken over moves nothing (false).
    pub async fn advance_feed(&self, name: &str, holder: &str, cursor: i64) -> Result<bool, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query(
                "UPDATE event_feeds SET cursor = $1 WHERE name = $2 AND holder = $3 AND cursor <= $1")
            .bind(cursor).bind(name).bind(holder).execute(pool).await?.rows_affected())
            == 1)
    }

    /// Forget events older than `before` (ms); returns how many.
    pub async fn prune_events(&self, before: i64) -> Result<u64, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query("DELETE FROM events WHERE at < $1")
            .bind(before).execute(pool).await?.rows_affected()))
    }
}
