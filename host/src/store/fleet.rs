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
    /// The counts of the whole server, or of one tenant's devices and their operations.
    pub async fn fleet_counts(&self, tenant: Option<&str>) -> Result<FleetCounts, StoreError> {
        let now = now_ms();
        let since = (now / DAY_MS - (ENROLLED_DAYS - 1)) * DAY_MS;
        // An operator's statements stay unconditioned (no `$n IS NULL OR …` for the
        // planner to see through); a tenant's add its condition.
        let confined = tenant.is_some();
        let pick = |whole: &'static str, tenants: &'static str| if confined { tenants } else { whole };
        let devices_sql = pick(
            "SELECT device_type, status, COUNT(*) AS count FROM devices GROUP BY device_type, status ORDER BY 1, 2",
            "SELECT device_type, status, COUNT(*) AS count FROM devices WHERE tenant = $1
             GROUP BY device_type, status ORDER BY 1, 2",
        );
        let enrolled_sql = pick(
            "SELECT (enrolled_at / $1) * $1 AS day, COUNT(*) AS count FROM devices WHERE enrolled_at >= $2
             GROUP BY day ORDER BY day",
            "SELECT (enrolled_at / $1) * $1 AS day, COUNT(*) AS count FROM devices WHERE enrolled_at >= $2
             AND tenant = $3 GROUP BY day ORDER BY day",
        );
        let operations_sql = pick(
            "SELECT state, COUNT(*) AS count FROM operations GROUP BY state ORDER BY state",
            "SELECT state, COUNT(*) AS count FROM operations
             WHERE device IN (SELECT id FROM devices WHERE tenant = $1) GROUP BY state ORDER BY state",
        );
        let seen_sql = pick(
            "SELECT COUNT(*) FROM devices WHERE last_seen_at >= $1",
            "SELECT COUNT(*) FROM devices WHERE last_seen_at >= $1 AND tenant = $2",
        );
        // The tenant is the last parameter of each statement that names it.
        macro_rules! last {
            ($q:expr) => {
                match tenant {
                    Some(t) => $q.bind(t),
                    None => $q,
                }
            };
        }
        with_pool!(self, pool => {
            let devices = last!(sqlx::query_as(devices_sql)).fetch_all(pool).await?;
            let enrolled_per_day =
                last!(sqlx::query_as(enrolled_sql).bind(DAY_MS).bind(since)).fetch_all(pool).await?;
            let operations = last!(sqlx::query_as(operations_sql)).fetch_all(pool).await?;
            let (seen_last_15_min,): (i64,) =
                last!(sqlx::query_as(seen_sql).bind(now - 15 * 60_000)).fetch_one(pool).await?;
            Ok(FleetCounts { devices, enrolled_per_day, operations, seen_last_15_min })
        })
    }
}
