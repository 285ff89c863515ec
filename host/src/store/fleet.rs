//! Fleet-wide counts: the console's overview and `GET /api/v1/fleet`. Each is one
//! grouped statement (indexes: `operations_by_state`, devices by type), never a read of
//! every row into the process.

use super::{Backend, Store, StoreError, now_ms, with_pool};

/// Days of enrolments the overview shows.
pub const ENROLLED_DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FleetCounts {
    /// Devices by type and status.
    pub devices: Vec<DeviceCount>,
    /// Devices enrolled per UTC day over the last 30 days, days without any left out.
    pub enrolled_per_day: Vec<DayCount>,
    /// Operations by state.
    pub operations: Vec<StateCount>,
    /// Devices that called in within the last 15 minutes.
    pub seen_last_15_min: i64,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct DeviceCount {
    pub device_type: String,
    pub status: String,
    pub count: i64,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct DayCount {
    /// The day's start, ms since the Unix epoch (UTC).
    pub day: i64,
    pub count: i64,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct StateCount {
    pub state: String,
    pub count: i64,
}

impl Store {
    pub async fn fleet_counts(&self) -> Result<FleetCounts, StoreError> {
        let now = now_ms();
        let since = (now / DAY_MS - (ENROLLED_DAYS - 1)) * DAY_MS;
        with_pool!(self, pool => {
            let devices = sqlx::query_as(
                    "SELECT device_type, status, COUNT(*) AS count FROM devices GROUP BY device_type, status ORDER BY 1, 2")
                .fetch_all(pool).await?;
            let enrolled_per_day = sqlx::query_as(
                    "SELECT (enrolled_at / $1) * $1 AS day, COUNT(*) AS count FROM devices WHERE enrolled_at >= $2
                     GROUP BY day ORDER BY day")
                .bind(DAY_MS).bind(since).fetch_all(pool).await?;
            let operations = sqlx::query_as("SELECT state, COUNT(*) AS count FROM operations GROUP BY state ORDER BY state")
                .fetch_all(pool).await?;
            let (seen_last_15_min,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices WHERE last_seen_at >= $1")
                .bind(now - 15 * 60_000).fetch_one(pool).await?;
            Ok(FleetCounts { devices, enrolled_per_day, operations, seen_last_15_min })
        })
    }
}
