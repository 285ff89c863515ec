//! Which devices are online for push on an external broker, for every replica
//! (`mqtt/delivery.rs`; docs/delivery.md, "Replicas").

use super::{Backend, Store, StoreError, now_ms, with_pool, with_write_pool};

impl Store {
    /// Device `device_type`/`device_id` said `online` (`true`) or `offline` on its status
    /// topic. An unknown device changes nothing.
    pub async fn set_push_presence(&self, device_type: &str, device_id: &str, online: bool) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            if online {
                sqlx::query(
                        "INSERT INTO push_presence (device, since)
                         SELECT id, $3 FROM devices WHERE device_type = $1 AND device_id = $2
                         ON CONFLICT (device) DO UPDATE SET since = excluded.since")
                    .bind(device_type).bind(device_id).bind(now_ms()).execute(pool).await?;
            } else {
                sqlx::query(
                        "DELETE FROM push_presence WHERE device =
                             (SELECT id FROM devices WHERE device_type = $1 AND device_id = $2)")
                    .bind(device_type).bind(device_id).execute(pool).await?;
            }
            Ok(())
        })
    }

    /// Whether the device (by key) is online for push.
    pub async fn push_online(&self, device: i64) -> Result<bool, StoreError> {
        let row: Option<(i64,)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT device FROM push_presence WHERE device = $1")
            .bind(device).fetch_optional(pool).await?);
        Ok(row.is_some())
    }

    /// The devices of `activity` with operations still queued that are online for push.
    pub async fn activity_online_devices(&self, activity: i64) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = with_pool!(self, pool => sqlx::query_as(
                "SELECT DISTINCT o.device FROM operations o JOIN push_presence p ON p.device = o.device
                 WHERE o.activity = $1 AND o.state IN ('PENDING', 'NOTNOW') ORDER BY o.device")
            .bind(activity).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }
}
