//! Storage: the only module that speaks SQL.
//!
//! Two backends, SQLite (default) and PostgreSQL, run the same SQL text: every statement
//! is written once and [`with_pool!`] hands it to the configured backend's pool, where it
//! is monomorphic (rows decode through `sqlx::FromRow`, which is generic over the
//! database). The dialects differ only in the migrations (`host/migrations/{sqlite,
//! postgres}`). See docs/operations.md.

mod analytics;
mod artifacts;
mod catalog;
mod changes;
mod commit;
mod compliance;
mod console;
mod devices;
mod direct;
mod events;
mod fleet;
mod kv;
mod operations;
mod policies;
mod presence;
mod psk;
mod registrations;
mod rollouts;
mod telemetry;
mod tenants;
mod tokens;
mod users;
mod wakeups;
mod webhooks;
mod writes;

pub use analytics::{AlertFilter, AlertRow, Bucket, GroupBucket, MetricScope, NewAlert, NewRule, RuleRow};
pub use artifacts::{ArtifactRow, NewArtifact};
pub use catalog::{ComponentRow, NewPluginEvent, PluginEventRow, PublisherKeyRow};
pub use changes::{Change, Changes};
pub use compliance::{ComplianceChange, ComplianceRow, DueDevice, Verdict};
pub use console::SessionRow;
pub use devices::{
    Claim, DeviceFilter, DeviceQuery, DeviceRow, GroupRow, NewDevice, TAG_PATTERN, tag_list_schema, tag_problem,
};
pub(crate) use events::record_event;
pub use events::{ADMIN_ACTION, EventQuery, EventRow, NewEvent, Outcome, SETTLE};
pub use fleet::{DayCount, DeviceCount, ENROLLED_DAYS, FleetCounts, StateCount};
pub use operations::{
    ActivityRow, Cursor, DeviceKey, MAX_EXPLICIT_DEVICES, MAX_UNANSWERED, NO_ANSWER_ACTOR, NewActivity, OperationRow,
    QueuedOperation, ResultOutcome, TargetSet, TransitionRow,
};
pub use policies::{Applies, Assignment, DevicePolicyRow, NewPolicy, PolicyRow, PolicyTarget, RevisionRow};
pub use psk::{LiveKey, PskRow};
pub use registrations::{CoapExchange, CoapRegistration};
pub use rollouts::{
    DeviceChange, InFlight, LEASE_MS as ROLLOUT_LEASE_MS, Placement, RolloutDeviceRow, RolloutRow, Start, StartBatch,
    Waiting,
};
pub use telemetry::{Point, TelemetryRow};
pub use tenants::TenantRow;
pub use tokens::{AdminTokenRow, NewEnrollmentToken, Principal};
pub use tokens::{CertificateRow, PendingCertificate};
pub use users::{Login, UserChange, UserRow};
pub use wakeups::{DueWakeup, SettingsRow, TenantSettingsRow, WakeupRow};
pub use webhooks::{DeliveryRow, NewWebhook, WebhookRow};
pub use writes::LEVELS as ROLLUP_LEVELS;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// SQLite has one writer at a time. Left to itself, a writer that finds the database
/// locked sleeps in its busy handler (1, 2, 5 … 100 ms), which under concurrent polls
/// turns a sub-millisecond write into tens of milliseconds. So writes go through a pool
/// of one connection, where they queue in order without sleeping, and reads through a
/// pool of several (WAL lets them run beside the writer). The hot path of delivery reads
/// through `direct` instead and commits its batches on the write pool's connection
/// (`direct.rs` says why). PostgreSQL has one pool.
#[derive(Clone)]
enum Backend {
    Sqlite { read: SqlitePool, write: SqlitePool, direct: std::sync::Arc<direct::Readers> },
    Postgres(PgPool),
}

/// The database. Cheap to clone (pools are shared).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Group commit of delivery writes (`commit.rs`); `None` inside the committer itself.
    committer: Option<commit::Committer>,
    /// Seals the secrets stored in the database (`secrets.rs`); without a key, none.
    sealer: std::sync::Arc<crate::secrets::Sealer>,
    /// Wake-ups of the loops that follow other replicas' changes (`changes.rs`).
    changes: std::sync::Arc<Changes>,
}

/// Run `$body` with `$pool` bound to the backend's pool. The body is compiled once per
/// backend, so it must be SQL both understand.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { read: $pool, .. } => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Like [`with_pool!`], for code that writes: SQLite's single-connection write pool.
macro_rules! with_write_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { write: $pool, .. } => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_write_pool;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// A change the database's rules refuse (the message says which and why).
    #[error("{0}")]
    Refused(String),
    #[error("database URL `{}`: use sqlite://PATH or postgres://USER@HOST/DB", crate::secrets::redact_url(.0))]
    Url(String),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
}

