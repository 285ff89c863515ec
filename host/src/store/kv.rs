//! The plugins' key-value stores (the `kv` capability): one namespace per plugin name,
//! in the database, so every version of a plugin and every replica sees the same values
//! and they survive a restart (`plugins::context::KvStore`).

use super::{Backend, Store, StoreError, WriteTx, now_ms, with_pool, with_write_pool};

impl Store {
    /// The value `plugin` stored under `key`.
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>,)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT value FROM plugin_kv WHERE plugin = $1 AND key = $2")
            .bind(plugin).bind(key).fetch_optional(pool).await?);
        Ok(row.map(|(v,)| v))
    }

    /// Store `value` under `key` for `plugin`, unless the plugin's keys and values would
    /// then take more than `quota` bytes: `Ok(false)`, and nothing changed.
    pub async fn kv_set(&self, plugin: &str, key: &str, value: &[u8], quota: usize) -> Result<bool, StoreError> {
        let size = (key.len() + value.len()) as i64;
        let postgres = matches!(self.backend, Backend::Postgres(_));
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if postgres {
                // Two replicas setting keys of one plugin at once would each see the other's
                // total without its new key, and together pass the quota. SQLite's writer
                // is one at a time already (BEGIN IMMEDIATE).
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('plugin_kv:' || $1))")
                    .bind(plugin).execute(&mut *tx).await?;
            }
            let (others,): (i64,) = sqlx::query_as(
                    "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM plugin_kv WHERE plugin = $1 AND key <> $2")
                .bind(plugin).bind(key).fetch_one(&mut *tx).await?;
            if others + size > quota as i64 {
                return Ok(false);
            }
            sqlx::query(
                    "INSERT INTO plugin_kv (plugin, key, value, size, updated_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value, size = excluded.size,
                                                            updated_at = excluded.updated_at")
                .bind(plugin).bind(key).bind(value).bind(size).bind(now_ms()).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Remove `key` of `plugin`; a missing key is not an error.
    pub async fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1 AND key = $2")
                .bind(plugin).bind(key).execute(pool).await?;
            Ok(())
        })
    }
}
