//! Stored credentials: device access tokens and admin tokens, by SHA-256 only.

use super::devices::DeviceRow;
use super::{Backend, Store, StoreError, WriteTx, now_ms, with_pool, with_write_pool};

impl Store {
    pub async fn insert_device_credential(
        &self,
        device: i64,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO device_credentials (token_hash, device, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash).bind(device).bind(now_ms()).bind(expires_at).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// The device a live (unexpired, unrevoked) credential belongs to, unless removed.
    pub async fn device_for_credential(&self, token_hash: &str) -> Result<Option<DeviceRow>, StoreError> {
        if let Some(direct) = self.direct() {
            return direct.read(|c| super::direct::device_for_credential(c, token_hash, now_ms()));
        }
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT d.id, d.device_type, d.device_id, d.name, d.owner, d.ownership, d.status, d.metadata,
                        d.push_token, d.session, d.enrolled_at, d.last_seen_at
                 FROM device_credentials c JOIN devices d ON d.id = c.device
                 WHERE c.token_hash = $1 AND c.revoked_at IS NULL AND c.expires_at > $2 AND d.status <> 'removed'")
            .bind(token_hash).bind(now_ms()).fetch_optional(pool).await?))
    }

    /// Replace a live credential with a new one. The old one stays valid until
    /// `old_valid_until` (if it would live longer), so a device whose refresh answer was
    /// lost in transit, or that has requests in flight, is not locked out.
    pub async fn refresh_device_credential(
        &self,
        device: i64,
        old_hash: &str,
        new_hash: &str,
        expires_at: i64,
        old_valid_until: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO device_credentials (token_hash, device, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(new_hash).bind(device).bind(now).bind(expires_at).execute(&mut *tx).await?;
            sqlx::query(
                "UPDATE device_credentials SET expires_at = CASE WHEN expires_at > $1 THEN $1 ELSE expires_at END
                 WHERE token_hash = $2 AND device = $3")
                .bind(old_valid_until).bind(old_hash).bind(device).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Revoke every credential of a device; returns how many were live.
    pub async fn revoke_device_credentials(&self, device: i64) -> Result<u64, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query(
                "UPDATE device_credentials SET revoked_at = $1 WHERE device = $2 AND revoked_at IS NULL")
            .bind(now_ms()).bind(device).execute(pool).await?.rows_affected()))
    }

    pub async fn insert_admin_token(&self, token_hash: &str, name: &str, role: &str) -> Result<(), StoreError> {
        let r = with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO admin_tokens (token_hash, name, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash).bind(name).bind(role).bind(now_ms()).execute(pool).await.map(|_| ()));
        r.map_err(|e| StoreError::conflict_or(e, || "that admin token".into()))
    }

    /// `(name, role)` of a live admin token.
    pub async fn admin_for_token(&self, token_hash: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT name, role FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(token_hash).fetch_optional(pool).await?))
    }
}

impl Store {
    pub async fn insert_enrollment_token(
        &self,
        token_hash: &str,
        device_type: &str,
        created_by: &str,
        expires_at: i64,
        uses: i64,
        import_batch: Option<&str>,
    ) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO enrollment_tokens (token_hash, device_type, created_by, created_at, expires_at, uses_left, import_batch)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(token_hash).bind(device_type).bind(created_by).bind(now_ms()).bind(expires_at).bind(uses)
            .bind(import_batch)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Use up one enrollment of a token for `device_type`. False when the token is
    /// unknown, expired, used up or for another type. One statement, so two devices
    /// racing for the last use cannot both win. A token made for one import claims only
    /// identities of `import_batch` (the identity's import; `None` for a new identity).
    pub async fn consume_enrollment_token(
        &self,
        token_hash: &str,
        device_type: &str,
        import_batch: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1
                 WHERE token_hash = $1 AND device_type = $2 AND uses_left > 0 AND expires_at > $3
                   AND (import_batch IS NULL OR import_batch = $4)")
            .bind(token_hash).bind(device_type).bind(now_ms()).bind(import_batch).execute(pool).await?.rows_affected())
            == 1)
    }
}
