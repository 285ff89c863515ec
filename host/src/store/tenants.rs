//! Tenants (`tenants.rs` has the rules): the list, and adding and removing them with
//! their events.

use super::{Backend, NewEvent, Store, StoreError, WriteTx, now_ms, with_pool, with_write_pool};

/// A tenant, with how many devices it holds.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct TenantRow {
    pub name: String,
    pub description: String,
    pub created_at: i64,
    /// Devices in it that are not removed.
    pub devices: i64,
}

const SELECT: &str = "SELECT t.name, t.description, t.created_at,
        (SELECT COUNT(*) FROM devices d WHERE d.tenant = t.name AND d.status <> 'removed') AS devices
     FROM tenants t";

impl Store {
    pub async fn tenants(&self) -> Result<Vec<TenantRow>, StoreError> {
        let sql = format!("{SELECT} ORDER BY t.name");
        Ok(with_pool!(self, pool => sqlx::query_as(super::trusted(&sql)).fetch_all(pool).await?))
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRow>, StoreError> {
        let sql = format!("{SELECT} WHERE t.name = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(super::trusted(&sql)).bind(name).fetch_optional(pool).await?))
    }

    /// Bytes a tenant's uploads take: its artifacts and its plugins' components.
    pub async fn tenant_storage(&self, name: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = with_pool!(self, pool => sqlx::query_as(
                "SELECT CAST(COALESCE((SELECT SUM(size) FROM artifacts WHERE tenant = $1), 0)
                           + COALESCE((SELECT SUM(c.size) FROM plugin_components c
                                       JOIN plugin_owners o ON o.name = c.name WHERE o.tenant = $1), 0) AS BIGINT)")
            .bind(name).fetch_one(pool).await?);
        Ok(n)
    }

    /// Whether a tenant of this name exists (without counting its devices).
    pub async fn tenant_exists(&self, name: &str) -> Result<bool, StoreError> {
        // COUNT, not `SELECT 1`: one integer type on both databases.
        let (n,): (i64,) = with_pool!(self, pool => sqlx::query_as(
                "SELECT COUNT(*) FROM tenants WHERE name = $1")
            .bind(name).fetch_one(pool).await?);
        Ok(n > 0)
    }

    pub async fn create_tenant(
        &self,
        name: &str,
        description: &str,
        event: &NewEvent,
    ) -> Result<TenantRow, StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO tenants (name, description, created_at) VALUES ($1, $2, $3)")
                .bind(name).bind(description).bind(now)
                .execute(&mut *tx).await
                .map_err(|e| StoreError::conflict_or(e, || format!("a tenant named `{name}`")))?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
        });
        Ok(TenantRow { name: name.to_string(), description: description.to_string(), created_at: now, devices: 0 })
    }

    /// Remove a tenant that holds nothing (`tenants::remove`), with its enrollment tokens.
    pub async fn delete_tenant(&self, name: &str, event: &NewEvent) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let found: Option<(String,)> = sqlx::query_as("SELECT name FROM tenants WHERE name = $1")
                .bind(name).fetch_optional(&mut *tx).await?;
            if found.is_none() {
                return Err(StoreError::NotFound(format!("tenant `{name}`")));
            }
            // Its artifacts' bytes are in the artifact storage, which only the service
            // removes (`artifacts::remove`), and a rollout's history names its artifact:
            // they go through the API, as devices, users and tokens do.
            let held: (i64, i64, i64, i64, i64) = sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM devices WHERE tenant = $1),
                            (SELECT COUNT(*) FROM users WHERE tenant = $1),
                            (SELECT COUNT(*) FROM admin_tokens WHERE tenant = $1 AND revoked_at IS NULL
                               AND (expires_at IS NULL OR expires_at > $2)),
                            (SELECT COUNT(*) FROM rollouts WHERE tenant = $1),
                            (SELECT COUNT(*) FROM artifacts WHERE tenant = $1)")
                .bind(name).bind(now).fetch_one(&mut *tx).await?;
            let (devices, users, tokens, rollouts, artifacts) = held;
            let what: Vec<String> = [
                (devices, "device(s) (removed ones count: they can be restored)"),
                (users, "user(s)"),
                (tokens, "live admin token(s)"),
                (rollouts, "rollout(s)"),
                (artifacts, "artifact(s)"),
            ]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            if !what.is_empty() {
                return Err(StoreError::Refused(format!(
                    "tenant `{name}` still holds {}: delete or revoke them first", what.join(", "))));
            }
            sqlx::query("DELETE FROM enrollment_tokens WHERE tenant = $1").bind(name).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM device_groups WHERE tenant = $1").bind(name).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM webhooks WHERE tenant = $1").bind(name).execute(&mut *tx).await?;
            // Its policies applied to its devices only, and it has none left.
            sqlx::query("DELETE FROM policies WHERE tenant = $1").bind(name).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM tenant_plugin_settings WHERE tenant = $1").bind(name).execute(&mut *tx).await?;
            // Its plugins stay (a plugin name's history is never rewritten) but become no
            // one's: `-NAME` is no tenant's name, so no tenant made later, even one of the
            // same name, sees them, manages them or enrolls devices as their types.
            sqlx::query("UPDATE plugin_owners SET tenant = '-' || tenant WHERE tenant = $1")
                .bind(name).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM tenants WHERE name = $1").bind(name).execute(&mut *tx).await?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
        });
        Ok(())
    }
}
