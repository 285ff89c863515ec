//! Artifacts (what Drover knows of an uploaded image; the bytes are in the artifact
//! storage, `crate::artifacts`) and the per-device download grants that let a device
//! fetch one. docs/rollouts.md.

use super::{Backend, Store, StoreError, WriteTx, now_ms, with_pool, with_write_pool};
use serde::Serialize;

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct ArtifactRow {
    pub id: i64,
    pub name: String,
    pub version: String,
    /// JSON list of device types.
    #[serde(skip)]
    pub device_types: String,
    /// JSON list of compatible models; empty: any model.
    #[serde(skip)]
    pub models: String,
    pub size: i64,
    pub sha256: String,
    /// The publisher key that signed it, if it was signed.
    pub signed_by: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    /// The tenant whose it is (named `TENANT/NAME`); absent: the operators'.
    pub tenant: Option<String>,
}

impl ArtifactRow {
    pub fn types(&self) -> Vec<String> {
        serde_json::from_str(&self.device_types).unwrap_or_default()
    }

    pub fn model_list(&self) -> Vec<String> {
        serde_json::from_str(&self.models).unwrap_or_default()
    }
}

#[derive(sqlx::FromRow)]
struct GrantRow {
    #[sqlx(flatten)]
    artifact: ArtifactRow,
    device: i64,
}

/// What an upload stores (the bytes are already in the artifact storage).
pub struct NewArtifact<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub device_types: &'a [String],
    pub models: &'a [String],
    pub size: i64,
    pub sha256: &'a str,
    pub signed_by: Option<&'a str>,
    pub created_by: &'a str,
    pub tenant: Option<&'a str>,
}

const COLUMNS: &str =
    "id, name, version, device_types, models, size, sha256, signed_by, created_by, created_at, tenant";

