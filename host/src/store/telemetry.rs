//! Telemetry: what devices measure and report (battery, temperature, location …).
//! Every point is kept (under the retention) and the newest value of each name is kept
//! per device, so "what is it now" is one indexed read.

use super::writes::Write;
use super::{Backend, Filters, Param, Store, StoreError, bind_filters, trusted, with_pool, with_write_pool};
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

impl Point {
    /// The value as a number, for rollups and rules: numbers, and booleans as 0/1.
    pub fn number(&self) -> Option<f64> {
        match &self.value {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }
}

impl Store {
    /// Store points for a device, move its latest values forward (never back: a late
    /// point with an older time does not replace a newer one) and merge the numeric ones
    /// into their rollups; in one transaction, shared with other devices' writes (group
    /// commit, `commit.rs`).
    /// `rollups: false` keeps the points alone (`--telemetry-rollups false`).
    pub async fn record_telemetry(&self, device: i64, points: &[Point], rollups: bool) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        self.grouped(Write::Telemetry { device, points: points.to_vec(), rollups }).await.map(|_| ())
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