/// A stored name outside its closed set (written by a newer version, or by hand): an
/// error, never a silent default.
pub(crate) fn decode(e: crate::device::UnknownName) -> StoreError {
    StoreError::Db(sqlx::Error::Decode(Box::new(e)))
}

impl StoreError {
    /// Map a unique-constraint violation to `Conflict(what)`.
    pub(crate) fn conflict_or(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what()),
            _ => StoreError::Db(e),
        }
    }
}

/// Milliseconds since the Unix epoch: the time format of every table.
/// `last_seen_at` is rewritten at most this often by device messages that carry nothing
/// else (devices turn unreachable after hours; a write per poll would be waste).
pub const LAST_SEEN_RESOLUTION_MS: i64 = 30_000;

/// What a commit on SQLite promises (`--sqlite-synchronous`; docs/operations.md,
/// "Durability"). Both keep the database consistent after a crash of the process or of
/// the machine; they differ in what a power loss or an OS crash may take back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// WAL with `synchronous=NORMAL`: a commit survives the process being killed; the
    /// last commits before a power loss or an OS crash may be lost (never half of one).
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk (fsync) before it is acknowledged.
    Full,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Connect to `url` (`sqlite://PATH` or `postgres://…`) and apply migrations, with
    /// SQLite's default durability ([`Synchronous::Normal`]).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_with(url, Synchronous::default()).await
    }

    /// [`Store::connect`], with `synchronous` on SQLite (PostgreSQL's durability is its
    /// own `synchronous_commit`, set on the server).
    pub async fn connect_with(url: &str, synchronous: Synchronous) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|_| StoreError::Url(url.into()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(match synchronous {
                    Synchronous::Normal => SqliteSynchronous::Normal,
                    Synchronous::Full => SqliteSynchronous::Full,
                })
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            Self::sqlite(options, synchronous).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(|_| StoreError::Url(url.into()))?;
            Self::postgres(options).await
        } else {
            Err(StoreError::Url(url.into()))
        }
    }

    /// `options` must set `synchronous` as it is given here, for the connections that
    /// are not sqlx's (`direct.rs`).
    pub async fn sqlite(options: SqliteConnectOptions, synchronous: Synchronous) -> Result<Store, StoreError> {
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            // Writers wait their turn here; only a stuck database takes this long.
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&write).await?;
        let direct = std::sync::Arc::new(direct::Readers::new(options.get_filename().to_path_buf(), synchronous));
        let read = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        Ok(Store::with_committer(Backend::Sqlite { read, write, direct }))
    }

    pub async fn postgres(options: PgConnectOptions) -> Result<Store, StoreError> {
        let pool = PgPoolOptions::new().max_connections(16).connect_with(options).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Store::with_committer(Backend::Postgres(pool)))
    }

    fn with_committer(backend: Backend) -> Store {
        let committer = match &backend {
            Backend::Sqlite { direct, .. } => {
                commit::Committer::start_sqlite(direct::Writer::new(direct.path(), direct.synchronous()))
            }
            Backend::Postgres(_) => commit::Committer::start(Store {
                backend: backend.clone(),
                committer: None,
                sealer: Default::default(),
                changes: Default::default(),
            }),
        };
        Store { backend, committer: Some(committer), sealer: Default::default(), changes: Default::default() }
    }

    /// Seal secrets with `sealer` from now on.
    pub fn with_sealer(mut self, sealer: crate::secrets::Sealer) -> Store {
        self.sealer = std::sync::Arc::new(sealer);
        self
    }

    /// `sqlite` or `postgres`.
    /// Whether the database answers: one trivial statement on the pool reads use, for
    /// readiness. (Not SQLite's one writer: a long write would make a loaded replica look
    /// away.)
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite { read, .. } => {
                sqlx::query("SELECT 1").execute(read).await?;
            }
            Backend::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// SQLite's direct readers (`direct.rs`); `None` on PostgreSQL.
    fn direct(&self) -> Option<&direct::Readers> {
        match &self.backend {
            Backend::Sqlite { direct, .. } => Some(direct),
            Backend::Postgres(_) => None,
        }
    }

    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await);
        with_write_pool!(self, pool => pool.close().await);
    }
}