impl Store {
    pub async fn add_artifact(&self, a: &NewArtifact<'_>) -> Result<ArtifactRow, StoreError> {
        let sql = format!(
            "INSERT INTO artifacts (name, version, device_types, models, size, sha256, signed_by, created_by, created_at,
                                    tenant)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}"
        );
        let types = serde_json::to_string(a.device_types).expect("JSON");
        let models = serde_json::to_string(a.models).expect("JSON");
        with_write_pool!(self, pool => sqlx::query_as(super::trusted(&sql))
            .bind(a.name).bind(a.version).bind(types).bind(models).bind(a.size).bind(a.sha256)
            .bind(a.signed_by).bind(a.created_by).bind(now_ms()).bind(a.tenant)
            .fetch_one(pool).await
            .map_err(|e| StoreError::conflict_or(e, || format!("artifact {} {}", a.name, a.version))))
    }

    pub async fn artifacts(&self) -> Result<Vec<ArtifactRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM artifacts ORDER BY name, created_at, id");
        Ok(with_pool!(self, pool => sqlx::query_as(super::trusted(&sql)).fetch_all(pool).await?))
    }

    pub async fn artifact(&self, name: &str, version: &str) -> Result<Option<ArtifactRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM artifacts WHERE name = $1 AND version = $2");
        Ok(with_pool!(self, pool => sqlx::query_as(super::trusted(&sql)).bind(name).bind(version)
            .fetch_optional(pool).await?))
    }

    pub async fn artifact_by_key(&self, id: i64) -> Result<Option<ArtifactRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM artifacts WHERE id = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(super::trusted(&sql)).bind(id).fetch_optional(pool).await?))
    }

    /// The newest artifact of `version` for `device_type` among `tenant`'s (`None`: the
    /// operators'), preferring one named `name`: what a rollback sends a device back to.
    /// Never another tenant's: its bytes are not this tenant's to send.
    pub async fn artifact_for_version(
        &self,
        name: &str,
        version: &str,
        device_type: &str,
        tenant: Option<&str>,
    ) -> Result<Option<ArtifactRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM artifacts WHERE version = $1 ORDER BY created_at DESC, id DESC");
        let rows: Vec<ArtifactRow> =
            with_pool!(self, pool => sqlx::query_as(super::trusted(&sql)).bind(version).fetch_all(pool).await?);
        let fits: Vec<ArtifactRow> = rows
            .into_iter()
            .filter(|a| a.tenant.as_deref() == tenant && a.types().iter().any(|t| t == device_type))
            .collect();
        Ok(fits.iter().find(|a| a.name == name).or(fits.first()).cloned())
    }

    /// Delete an artifact unless a rollout that is not over uses it (as its image, or as
    /// the image a device is being rolled back to). `Refused` names the rollout.
    pub async fn delete_artifact(&self, id: i64) -> Result<bool, StoreError> {
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let live: Option<(String,)> = sqlx::query_as(
                "SELECT r.name FROM rollouts r WHERE r.done_at IS NULL AND (r.artifact = $1 OR EXISTS
                   (SELECT 1 FROM rollout_devices rd WHERE rd.rollout = r.id AND rd.rollback_artifact = $1))
                 ORDER BY r.id LIMIT 1")
                .bind(id).fetch_optional(&mut *tx).await?;
            if let Some((name,)) = live {
                return Err(StoreError::Refused(format!("rollout `{name}` uses it and is not over")));
            }
            // Rollouts that are over keep their history; the artifact's row goes only when
            // none names it.
            let used: Option<(String,)> =
                sqlx::query_as("SELECT name FROM rollouts WHERE artifact = $1 ORDER BY id LIMIT 1")
                    .bind(id).fetch_optional(&mut *tx).await?;
            if let Some((name,)) = used {
                return Err(StoreError::Refused(format!(
                    "rollout `{name}` (over) names it: delete the rollout first, its history goes with it"
                )));
            }
            let n = sqlx::query("DELETE FROM artifacts WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    /// Whether another artifact row shares these bytes (then they stay in the storage).
    pub async fn artifact_bytes_shared(&self, sha256: &str) -> Result<bool, StoreError> {
        let n: (i64,) = with_pool!(self, pool => sqlx::query_as("SELECT COUNT(*) FROM artifacts WHERE sha256 = $1")
            .bind(sha256).fetch_one(pool).await?);
        Ok(n.0 > 0)
    }

    /// The artifact a live download grant opens, with the device it was given to.
    pub async fn artifact_for_grant(&self, token_hash: &str) -> Result<Option<(ArtifactRow, i64)>, StoreError> {
        let sql = "SELECT a.id, a.name, a.version, a.device_types, a.models, a.size, a.sha256, a.signed_by,
                          a.created_by, a.created_at, a.tenant, g.device
                   FROM artifact_grants g JOIN artifacts a ON a.id = g.artifact JOIN devices d ON d.id = g.device
                   WHERE g.token_hash = $1 AND g.expires_at > $2 AND d.status <> 'removed'";
        let row: Option<GrantRow> =
            with_pool!(self, pool => sqlx::query_as(sql).bind(token_hash).bind(now_ms()).fetch_optional(pool).await?);
        Ok(row.map(|g| (g.artifact, g.device)))
    }

    /// Drop expired download grants.
    pub async fn purge_grants(&self) -> Result<u64, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query("DELETE FROM artifact_grants WHERE expires_at <= $1")
            .bind(now_ms()).execute(pool).await?.rows_affected()))
    }
}

impl Store {
    /// The payload an operation is delivered with (its own, else its activity's).
    pub async fn operation_payload(&self, id: i64) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT COALESCE(o.payload, a.payload) FROM operations o JOIN activities a ON a.id = o.activity
                 WHERE o.id = $1")
            .bind(id).fetch_optional(pool).await?);
        Ok(row.and_then(|(p,)| p))
    }
}

impl Store {
    /// Download grants for `devices` (their token hashes) to `artifact`, outside a rollout
    /// step (benchmarks; a rollout writes its grants in `start_rollout_devices`).
    pub async fn grant_downloads(
        &self,
        artifact: i64,
        devices: &[super::Start],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let rows = serde_json::to_string(devices).expect("JSON");
        let sql = if self.is_postgres() {
            "INSERT INTO artifact_grants (token_hash, artifact, device, expires_at)
             SELECT e.token_hash, $2, e.device, $3 FROM jsonb_to_recordset(CAST($1 AS jsonb)) AS e(device bigint, token_hash text)"
        } else {
            "INSERT INTO artifact_grants (token_hash, artifact, device, expires_at)
             SELECT json_extract(value, '$.token_hash'), $2, json_extract(value, '$.device'), $3 FROM json_each($1)"
        };
        with_write_pool!(self, pool => sqlx::query(sql).bind(rows).bind(artifact).bind(expires_at)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }
}
