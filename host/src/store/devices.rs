//! Devices, their tags and groups.

use super::{
    Backend, Filters, NewEvent, Param, Store, StoreError, WriteTx, bind_filters, decode, now_ms, trusted,
    values_placeholders, with_pool, with_write_pool,
};
use crate::device::{Ownership, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A device as stored.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct DeviceRow {
    /// Internal key; APIs address devices by (type, device id).
    #[serde(skip)]
    pub id: i64,
    pub device_type: String,
    pub device_id: String,
    pub name: String,
    pub owner: Option<String>,
    #[sqlx(try_from = "String")]
    pub ownership: Ownership,
    #[sqlx(try_from = "String")]
    pub status: Status,
    /// JSON object of the device's own reports.
    #[serde(skip)]
    pub metadata: String,
    #[serde(skip)]
    pub push_token: Option<String>,
    #[serde(skip)]
    pub session: Vec<u8>,
    pub enrolled_at: i64,
    pub last_seen_at: Option<i64>,
    /// The tenant it belongs to (docs/security.md, "Tenants").
    pub tenant: String,
    /// `metadata` as plugin calls take it, parsed at the first call: a device message
    /// makes two (decode, then encode) with the same row. A row is what was read and is
    /// not changed in place (a changed device is read again), so this cannot go stale.
    #[sqlx(skip)]
    #[serde(skip)]
    pub(super) metadata_pairs: std::sync::OnceLock<Vec<(String, String)>>,
}

impl DeviceRow {
    /// Metadata as key/value pairs, for plugin calls.
    pub fn metadata_pairs(&self) -> Vec<(String, String)> {
        self.metadata_pairs.get_or_init(|| parse_metadata(&self.metadata)).clone()
    }
}

/// A device's stored metadata (a JSON object) as key/value pairs: strings as they are,
/// other values as JSON; anything but an object as no metadata.
fn parse_metadata(json: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json) {
        Ok(m) => m
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    v => v.to_string(),
                };
                (k, v)
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// What enrollment knows about a new device.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub device_type: String,
    pub device_id: String,
    pub name: String,
    pub owner: Option<String>,
    pub ownership: Ownership,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub push_token: Option<String>,
    /// The tenant it joins (a device enrolled again after removal joins anew).
    pub tenant: String,
}

/// Who may claim an identity (see `Store::claim_of`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub status: Status,
    /// The import let the device claim it without an enrollment token.
    pub self_enroll: bool,
    /// The import it came from: a token made for that import claims it.
    pub import_batch: Option<String>,
    /// The tenant it is in: a pre-registered identity is claimed only into it.
    pub tenant: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: i64,
    /// JSON of a [`DeviceQuery`] for a dynamic group; `None` for a static list.
    pub query: Option<String>,
    /// The tenant it belongs to (`groups.rs`); `None`: the server's operators'.
    pub tenant: Option<String>,
}

impl GroupRow {
    /// The query of a dynamic group. A stored query that no longer parses (written by a
    /// newer version) matches nothing rather than everything.
    ///
    /// A tenant's group matches its tenant's devices only, wherever it is used (targets,
    /// scopes, sizes, webhooks): the tenant is part of the query it returns.
    pub fn query(&self) -> Option<DeviceQuery> {
        self.query.as_deref().map(|q| DeviceQuery {
            tenant: self.tenant.clone(),
            ..serde_json::from_str(q).unwrap_or_else(|_| DeviceQuery::nothing())
        })
    }
}

/// What a device listing is narrowed to (every part optional).
#[derive(Default)]
pub struct DeviceFilter<'a> {
    pub device_type: Option<&'a str>,
    pub status: Option<Status>,
    pub tag: Option<&'a str>,
    pub group: Option<&'a GroupRow>,
    pub owner: Option<&'a str>,
    /// A substring of the device id or name, in any case.
    pub search: Option<&'a str>,
    /// Metadata keys and the values they must have.
    pub metadata: BTreeMap<String, String>,
    /// A scoped caller's reach (`scope.rs`): only the devices it admits.
    pub reach: Option<&'a crate::scope::Reach>,
}

/// A saved query over devices: the definition of a dynamic group. Every criterion given
/// must hold; a device must carry every listed tag and every listed metadata value
/// (metadata is what the device reported about itself, compared as text).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<Ownership>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = tag_list_schema)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Only devices of this tenant: never stored or taken from a request, but set from
    /// the group's tenant ([`GroupRow::query`]) or the caller's (a tenant's preview).
    #[serde(skip)]
    pub tenant: Option<String>,
}