/// Starting a write transaction. SQLite's default (deferred) BEGIN takes the write lock at
/// the first write: two transactions that both read first and then write deadlock, and
/// one fails at once with "database is locked" (its busy timeout does not apply). BEGIN
/// IMMEDIATE takes the lock up front, so concurrent writers wait their turn instead.
pub(crate) trait WriteTx {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl WriteTx for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl WriteTx for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// The states of a device's queue, as the queue reads list them. A macro, so that the
/// LATERAL statement's `concat!` can use it too. The partial index `operations_queued`
/// (migration 0010) has this list, word for word, as its `WHERE`: SQLite uses the index only
/// for a query whose `IN` list matches it. `tests/tests/store.rs` checks the plan.
macro_rules! queued_states {
    () => {
        "'PENDING', 'NOTNOW'"
    };
}
pub(crate) use queued_states;

/// The condition on a queued operation `o` that holds back a blocked device's operations,
/// all but policy bundles, until it complies (docs/policies.md). A primary-key probe, and
/// only for operations that are not bundles.
macro_rules! not_held_back {
    () => {
        "(o.kind = 'policy' OR NOT EXISTS (SELECT 1 FROM device_compliance b WHERE b.device = o.device AND b.blocked = 1))"
    };
}
pub(crate) use not_held_back;

/// A set of device keys as one parameter: `placeholder` bound to a JSON array of integers
/// (`[1,2,3]`), read back as rows. Why not `IN ($1, $2, …)`: SQLite's binding looks every
/// parameter up by name, so a statement's cost grows with the square of its parameters
/// (a 5,000-key list spent more time binding than working).
pub(crate) fn key_rows(postgres: bool, placeholder: &str) -> String {
    if postgres {
        format!("(SELECT CAST(k AS BIGINT) FROM jsonb_array_elements_text(CAST({placeholder} AS jsonb)) AS k)")
    } else {
        format!("(SELECT value FROM json_each({placeholder}))")
    }
}

/// `keys` as the JSON array [`key_rows`] reads.
pub(crate) fn key_list(keys: &[i64]) -> String {
    serde_json::to_string(keys).unwrap_or_else(|_| "[]".into())
}

/// Mark SQL built at run time as safe. Only for text made from constants and the
/// placeholder lists below, never from input: every value goes through `.bind`.
pub(crate) fn trusted(text: &str) -> sqlx::AssertSqlSafe<&str> {
    sqlx::AssertSqlSafe(text)
}

/// A value for a filter built at run time.
pub(crate) enum Param {
    Int(i64),
    Text(String),
}

/// `AND`-ed filters with numbered placeholders, for queries whose filters are optional.
/// Only the filters given appear in the SQL: `($n IS NULL OR col = $n)` would stop both
/// planners from using an index, turning a one-device query into a full-table scan.
pub(crate) struct Filters {
    next: usize,
    pub(crate) sql: String,
    pub(crate) params: Vec<Param>,
}

impl Filters {
    /// Filters whose placeholders start at `$first`.
    pub(crate) fn new(first: usize) -> Filters {
        Filters { next: first, sql: String::new(), params: Vec::new() }
    }

    /// Add ` AND <clause>`, where `?` in `clause` stands for this filter's placeholder.
    pub(crate) fn and(&mut self, clause: &str, value: Param) -> &mut Self {
        let p = self.placeholder(value);
        self.sql.push_str(" AND ");
        self.sql.push_str(&clause.replace('?', &p));
        self
    }

    /// Take the next placeholder for `value` and return it (`$n`), for callers that
    /// compose their own SQL around it.
    pub(crate) fn placeholder(&mut self, value: Param) -> String {
        let p = format!("${}", self.next);
        self.next += 1;
        self.params.push(value);
        p
    }
}

/// Bind a [`Filters`]' parameters, in order, to a query.
macro_rules! bind_filters {
    ($q:expr, $f:expr) => {{
        let mut q = $q;
        for p in &$f.params {
            q = match p {
                $crate::store::Param::Int(v) => q.bind(*v),
                $crate::store::Param::Text(v) => q.bind(v.as_str()),
            };
        }
        q
    }};
}
pub(crate) use bind_filters;

/// `($1, $2, …), ($k, …)` for `rows` rows of `cols` columns, numbering from `first`.
pub(crate) fn values_placeholders(rows: usize, cols: usize, first: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&n.to_string());
            n += 1;
        }
        s.push(')');
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders() {
        assert_eq!(super::values_placeholders(2, 2, 3), "($3, $4), ($5, $6)");
    }

    /// `--sqlite-synchronous` reaches every writer: sqlx's connections and the group
    /// committer's own (`direct.rs`), which would otherwise keep NORMAL.
    #[tokio::test]
    async fn synchronous_reaches_every_sqlite_connection() {
        for (setting, pragma) in [(super::Synchronous::Normal, 1), (super::Synchronous::Full, 2)] {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("d.db").display());
            let store = super::Store::connect_with(&url, setting).await.unwrap();
            let super::Backend::Sqlite { write, direct, .. } = &store.backend else { unreachable!() };
            let (n,): (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(write).await.unwrap();
            assert_eq!(n, pragma, "{setting:?} on sqlx's connection");
            let mut writer = super::direct::Writer::new(direct.path(), direct.synchronous());
            writer.write_group(&[], super::now_ms()).unwrap();
            assert_eq!(writer.synchronous_now().unwrap(), pragma, "{setting:?} on the committer's connection");
        }
    }
}
