//! Telemetry: what devices measure and report (battery, temperature, location …).
//! Every point is kept (under the retention) and the newest value of each name is kept
//! per device, so "what is it now" is one indexed read.

use super::{
    Backend, Filters, Param, Store, StoreError, WriteTx, bind_filters, trusted, values_placeholders, with_pool,
    with_write_pool,
};
use serde::Serialize;

/// One reported value.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// A JSON scalar: number, boolean or string.
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct TelemetryRow {
    /// Order of arrival (0 for latest values).
    pub id: i64,
    pub name: String,
    pub at: i64,
    /// The value as reported (a JSON number, boolean or string), as JSON text.
    pub value: String,
}

impl Store {
    /// Store points for a device and move its latest values forward (never back: a late
    /// point with an older time does not replace a newer one).
    pub async fn record_telemetry(&self, device: i64, points: &[Point]) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for chunk in points.chunks(200) {
                let sql = format!(
                    "INSERT INTO telemetry (device, name, at, value, number) VALUES {}",
                    values_placeholders(chunk.len(), 5, 1)
                );
                let mut q = sqlx::query(trusted(&sql));
                for p in chunk {
                    let number = match &p.value {
                        serde_json::Value::Number(n) => n.as_f64(),
                        serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
                        _ => None,
                    };
                    q = q.bind(device).bind(&p.name).bind(p.at).bind(p.value.to_string()).bind(number);
                }
                q.execute(&mut *tx).await?;
            }
            // One row per name in the upsert: PostgreSQL refuses to touch a row twice.
            // By name in a map: linear in the points, inside the write transaction.
            let mut newest: std::collections::HashMap<&str, &Point> = std::collections::HashMap::new();
            for p in points {
                let l = newest.entry(p.name.as_str()).or_insert(p);
                if l.at <= p.at {
                    *l = p;
                }
            }
            let mut latest: Vec<&Point> = newest.into_values().collect();
            latest.sort_by(|a, b| a.name.cmp(&b.name));
            for chunk in latest.chunks(200) {
                let sql = format!(
                    "INSERT INTO telemetry_latest (device, name, at, value) VALUES {}
                     ON CONFLICT (device, name) DO UPDATE SET at = excluded.at, value = excluded.value
                     WHERE excluded.at >= telemetry_latest.at",
                    values_placeholders(chunk.len(), 4, 1)
                );
                let mut q = sqlx::query(trusted(&sql));
                for p in chunk {
                    q = q.bind(device).bind(&p.name).bind(p.at).bind(p.value.to_string());
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The newest value of each name a device reported.
    pub async fn latest_telemetry(&self, device: i64) -> Result<Vec<TelemetryRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT CAST(0 AS BIGINT) AS id, name, at, value FROM telemetry_latest WHERE device = $1 ORDER BY name")
            .bind(device).fetch_all(pool).await?))
    }

    /// A device's points, last received first, optionally of one name, received before
    /// point `before` (an id: paging by time would split points measured in the same ms).
    pub async fn telemetry(
        &self,
        device: i64,
        name: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        let mut f = Filters::new(3);
        if let Some(n) = name {
            f.and("name = ?", Param::Text(n.to_string()));
        }
        if let Some(b) = before {
            f.and("id < ?", Param::Int(b));
        }
        let sql =
            format!("SELECT id, name, at, value FROM telemetry WHERE device = $1{} ORDER BY id DESC LIMIT $2", f.sql);
        Ok(with_pool!(self, pool => bind_filters!(sqlx::query_as(trusted(&sql)).bind(device).bind(limit), f)
            .fetch_all(pool).await?))
    }

    /// Retention: delete points older than `before`; returns how many.
    pub async fn purge_telemetry(&self, before: i64) -> Result<u64, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query("DELETE FROM telemetry WHERE at < $1")
            .bind(before).execute(pool).await?.rows_affected()))
    }
}
