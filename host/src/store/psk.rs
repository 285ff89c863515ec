//! Pre-shared keys for LwM2M over DTLS (`coap/dtls.rs`): one per device, sealed with the
//! server's secret key, and each a row of `device_credentials` so that revocation treats
//! it as any other credential of the device.

use super::{Backend, NewEvent, Store, StoreError, WriteTx, now_ms, with_pool, with_write_pool};

/// What the admin API shows of a device's key (never the key).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct PskRow {
    /// The PSK identity the device sends in its DTLS handshake.
    pub identity: String,
    pub created_at: i64,
    /// When it was revoked (with every credential of the device).
    pub revoked_at: Option<i64>,
}

/// A live key: the device it authenticates and the key's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveKey {
    pub device: i64,
    pub key: Vec<u8>,
}

/// Where a key is sealed: bound to its identity, so a sealed key copied to another row
/// does not open.
fn place(identity: &str) -> String {
    format!("device-psk/{identity}")
}

/// A PSK credential never expires by time; it ends when revoked or replaced.
const NEVER: i64 = i64::MAX;

impl Store {
    /// Give `device` the key `key` under `identity`, replacing (and revoking) the key it
    /// had; `event` is written with it. An identity another device holds is a conflict.
    pub async fn set_device_psk(
        &self,
        device: i64,
        identity: &str,
        key: &[u8],
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut rnd = [0u8; 16];
        getrandom::fill(&mut rnd).expect("the OS random source");
        let credential = format!("psk:{}", hex::encode(rnd));
        let sealed = self.sealer.seal(&place(identity), &hex::encode(key));
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                    "UPDATE device_credentials SET revoked_at = $1 WHERE revoked_at IS NULL AND token_hash =
                         (SELECT credential FROM device_psk WHERE device = $2)")
                .bind(now).bind(device).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM device_psk WHERE device = $1").bind(device).execute(&mut *tx).await?;
            // A key ends the device's LwM2M registration (made over plain CoAP, or with the
            // key it replaces) in the same commit: no replica takes an update of it once
            // the admin has the answer.
            sqlx::query("DELETE FROM coap_registrations WHERE device = $1").bind(device).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO device_credentials (token_hash, device, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(&credential).bind(device).bind(now).bind(NEVER).execute(&mut *tx).await?;
            sqlx::query(
                    "INSERT INTO device_psk (identity, device, credential, key_sealed, created_at)
                     VALUES ($1, $2, $3, $4, $5)")
                .bind(identity).bind(device).bind(&credential).bind(&sealed).bind(now)
                .execute(&mut *tx).await
                .map_err(|e| StoreError::conflict_or(e, || format!("PSK identity `{identity}`")))?;
            super::record_event!(&mut *tx, event);
            tx.commit().await?;
        });
        Ok(())
    }

    /// The device's key as the admin API shows it, if it has one.
    pub async fn device_psk(&self, device: i64) -> Result<Option<PskRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT p.identity, p.created_at, c.revoked_at
                 FROM device_psk p JOIN device_credentials c ON c.token_hash = p.credential
                 WHERE p.device = $1")
            .bind(device).fetch_optional(pool).await?))
    }

    /// The live key for `identity`: not revoked, of a device that is not removed.
    pub async fn live_psk(&self, identity: &str) -> Result<Option<LiveKey>, StoreError> {
        let row: Option<(i64, String)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT p.device, p.key_sealed
                 FROM device_psk p JOIN device_credentials c ON c.token_hash = p.credential
                 JOIN devices d ON d.id = p.device
                 WHERE p.identity = $1 AND c.revoked_at IS NULL AND d.status <> 'removed'")
            .bind(identity).fetch_optional(pool).await?);
        row.map(|(device, sealed)| self.open_psk(identity, device, &sealed)).transpose()
    }

    /// Every live key, by identity (the DTLS listener's cache at start).
    pub async fn live_psks(&self) -> Result<Vec<(String, LiveKey)>, StoreError> {
        let rows: Vec<(String, i64, String)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT p.identity, p.device, p.key_sealed
                 FROM device_psk p JOIN device_credentials c ON c.token_hash = p.credential
                 JOIN devices d ON d.id = p.device
                 WHERE c.revoked_at IS NULL AND d.status <> 'removed'")
            .fetch_all(pool).await?);
        rows.into_iter()
            .map(|(identity, device, sealed)| {
                let key = self.open_psk(&identity, device, &sealed)?;
                Ok((identity, key))
            })
            .collect()
    }

    /// The device that holds `identity`, live or revoked (an identity is never shared).
    pub async fn psk_holder(&self, identity: &str) -> Result<Option<i64>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_scalar("SELECT device FROM device_psk WHERE identity = $1")
            .bind(identity).fetch_optional(pool).await?))
    }

    /// Whether the device has a live key (then plain CoAP is refused for it).
    pub async fn has_live_psk(&self, device: i64) -> Result<bool, StoreError> {
        Ok(self.device_psk(device).await?.is_some_and(|p| p.revoked_at.is_none()))
    }

    fn open_psk(&self, identity: &str, device: i64, sealed: &str) -> Result<LiveKey, StoreError> {
        let key = self.sealer.open(&place(identity), sealed)?;
        let key = hex::decode(key).map_err(|e| StoreError::Refused(format!("the stored PSK of `{identity}`: {e}")))?;
        Ok(LiveKey { device, key })
    }
}