/// What a device tag may be: 1-64 letters, digits and `- _ . : =` ([`tag_problem`]).
pub const TAG_PATTERN: &str = "^[A-Za-z0-9_.:=-]{1,64}$";

/// Why `tag` is not a tag, if it is not.
pub fn tag_problem(tag: &str) -> Option<String> {
    (tag.is_empty() || tag.len() > 64 || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:=".contains(&b)))
        .then(|| format!("tag `{tag}`: use 1-64 letters, digits and - _ . : ="))
}

/// The OpenAPI schema of a list of tags: each matches [`TAG_PATTERN`].
pub fn tag_list_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(TAG_PATTERN))
                .min_length(Some(1))
                .max_length(Some(64)),
        )
        .build()
}

impl DeviceQuery {
    fn nothing() -> DeviceQuery {
        DeviceQuery { device_type: Some(String::new()), ..Default::default() }
    }

    /// Why this query cannot be saved, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.device_type.is_none() && self.ownership.is_none() && self.tags.is_empty() && self.metadata.is_empty() {
            return Some("the query has no criteria: give device_type, ownership, tags or metadata".into());
        }
        // Keys become JSON paths in SQL parameters; keep them to plain names.
        self.metadata
            .keys()
            .find(|k| {
                k.is_empty() || k.len() > 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            })
            .map(|k| format!("metadata key `{k}`: use 1-64 letters, digits, _ and -"))
    }

    /// The query as a SQL condition over `devices d`, its values bound through `f`.
    pub(crate) fn condition(&self, postgres: bool, f: &mut Filters) -> String {
        let mut all = vec!["1 = 1".to_string()];
        if let Some(t) = &self.tenant {
            all.push(format!("d.tenant = {}", f.placeholder(Param::Text(t.clone()))));
        }
        if let Some(t) = &self.device_type {
            all.push(format!("d.device_type = {}", f.placeholder(Param::Text(t.clone()))));
        }
        if let Some(o) = &self.ownership {
            all.push(format!("d.ownership = {}", f.placeholder(Param::Text(o.as_str().into()))));
        }
        for t in &self.tags {
            let p = f.placeholder(Param::Text(t.clone()));
            all.push(format!("EXISTS (SELECT 1 FROM device_tags t WHERE t.device = d.id AND t.tag = {p})"));
        }
        for (k, v) in &self.metadata {
            let field = if postgres {
                format!("(d.metadata::jsonb ->> {})", f.placeholder(Param::Text(k.clone())))
            } else {
                format!("json_extract(d.metadata, {})", f.placeholder(Param::Text(format!("$.\"{k}\""))))
            };
            all.push(format!("{field} = {}", f.placeholder(Param::Text(v.clone()))));
        }
        format!("({})", all.join(" AND "))
    }
}

const GROUP_COLUMNS: &str = "id, name, description, created_at, query, tenant";

const DEVICE_COLUMNS: &str = "id, device_type, device_id, name, owner, ownership, status, metadata, push_token, session, enrolled_at, last_seen_at, tenant";

