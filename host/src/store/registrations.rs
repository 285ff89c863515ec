//! LwM2M registrations (`coap/registration.rs`): each replica keeps the ones it serves in
//! memory and writes them through here, so a registration survives a restart, any replica
//! can answer an update or a de-registration, and the replica that adds an activity knows
//! which registered devices listen for it.

use super::{Backend, Store, StoreError, trusted, with_pool, with_write_pool};

/// One registration as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CoapRegistration {
    /// The registration's location (`/rd/{id}`): unguessable.
    pub id: String,
    pub device: i64,
    pub device_type: String,
    pub device_id: String,
    /// The socket address the device registered or last updated from.
    pub addr: String,
    /// 1 when over DTLS.
    pub secure: i64,
    pub lifetime_secs: i64,
    pub binding: String,
    /// When it was made or last updated (ms).
    pub updated_at: i64,
}

impl CoapRegistration {
    /// Whether it still holds at `now` (ms): updated within its lifetime.
    pub fn live(&self, now: i64) -> bool {
        now - self.updated_at <= self.lifetime_secs.saturating_mul(1000)
    }
}

const COLUMNS: &str = "id, device, device_type, device_id, addr, secure, lifetime_secs, binding, updated_at";

impl Store {
    /// Store a new registration: it replaces the device's earlier one (a device has one).
    pub async fn save_coap_registration(&self, r: &CoapRegistration) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            sqlx::query(
                    "INSERT INTO coap_registrations (id, device, device_type, device_id, addr, secure, lifetime_secs, binding, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (device) DO UPDATE SET id = excluded.id, device_type = excluded.device_type,
                         device_id = excluded.device_id, addr = excluded.addr, secure = excluded.secure,
                         lifetime_secs = excluded.lifetime_secs, binding = excluded.binding, updated_at = excluded.updated_at")
                .bind(&r.id).bind(r.device).bind(&r.device_type).bind(&r.device_id).bind(&r.addr).bind(r.secure)
                .bind(r.lifetime_secs).bind(&r.binding).bind(r.updated_at)
                .execute(pool).await?;
            Ok(())
        })
    }

    /// An update: where the device is now, and its lifetime and binding. False when the
    /// registration is gone (ended meanwhile, or replaced by a newer one).
    pub async fn update_coap_registration(&self, r: &CoapRegistration) -> Result<bool, StoreError> {
        let n = with_write_pool!(self, pool => sqlx::query(
                "UPDATE coap_registrations SET addr = $2, secure = $3, lifetime_secs = $4, binding = $5, updated_at = $6
                 WHERE id = $1")
            .bind(&r.id).bind(&r.addr).bind(r.secure).bind(r.lifetime_secs).bind(&r.binding).bind(r.updated_at)
            .execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Registration `id`, live or not.
    pub async fn coap_registration(&self, id: &str) -> Result<Option<CoapRegistration>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM coap_registrations WHERE id = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(id).fetch_optional(pool).await?))
    }

    /// The device's registration, live or not.
    pub async fn coap_registration_of(&self, device: i64) -> Result<Option<CoapRegistration>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM coap_registrations WHERE device = $1");
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(device).fetch_optional(pool).await?))
    }

    /// Every registration still live at `now` (ms), to serve after a start.
    pub async fn live_coap_registrations(&self, now: i64) -> Result<Vec<CoapRegistration>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM coap_registrations WHERE updated_at + lifetime_secs * 1000 >= $1 ORDER BY device"
        );
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(now).fetch_all(pool).await?))
    }

    /// The live registrations of the devices with operations of `activity` still queued:
    /// whom to send a new activity to, whichever replica they registered through.
    pub async fn activity_coap_registrations(
        &self,
        activity: i64,
        now: i64,
    ) -> Result<Vec<CoapRegistration>, StoreError> {
        let columns = COLUMNS.split(", ").map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT {columns} FROM coap_registrations r
             WHERE r.updated_at + r.lifetime_secs * 1000 >= $2
               AND EXISTS (SELECT 1 FROM operations o
                           WHERE o.device = r.device AND o.activity = $1 AND o.state IN ('PENDING', 'NOTNOW'))
             ORDER BY r.device"
        );
        Ok(with_pool!(self, pool => sqlx::query_as(trusted(&sql)).bind(activity).bind(now).fetch_all(pool).await?))
    }

    /// End registration `id` (de-registered). Whether it was there.
    pub async fn delete_coap_registration(&self, id: &str) -> Result<bool, StoreError> {
        let n = with_write_pool!(self, pool => sqlx::query("DELETE FROM coap_registrations WHERE id = $1")
            .bind(id).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Registration `id` if it is past its lifetime at `now` (an update on another replica
    /// keeps it). Whether it ended.
    pub async fn end_expired_coap_registration(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let n = with_write_pool!(self, pool => sqlx::query(
                "DELETE FROM coap_registrations WHERE id = $1 AND updated_at + lifetime_secs * 1000 < $2")
            .bind(id).bind(now).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }
}

/// A CoAP request awaiting its answer, as stored (`coap/exchange.rs`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CoapExchange {
    /// The request's token, hex.
    pub token: String,
    pub device: i64,
    /// The socket address the request went to: only it may answer.
    pub addr: String,
    /// 1 when over DTLS.
    pub secure: i64,
    pub path: String,
    pub operation_id: i64,
    /// 1 for an observation.
    pub observe: i64,
    pub created_at: i64,
}

impl Store {
    /// Remember a request sent (write-through from the replica's memory).
    pub async fn save_coap_exchange(&self, x: &CoapExchange) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            sqlx::query(
                    "INSERT INTO coap_exchanges (token, device, addr, secure, path, operation_id, observe, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (token) DO NOTHING")
                .bind(&x.token).bind(x.device).bind(&x.addr).bind(x.secure).bind(&x.path).bind(x.operation_id)
                .bind(x.observe).bind(x.created_at)
                .execute(pool).await?;
            Ok(())
        })
    }

    /// The request with `token`, if one is awaited (made by any replica).
    pub async fn coap_exchange(&self, token: &str) -> Result<Option<CoapExchange>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT token, device, addr, secure, path, operation_id, observe, created_at
                 FROM coap_exchanges WHERE token = $1")
            .bind(token).fetch_optional(pool).await?))
    }

    /// The request with `token` was answered, given up or cancelled.
    pub async fn delete_coap_exchange(&self, token: &str) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query("DELETE FROM coap_exchanges WHERE token = $1")
            .bind(token).execute(pool).await?.rows_affected());
        Ok(())
    }

    /// Every request to `device` (its registration ended, or it was removed).
    pub async fn delete_coap_exchanges_of(&self, device: i64) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query("DELETE FROM coap_exchanges WHERE device = $1")
            .bind(device).execute(pool).await?.rows_affected());
        Ok(())
    }

    /// Requests other than observations sent before `before` (ms): their answers are no
    /// longer awaited (their operations went back to the queue). How many were swept.
    pub async fn sweep_coap_exchanges(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            with_write_pool!(self, pool => sqlx::query("DELETE FROM coap_exchanges WHERE observe = 0 AND created_at < $1")
            .bind(before).execute(pool).await?.rows_affected()),
        )
    }
}
