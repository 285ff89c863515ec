//! The plugin catalog: uploaded components, the event log of what each plugin name
//! serves, grants, trusted publisher keys and server-wide settings
//! (docs/plugin-platform.md).

use super::{Backend, Store, StoreError, WriteTx, now_ms, with_pool, with_write_pool};
use serde::Serialize;

/// An uploaded component, without its bytes.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct ComponentRow {
    pub sha256: String,
    pub name: String,
    pub version: String,
    pub publisher: String,
    pub size: i64,
    /// Key id of the publisher key whose signature was verified; `null` for a component
    /// taken unsigned while an admin allowed that.
    pub signed_by: Option<String>,
    pub uploaded_at: i64,
    pub uploaded_by: String,
}

/// One entry of a plugin name's history.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct PluginEventRow {
    pub id: i64,
    pub name: String,
    /// install, rollback, auto-rollback, regrant, suspend, enable.
    pub kind: String,
    pub sha256: Option<String>,
    pub version: Option<String>,
    pub reason: Option<String>,
    pub actor: String,
    pub at: i64,
}

/// A new event, before it has an id.
pub struct NewPluginEvent<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub sha256: Option<&'a str>,
    pub version: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub actor: &'a str,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct PublisherKeyRow {
    pub key_id: String,
    pub publisher: String,
    /// The Ed25519 public key, SubjectPublicKeyInfo PEM.
    pub public_key: String,
    pub added_at: i64,
    pub added_by: String,
}