impl Store {
    /// Create a device, or activate one that was pre-registered or removed. An enrolled
    /// device with the same identity is a conflict. Whether the caller may claim the
    /// identity is decided before (`claim_of`, the enrollment token).
    ///
    /// A removed identity enrolled again is a new device that happens to reuse a name: it
    /// keeps the old record's history (operations, transitions), but none of what was
    /// *granted* to the old device: its tags and static groups are dropped and its plugin
    /// session is cleared. (Its credentials were revoked and its operations cancelled when
    /// it was removed.) An admin who wants the old device back restores it first
    /// (`restore_device`), which keeps them.
    ///
    /// Enrolled into another tenant than the removed device's, it is a new record: the
    /// removed one is renamed `ID~removed-KEY` and keeps its history with its tenant, so
    /// nothing of one tenant's history reaches another through a reused identity.
    /// `channel` names the front it came through, for the `device.enrolled` event written
    /// with it.
    pub async fn enroll_device(&self, d: &NewDevice, channel: &'static str) -> Result<DeviceRow, StoreError> {
        let now = now_ms();
        let metadata = serde_json::Value::Object(d.metadata.clone()).to_string();
        let sql = format!(
            "INSERT INTO devices (device_type, device_id, name, owner, ownership, status, metadata, push_token, enrolled_at, last_seen_at, tenant)
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $8, $10)
             ON CONFLICT (device_type, device_id) DO UPDATE SET
                tenant = CASE WHEN devices.status = 'removed' THEN excluded.tenant ELSE devices.tenant END,
                name = excluded.name, owner = excluded.owner, ownership = excluded.ownership, status = 'active',
                metadata = excluded.metadata, push_token = excluded.push_token, enrolled_at = excluded.enrolled_at,
                last_seen_at = excluded.last_seen_at,
                session = CASE WHEN devices.status = 'removed' THEN $9 ELSE devices.session END,
                self_enroll = 0, import_batch = NULL
             WHERE devices.status IN ('removed', 'registered')
             RETURNING {DEVICE_COLUMNS}"
        );
        let row: Option<DeviceRow> = with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                    "UPDATE devices SET device_id = device_id || '~removed-' || CAST(id AS TEXT)
                     WHERE device_type = $1 AND device_id = $2 AND status = 'removed' AND tenant <> $3")
                .bind(&d.device_type).bind(&d.device_id).bind(&d.tenant).execute(&mut *tx).await?;
            for leftovers in [
                "DELETE FROM device_tags WHERE device IN
                    (SELECT id FROM devices WHERE device_type = $1 AND device_id = $2 AND status = 'removed')",
                "DELETE FROM group_members WHERE device IN
                    (SELECT id FROM devices WHERE device_type = $1 AND device_id = $2 AND status = 'removed')",
            ] {
                sqlx::query(leftovers).bind(&d.device_type).bind(&d.device_id).execute(&mut *tx).await?;
            }
            let row = sqlx::query_as(trusted(&sql))
                .bind(&d.device_type)
                .bind(&d.device_id)
                .bind(&d.name)
                .bind(&d.owner)
                .bind(d.ownership.as_str())
                .bind(&metadata)
                .bind(&d.push_token)
                .bind(now)
                .bind(Vec::<u8>::new())
                .bind(&d.tenant)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(r) = &row {
                let r: &DeviceRow = r;
                let event = crate::events::Event::DeviceEnrolled {
                    device: r.id,
                    device_type: r.device_type.clone(),
                    device_id: r.device_id.clone(),
                    channel,
                };
                super::record_event!(&mut *tx, &event.record());
            }
            tx.commit().await?;
            row
        });
        row.ok_or_else(|| StoreError::Conflict(format!("device {}/{}", d.device_type, d.device_id)))
    }

    /// What decides who may claim an identity: its status, whether its import let devices
    /// claim it themselves, and the import it came from.
    pub async fn claim_of(&self, device_type: &str, device_id: &str) -> Result<Option<Claim>, StoreError> {
        let row: Option<(String, i64, Option<String>, String)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT status, self_enroll, import_batch, tenant FROM devices WHERE device_type = $1 AND device_id = $2")
            .bind(device_type).bind(device_id).fetch_optional(pool).await?);
        row.map(|(status, self_enroll, import_batch, tenant)| {
            Ok(Claim {
                status: Status::parse(&status).map_err(decode)?,
                self_enroll: self_enroll != 0,
                import_batch,
                tenant,
            })
        })
        .transpose()
    }

    /// Bring a removed device back as it was (tags, static groups), `registered` until it
    /// enrolls again with an enrollment token. False when it is not removed.
    /// `event` is written with the change, when there is one.
    pub async fn restore_device(&self, device: i64, event: &NewEvent) -> Result<bool, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                    "UPDATE devices SET status = 'registered', self_enroll = 0, import_batch = NULL
                     WHERE id = $1 AND status = 'removed'")
                .bind(device).execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                super::record_event!(&mut *tx, event);
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    pub async fn device(&self, device_type: &str, device_id: &str) -> Result<Option<DeviceRow>, StoreError> {
        if let Some(direct) = self.direct() {
            return direct.read(|c| super::direct::device(c, device_type, device_id));
        }
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_type = $1 AND device_id = $2");
        Ok(
            with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(device_type).bind(device_id).fetch_optional(pool).await?),
        )
    }

    pub async fn device_by_key(&self, id: i64) -> Result<Option<DeviceRow>, StoreError> {
        if let Some(direct) = self.direct() {
            return direct.read(|c| super::direct::device_by_key(c, id));
        }
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(id).fetch_optional(pool).await?))
    }

    /// Devices, filtered, in key order after `after`, at most `limit`.
    pub async fn list_devices(
        &self,
        filter: &DeviceFilter<'_>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeviceRow>, StoreError> {
        let mut f = Filters::new(3);
        if let Some(v) = filter.device_type {
            f.and("device_type = ?", Param::Text(v.into()));
        }
        if let Some(v) = filter.status {
            f.and("status = ?", Param::Text(v.as_str().into()));
        }
        if let Some(v) = filter.tag {
            f.and("EXISTS (SELECT 1 FROM device_tags t WHERE t.device = d.id AND t.tag = ?)", Param::Text(v.into()));
        }
        if let Some(v) = filter.owner {
            f.and("owner = ?", Param::Text(v.into()));
        }
        if let Some(v) = filter.search.filter(|s| !s.is_empty()) {
            // A substring of the id or the name, in any case; `%` and `_` are literal.
            let escaped = v.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            f.and(
                "(LOWER(device_id) LIKE ? ESCAPE '\\' OR LOWER(name) LIKE ? ESCAPE '\\')",
                Param::Text(format!("%{escaped}%")),
            );
        }
        if !filter.metadata.is_empty() {
            let query = DeviceQuery { metadata: filter.metadata.clone(), ..DeviceQuery::default() };
            let condition = query.condition(self.is_postgres(), &mut f);
            f.sql.push_str(&format!(" AND {condition}"));
        }
        let group = filter.group;
        match group.map(|g| (g, g.query())) {
            Some((_, Some(query))) => {
                let condition = query.condition(self.is_postgres(), &mut f);
                f.sql.push_str(&format!(" AND {condition}"));
            }
            Some((g, None)) => {
                f.and(
                    "EXISTS (SELECT 1 FROM group_members m WHERE m.device = d.id AND m.group_id = ?)",
                    Param::Int(g.id),
                );
            }
            None => {}
        }
        if let Some(reach) = filter.reach {
            let condition = reach.condition(self.is_postgres(), &mut f);
            f.sql.push_str(&format!(" AND {condition}"));
        }
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE id > $1{} ORDER BY id LIMIT $2", f.sql);
        Ok(with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)).bind(after).bind(limit), f)
            .fetch_all(pool).await?))
    }

    /// Whether a scoped caller's reach admits the device with key `device`.
    pub async fn in_reach(&self, device: i64, reach: &crate::scope::Reach) -> Result<bool, StoreError> {
        let mut f = Filters::new(2);
        let condition = reach.condition(self.is_postgres(), &mut f);
        let sql = format!("SELECT COUNT(*) FROM devices d WHERE d.id = $1 AND {condition}");
        let (n,): (i64,) = with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)).bind(device), f).fetch_one(pool).await?);
        Ok(n > 0)
    }

    /// Count devices connected to this process's broker as seen at `now`: a live MQTT
    /// session is the device (the broker checks its keepalive), whether or not it has
    /// published. Only those last seen before `stale` are written, so a device that calls
    /// in anyway is not rewritten. `devices` are (type, id). Returns how many were written.
    pub async fn touch_connected(&self, devices: &[(String, String)], now: i64, stale: i64) -> Result<u64, StoreError> {
        let mut written = 0;
        for chunk in devices.chunks(400) {
            let pairs =
                (0..chunk.len()).map(|i| format!("(${}, ${})", 3 + 2 * i, 4 + 2 * i)).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "UPDATE devices SET last_seen_at = $1,
                        status = CASE WHEN status = 'unreachable' THEN 'active' ELSE status END
                 WHERE last_seen_at < $2 AND status IN ('active', 'unreachable')
                   AND (device_type, device_id) IN (VALUES {pairs})"
            );
            written += with_write_pool!(self, pool => {
                let mut q = sqlx::query(trusted(&sql)).bind(now).bind(stale);
                for (t, i) in chunk {
                    q = q.bind(t).bind(i);
                }
                q.execute(pool).await?.rows_affected()
            });
        }
        Ok(written)
    }

    /// Mark active devices not seen since `before` as unreachable; returns how many.
    /// A scan of the devices table, run about once a minute: an index on `last_seen_at`
    /// would be rewritten by every poll to speed up this one query.
    pub async fn mark_unreachable(&self, before: i64) -> Result<u64, StoreError> {
        // A device online for push on an external broker (`push_presence`) holds its
        // connection: the broker checks its keepalive, and Drover can reach it, whether
        // or not it has published since.
        Ok(with_write_pool!(self, pool => sqlx::query(
                "UPDATE devices SET status = 'unreachable' WHERE status = 'active' AND last_seen_at < $1
                   AND NOT EXISTS (SELECT 1 FROM push_presence p WHERE p.device = devices.id)")
            .bind(before).execute(pool).await?.rows_affected()))
    }

    /// Record that a device called in: last seen (an unreachable device is active again),
    /// merged metadata, new session state.
    pub async fn touch_device(
        &self,
        device: i64,
        info: &[(String, String)],
        session: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            if info.is_empty() {
                sqlx::query(
                    "UPDATE devices SET last_seen_at = $1, session = COALESCE($2, session),
                            status = CASE WHEN status = 'unreachable' THEN 'active' ELSE status END
                     WHERE id = $3")
                    .bind(now).bind(session).bind(device).execute(pool).await?;
            } else {
                let mut tx = pool.begin_write().await?;
                let current: Option<(String,)> = sqlx::query_as("SELECT metadata FROM devices WHERE id = $1")
                    .bind(device).fetch_optional(&mut *tx).await?;
                let mut map: serde_json::Map<String, serde_json::Value> =
                    current.and_then(|(m,)| serde_json::from_str(&m).ok()).unwrap_or_default();
                for (k, v) in info {
                    map.insert(k.clone(), serde_json::Value::String(v.clone()));
                }
                sqlx::query(
                    "UPDATE devices SET last_seen_at = $1, session = COALESCE($2, session), metadata = $3,
                            status = CASE WHEN status = 'unreachable' THEN 'active' ELSE status END
                     WHERE id = $4")
                    .bind(now).bind(session).bind(serde_json::Value::Object(map).to_string()).bind(device)
                    .execute(&mut *tx).await?;
                tx.commit().await?;
            }
        });
        Ok(())
    }

    /// Change what an admin says about a device: its display name, owner (`Some(None)`
    /// clears it) and ownership, with its `device.updated` event.
    pub async fn update_device(
        &self,
        device: i64,
        name: Option<&str>,
        owner: Option<Option<&str>>,
        ownership: Option<Ownership>,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                    "UPDATE devices SET name = COALESCE($1, name), owner = CASE WHEN $2 = 1 THEN $3 ELSE owner END,
                         ownership = COALESCE($4, ownership) WHERE id = $5")
                .bind(name).bind(i64::from(owner.is_some())).bind(owner.flatten()).bind(ownership.map(|o| o.as_str()))
                .bind(device).execute(&mut *tx).await?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn tags(&self, device: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = with_pool!(self, pool => sqlx::query_as("SELECT tag FROM device_tags WHERE device = $1 ORDER BY tag")
            .bind(device).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// Replace a device's tags.
    pub async fn set_tags(&self, device: i64, tags: &[String]) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM device_tags WHERE device = $1").bind(device).execute(&mut *tx).await?;
            if !tags.is_empty() {
                let sql = format!("INSERT INTO device_tags (device, tag) VALUES {}", values_placeholders(tags.len(), 2, 1));
                let mut q = sqlx::query(trusted(&sql));
                for t in tags {
                    q = q.bind(device).bind(t);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Create a group: a static list, or a dynamic group when `query` is given; of
    /// `tenant` when given (its name then already `TENANT/NAME`: `groups.rs`), with its
    /// `group.created` event.
    pub async fn create_group(
        &self,
        name: &str,
        description: &str,
        query: Option<&DeviceQuery>,
        tenant: Option<&str>,
        event: &NewEvent,
    ) -> Result<GroupRow, StoreError> {
        let query = query.map(|q| serde_json::to_string(q).unwrap_or_default());
        let sql = format!(
            "INSERT INTO device_groups (name, description, created_at, query, tenant) VALUES ($1, $2, $3, $4, $5)
             RETURNING {GROUP_COLUMNS}"
        );
        let r: Result<GroupRow, StoreError> = with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query_as(trusted(&sql))
                .bind(name).bind(description).bind(now_ms()).bind(&query).bind(tenant).fetch_one(&mut *tx).await
                .map_err(|e| StoreError::conflict_or(e, || format!("group `{name}`")))?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
            Ok(row)
        });
        r
    }

    pub async fn group(&self, name: &str) -> Result<Option<GroupRow>, StoreError> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM device_groups WHERE name = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(name).fetch_optional(pool).await?))
    }

    /// Every group, or a tenant's only.
    pub async fn groups(&self, tenant: Option<&str>) -> Result<Vec<GroupRow>, StoreError> {
        // Every group: a tenant matching itself (NULL never equals NULL, so spelled out).
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM device_groups WHERE CAST($1 AS TEXT) IS NULL OR tenant = $1 ORDER BY name"
        );
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(tenant).fetch_all(pool).await?))
    }

    /// Delete a group (its devices stay; operations already added stay queued), with its
    /// `group.removed` event.
    pub async fn delete_group(&self, id: i64, event: &NewEvent) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM device_groups WHERE id = $1").bind(id).execute(&mut *tx).await?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
        });
        Ok(())
    }

    /// How many live devices a group holds now (for a dynamic group: match its query).
    pub async fn group_size(&self, group: &GroupRow) -> Result<i64, StoreError> {
        match group.query() {
            Some(q) => self.query_size(&q).await,
            None => {
                let mut f = Filters::new(1);
                let condition = format!(
                    "d.id IN (SELECT m.device FROM group_members m WHERE m.group_id = {})",
                    f.placeholder(Param::Int(group.id))
                );
                self.count_devices(&condition, f).await
            }
        }
    }

    /// How many live devices a dynamic group's query matches now.
    pub async fn query_size(&self, query: &DeviceQuery) -> Result<i64, StoreError> {
        let mut f = Filters::new(1);
        let condition = query.condition(self.is_postgres(), &mut f);
        self.count_devices(&condition, f).await
    }

    async fn count_devices(&self, condition: &str, f: Filters) -> Result<i64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM devices d WHERE d.status <> 'removed' AND {condition}");
        let (n,): (i64,) =
            with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)), f).fetch_one(pool).await?);
        Ok(n)
    }

    /// Add devices (by key) to a group, with its `group.members_added` event; members
    /// already in it are left alone.
    pub async fn add_members(&self, group: i64, devices: &[i64], event: &NewEvent) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for chunk in devices.chunks(500) {
                let sql = format!(
                    "INSERT INTO group_members (group_id, device) VALUES {} ON CONFLICT DO NOTHING",
                    values_placeholders(chunk.len(), 2, 1)
                );
                let mut q = sqlx::query(trusted(&sql));
                for d in chunk {
                    q = q.bind(group).bind(*d);
                }
                q.execute(&mut *tx).await?;
            }
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Pre-register devices in bulk (status `registered` until they enroll), in one
    /// transaction; identities that exist already are left alone. Returns how many were new.
    /// They are claimed with an enrollment token (one made for `batch`, or any for their
    /// type), or without one when `self_enroll`.
    pub async fn register_devices(
        &self,
        devices: &[NewDevice],
        self_enroll: bool,
        batch: &str,
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut n = 0;
            for chunk in devices.chunks(400) {
                let sql = format!(
                    "INSERT INTO devices (device_type, device_id, name, owner, ownership, status, metadata, enrolled_at, self_enroll, import_batch, tenant)
                     VALUES {} ON CONFLICT (device_type, device_id) DO NOTHING",
                    values_placeholders(chunk.len(), 11, 1));
                let mut q = sqlx::query(trusted(&sql));
                for d in chunk {
                    q = q.bind(&d.device_type).bind(&d.device_id).bind(&d.name).bind(&d.owner).bind(d.ownership.as_str())
                        .bind(Status::Registered.as_str()).bind(serde_json::Value::Object(d.metadata.clone()).to_string()).bind(now)
                        .bind(i64::from(self_enroll)).bind(batch).bind(&d.tenant);
                }
                n += q.execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_metadata;

    #[test]
    fn metadata_reaches_plugins_as_text_pairs() {
        let pairs = parse_metadata(r#"{"model":"Pixel 8","battery":87,"rooted":false,"sim":{"mcc":"262"}}"#);
        let expected = [("battery", "87"), ("model", "Pixel 8"), ("rooted", "false"), ("sim", r#"{"mcc":"262"}"#)];
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, expected);
        // A value that is not an object (a row written by hand, a newer format) is no metadata.
        assert!(parse_metadata("[1, 2]").is_empty());
        assert!(parse_metadata("").is_empty());
    }
}