impl Store {
    /// Keep an uploaded component. The same content again is a no-op; another content
    /// under a name and version already taken is a conflict (versions are immutable).
    pub async fn put_component(&self, row: &ComponentRow, bytes: &[u8]) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            let existing: Option<(String,)> =
                sqlx::query_as("SELECT sha256 FROM plugin_components WHERE name = $1 AND version = $2")
                    .bind(&row.name).bind(&row.version).fetch_optional(pool).await?;
            match existing {
                Some((sha,)) if sha == row.sha256 => return Ok(()),
                Some(_) => {
                    return Err(StoreError::Conflict(format!(
                        "plugin {}@{} with other content (versions are immutable: raise the version)",
                        row.name, row.version
                    )))
                }
                None => {}
            }
            sqlx::query(
                "INSERT INTO plugin_components (sha256, name, version, publisher, component, size, signed_by, uploaded_at, uploaded_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (sha256) DO NOTHING")
                .bind(&row.sha256).bind(&row.name).bind(&row.version).bind(&row.publisher).bind(bytes)
                .bind(row.size).bind(&row.signed_by).bind(row.uploaded_at).bind(&row.uploaded_by)
                .execute(pool).await
                .map_err(|e| StoreError::conflict_or(e, || format!("plugin {}@{}", row.name, row.version)))?;
        });
        Ok(())
    }

    pub async fn component_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>,)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT component FROM plugin_components WHERE sha256 = $1").bind(sha256).fetch_optional(pool).await?);
        Ok(row.map(|(b,)| b))
    }

    /// The uploaded components of plugin `name`, newest first.
    pub async fn components(&self, name: &str) -> Result<Vec<ComponentRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT sha256, name, version, publisher, size, signed_by, uploaded_at, uploaded_by
                 FROM plugin_components WHERE name = $1 ORDER BY uploaded_at DESC")
            .bind(name).fetch_all(pool).await?))
    }

    pub async fn append_plugin_event(&self, e: &NewPluginEvent<'_>) -> Result<i64, StoreError> {
        let (id,): (i64,) = with_write_pool!(self, pool => sqlx::query_as(
                "INSERT INTO plugin_events (name, kind, sha256, version, reason, actor, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id")
            .bind(e.name).bind(e.kind).bind(e.sha256).bind(e.version).bind(e.reason).bind(e.actor).bind(now_ms())
            .fetch_one(pool).await?);
        self.announce(super::Change::Catalog).await;
        Ok(id)
    }

    /// Events after `after` (all with 0), oldest first.
    pub async fn plugin_events_since(&self, after: i64) -> Result<Vec<PluginEventRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT id, name, kind, sha256, version, reason, actor, at FROM plugin_events WHERE id > $1 ORDER BY id")
            .bind(after).fetch_all(pool).await?))
    }

    /// One plugin name's history, newest first.
    pub async fn plugin_history(&self, name: &str, limit: i64) -> Result<Vec<PluginEventRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT id, name, kind, sha256, version, reason, actor, at FROM plugin_events WHERE name = $1
                 ORDER BY id DESC LIMIT $2")
            .bind(name).bind(limit).fetch_all(pool).await?))
    }

    pub async fn latest_plugin_event(&self) -> Result<i64, StoreError> {
        let (id,): (Option<i64>,) =
            with_pool!(self, pool => sqlx::query_as("SELECT MAX(id) FROM plugin_events").fetch_one(pool).await?);
        Ok(id.unwrap_or(0))
    }

    /// Granted capabilities by plugin name (JSON arrays).
    pub async fn plugin_grants(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(with_pool!(self, pool =>
            sqlx::query_as("SELECT plugin, capabilities FROM plugin_grants ORDER BY plugin").fetch_all(pool).await?))
    }

    pub async fn put_plugin_grants(&self, plugin: &str, capabilities: &str, actor: &str) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO plugin_grants (plugin, capabilities, updated_at, updated_by) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (plugin) DO UPDATE SET capabilities = excluded.capabilities,
                     updated_at = excluded.updated_at, updated_by = excluded.updated_by")
                .bind(plugin).bind(capabilities).bind(now_ms()).bind(actor).execute(pool).await?;
        });
        Ok(())
    }

    pub async fn add_publisher_key(&self, row: &PublisherKeyRow) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO publisher_keys (key_id, publisher, public_key, added_at, added_by) VALUES ($1, $2, $3, $4, $5)")
                .bind(&row.key_id).bind(&row.publisher).bind(&row.public_key).bind(row.added_at).bind(&row.added_by)
                .execute(pool).await
                .map_err(|e| StoreError::conflict_or(e, || format!("publisher key {}", row.key_id)))?;
        });
        Ok(())
    }

    /// The tenant whose plugin `name` is; `None`: shared (first-party, or the operators').
    pub async fn plugin_owner(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT tenant FROM plugin_owners WHERE name = $1")
            .bind(name).fetch_optional(pool).await?);
        Ok(row.map(|(t,)| t))
    }

    /// How many plugin names are `tenant`'s.
    pub async fn tenant_plugin_names(&self, tenant: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = with_pool!(self, pool => sqlx::query_as(
                "SELECT COUNT(*) FROM plugin_owners WHERE tenant = $1")
            .bind(tenant).fetch_one(pool).await?);
        Ok(n)
    }

    /// Every tenant's plugin name, with its tenant.
    pub async fn plugin_owners(&self) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT name, tenant FROM plugin_owners").fetch_all(pool).await?);
        Ok(rows.into_iter().collect())
    }

    /// Make `name` `tenant`'s unless it is already someone's; returns whose it is now (two
    /// tenants racing for a name: the first one's).
    pub async fn claim_plugin_name(&self, name: &str, tenant: &str) -> Result<String, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO plugin_owners (name, tenant, claimed_at) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO NOTHING")
                .bind(name).bind(tenant).bind(now_ms()).execute(&mut *tx).await?;
            let (owner,): (String,) = sqlx::query_as("SELECT tenant FROM plugin_owners WHERE name = $1")
                .bind(name).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(owner)
        })
    }

    pub async fn publisher_keys(&self) -> Result<Vec<PublisherKeyRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT key_id, publisher, public_key, added_at, added_by FROM publisher_keys ORDER BY publisher, added_at")
            .fetch_all(pool).await?))
    }

    /// Stop trusting a key. Returns whether it existed.
    pub async fn remove_publisher_key(&self, key_id: &str) -> Result<bool, StoreError> {
        let removed = with_write_pool!(self, pool =>
            sqlx::query("DELETE FROM publisher_keys WHERE key_id = $1").bind(key_id).execute(pool).await?.rows_affected());
        Ok(removed > 0)
    }

    pub async fn server_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = with_pool!(self, pool =>
            sqlx::query_as("SELECT value FROM server_settings WHERE key = $1").bind(key).fetch_optional(pool).await?);
        Ok(row.map(|(v,)| v))
    }

    pub async fn put_server_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO server_settings (key, value, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")
                .bind(key).bind(value).bind(now_ms()).execute(pool).await?;
        });
        Ok(())
    }
}
