//! Direct SQLite calls for the delivery hot path: the reads every device message makes
//! and the group commit of delivery writes.
//!
//! Why: sqlx runs each SQLite connection on a thread of its own, and every statement is
//! a round trip to that thread and back (two thread wake-ups, and each row of an answer
//! crosses a channel). A poll profile put ~40% of the server's CPU in the kernel switching
//! threads and ~2% in SQLite itself (docs/BENCHMARKS.md). For the few statements every
//! poll and every push runs, that hand-off is most of the cost, so on SQLite they run here
//! instead, through rusqlite on the calling thread:
//!
//! * **Reads** use connections of our own to the same file ([`Readers`]), opened
//!   `query_only`, with their prepared statements kept. A read of one device's row or
//!   queue is a few microseconds (an index lookup in a database that is in the page
//!   cache), so it runs inline on the async worker rather than paying a hand-off longer
//!   than itself. WAL lets these readers run beside the writer, as the sqlx read pool does.
//! * **Group-commit writes** run on a thread of their own with a connection of their own
//!   ([`Writer`]): the committer takes every waiting delivery write and runs them as one
//!   transaction, each statement a direct call. A first version borrowed the sqlx write
//!   pool's connection per batch (`lock_handle`); waiting for the pool and for sqlx's
//!   thread to let go of the handle took three quarters of the committer's time, so it was
//!   the bottleneck of every poll. Admin writes still go through the sqlx write pool, so
//!   there are two writers: SQLite makes one wait (busy timeout) while the other commits,
//!   and both keep their transactions short.
//!
//! Everything else (admin API, fan-out, migrations) stays on sqlx, and PostgreSQL is not
//! affected: there the cost is network round trips, which this cannot remove. The reads
//! here are the SQLite twins of statements in `operations.rs`, `devices.rs` and
//! `tokens.rs`; the same test suite runs against both backends, so the twins are held
//! to one behaviour. The writes share their statements and rule with PostgreSQL's path
//! (`writes.rs`).

use super::writes::{self, Write, Written};
use super::{DeviceKey, DeviceRow, QueuedOperation, StoreError, Synchronous};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Idle reader connections kept open; more are opened when more threads read at once
/// (at most one per thread that reads: reads never await while holding one).
const MAX_IDLE_READERS: usize = 16;

/// Prepared statements kept per connection (the hot path uses fewer than ten texts; the
/// IN lists of deliveries vary with the number of operations).
const STATEMENT_CACHE: usize = 64;

/// What both kinds of direct connection share.
fn tune(c: &Connection) -> rusqlite::Result<()> {
    c.busy_timeout(Duration::from_secs(10))?;
    // Plans must not depend on bound values. Without this, SQLite marks a statement whose
    // `LIMIT ?` it could specialise as expired on every new binding and re-prepares it at
    // the next step: that re-prepare was 16% of a poll's CPU (the queue read).
    c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // No memory map. In WAL mode, a read transaction that finds the database changed since
    // its last one unmaps the whole file (`sqlite3PagerSharedLock`), and the next page it
    // reads maps it again and faults it in: under a steady stream of commits that is every
    // read. With a 1 GiB map, munmap/mmap and their page faults were ~8% of a poll's CPU;
    // pread of the few pages a read touches costs less (docs/BENCHMARKS.md).
    c.pragma_update(None, "mmap_size", 0)?;
    Ok(())
}

/// Reader connections to one SQLite database file.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// What the database's writers promise; the group committer's connection is opened
    /// from here.
    synchronous: Synchronous,
}

impl Readers {
    pub(super) fn new(path: PathBuf, synchronous: Synchronous) -> Readers {
        Readers { path, idle: Mutex::new(Vec::new()), synchronous }
    }

    pub(super) fn path(&self) -> PathBuf {
        self.path.clone()
    }

    pub(super) fn synchronous(&self) -> Synchronous {
        self.synchronous
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // Opened read-write but `query_only`: a read-only open could not create the WAL
        // index if the file's last other connection had just removed it.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        tune(&conn)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }

    /// Run `f` on an idle reader (opening one if none is idle).
    pub(super) fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        let result = f(&conn);
        // A connection left inside a transaction (a failed ROLLBACK) would pin an old
        // snapshot for whoever reads next: close it instead of keeping it.
        if !conn.is_autocommit() {
            return Ok(result?);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        Ok(result?)
    }
}

/// A `DeviceRow`'s columns in `device_row`'s order. A macro so that every statement stays
/// one literal for `prepare_cached`.
macro_rules! device_columns {
    () => {
        "id, device_type, device_id, name, owner, ownership, status, metadata, push_token, session, enrolled_at, last_seen_at, tenant"
    };
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        id: r.get(0)?,
        device_type: r.get(1)?,
        device_id: r.get(2)?,
        name: r.get(3)?,
        owner: r.get(4)?,
        ownership: r.get(5)?,
        status: r.get(6)?,
        metadata: r.get(7)?,
        push_token: r.get(8)?,
        session: r.get(9)?,
        enrolled_at: r.get(10)?,
        last_seen_at: r.get(11)?,
        tenant: r.get(12)?,
        metadata_pairs: Default::default(),
    })
}

fn queued_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedOperation> {
    Ok(QueuedOperation {
        id: r.get(0)?,
        code: r.get(1)?,
        kind: r.get(2)?,
        payload: r.get(3)?,
        expires_at: r.get(4)?,
        state: r.get(5)?,
    })
}

/// `Store::device_for_credential`.
pub(super) fn device_for_credential(c: &Connection, token_hash: &str, now: i64) -> rusqlite::Result<Option<DeviceRow>> {
    // `token_hash` is the credentials' key: at most one device.
    const SQL: &str = concat!(
        "SELECT ",
        device_columns!(),
        " FROM devices WHERE status <> 'removed' AND id = (SELECT device FROM device_credentials
          WHERE token_hash = ?1 AND revoked_at IS NULL AND expires_at > ?2)"
    );
    c.prepare_cached(SQL)?.query_row(params![token_hash, now], device_row).optional()
}

/// `Store::device_and_queue`: both reads in one read transaction.
pub(super) fn device_and_queue(
    c: &Connection,
    which: DeviceKey<'_>,
    now: i64,
    limit: i64,
) -> rusqlite::Result<Option<(DeviceRow, Vec<QueuedOperation>)>> {
    // Outside a transaction every statement is a read transaction of its own, and each
    // one takes the WAL's read lock and, when anything was committed since (under load,
    // always), checks the WAL index and drops this connection's page cache. Prepared
    // and kept like the reads: `execute_batch` would parse BEGIN again every time.
    c.prepare_cached("BEGIN")?.execute([])?;
    let read = (|| -> rusqlite::Result<Option<(DeviceRow, Vec<QueuedOperation>)>> {
        let device = match which {
            DeviceKey::Credential(token_hash) => device_for_credential(c, token_hash, now)?,
            DeviceKey::Key(id) => device_by_key(c, id)?,
            DeviceKey::Name(device_type, device_id) => device(c, device_type, device_id)?,
        };
        let Some(device) = device else { return Ok(None) };
        let queue = operations_in(c, device.id, limit, super::queued_states!())?;
        Ok(Some((device, queue)))
    })();
    let end = c.prepare_cached("COMMIT").and_then(|mut s| s.execute([]));
    let read = read?;
    end?;
    Ok(read)
}

/// `Store::device_by_key`.
pub(super) fn device_by_key(c: &Connection, id: i64) -> rusqlite::Result<Option<DeviceRow>> {
    const SQL: &str = concat!("SELECT ", device_columns!(), " FROM devices WHERE id = ?1");
    c.prepare_cached(SQL)?.query_row(params![id], device_row).optional()
}

/// `Store::device`.
pub(super) fn device(c: &Connection, device_type: &str, device_id: &str) -> rusqlite::Result<Option<DeviceRow>> {
    const SQL: &str = concat!("SELECT ", device_columns!(), " FROM devices WHERE device_type = ?1 AND device_id = ?2");
    c.prepare_cached(SQL)?.query_row(params![device_type, device_id], device_row).optional()
}

/// A device's operations in `states` (a constant list), oldest first, with payloads.
pub(super) fn operations_in(
    c: &Connection,
    device: i64,
    limit: i64,
    states: &'static str,
) -> rusqlite::Result<Vec<QueuedOperation>> {
    let mut stmt = c.prepare_cached(&queue_sql(states))?;
    let rows = stmt.query_map(params![device, limit], queued_row)?;
    rows.collect()
}

/// The statement of [`operations_in`]. For the queue, `states` is
/// [`queued_states!`](super::queued_states), the `WHERE` of its partial index.
pub(super) fn queue_sql(states: &str) -> String {
    format!(
        "SELECT o.id, o.code, o.kind, COALESCE(o.payload, a.payload) AS payload, o.expires_at, o.state FROM operations o
         JOIN activities a ON a.id = o.activity
         WHERE o.device = ?1 AND o.state IN ({states}) AND {} ORDER BY o.id LIMIT ?2",
        super::not_held_back!()
    )
}

/// SQLite's plan for `sql` (`EXPLAIN QUERY PLAN`), one step per line; `sql` takes the two
/// parameters of [`queue_sql`] (a device key and a limit).
pub(super) fn plan(c: &Connection, sql: &str) -> rusqlite::Result<String> {
    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let steps = stmt.query_map(params![0, 10], |r| r.get::<_, String>(3))?;
    Ok(steps.collect::<rusqlite::Result<Vec<_>>>()?.join("\n"))
}

/// The group committer's own connection to the database file, opened on first use and
/// again after a failure. It lives on the committer's thread (`commit.rs`).
pub(super) struct Writer {
    path: PathBuf,
    conn: Option<Connection>,
    synchronous: Synchronous,
}

impl Writer {
    pub(super) fn new(path: PathBuf, synchronous: Synchronous) -> Writer {
        Writer { path, conn: None, synchronous }
    }

    /// The open connection's `synchronous` setting (for tests).
    #[cfg(test)]
    pub(super) fn synchronous_now(&self) -> Option<i64> {
        self.conn.as_ref()?.pragma_query_value(None, "synchronous", |r| r.get(0)).ok()
    }

    /// Run `writes` in one transaction, returning what each did.
    pub(super) fn write_group(&mut self, writes: &[Write], now: i64) -> Result<Vec<Written>, StoreError> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                // The sqlx write pool's connection (admin writes) is the other writer; its
                // transactions are short, so waiting for it is the rare case.
                tune(&c)?;
                // As the sqlx connections (`Store::connect_with`): WAL is the file's, these
                // are per connection. NORMAL (the default): a commit is durable at the next
                // checkpoint, not fsynced each time (an fsync per batch took ~1 ms here);
                // FULL fsyncs every batch (`--sqlite-synchronous`).
                c.pragma_update(None, "synchronous", self.synchronous.pragma())?;
                c.pragma_update(None, "foreign_keys", true)?;
                self.conn.insert(c)
            }
        };
        let result = write_group_on(conn, writes, now);
        if result.is_err() {
            // The transaction rolled back; the connection itself may be at fault (an I/O
            // error, a replaced file), so the next batch opens a fresh one. Failures are rare.
            self.conn = None;
        }
        Ok(result?)
    }
}

/// [`writes::rollup_sql`] for SQLite, made once.
static ROLLUP_SQLITE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| writes::rollup_sql(writes::ROLLUP_ROW, false));

fn write_group_on(db: &mut Connection, writes: &[Write], now: i64) -> rusqlite::Result<Vec<Written>> {
    // IMMEDIATE for the reason `WriteTx` gives; a failed batch rolls back when `tx` drops.
    // The statements and the rule are `writes.rs`'s, shared with PostgreSQL's path.
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut written = Vec::with_capacity(writes.len());
    for w in writes {
        match w {
            Write::Deliver { device, ids, actor } => {
                let values = || {
                    [
                        rusqlite::types::Value::Text(actor.clone()),
                        rusqlite::types::Value::Integer(now),
                        rusqlite::types::Value::Integer(*device),
                    ]
                    .into_iter()
                    .chain(ids.iter().map(|&id| rusqlite::types::Value::Integer(id)))
                };
                let [claim, transitions, update] = writes::claim_and_deliver_sql(ids.len(), false);
                // SQLite has one writer: what this transaction reads stays so until it commits.
                let claimed = tx
                    .prepare_cached(&claim)?
                    .query_map(params_from_iter(values()), |_| Ok(()))?
                    // An error row is an error, not a claimed operation.
                    .collect::<rusqlite::Result<Vec<()>>>()?
                    .len();
                if claimed != ids.len() {
                    written.push(Written::Delivered(false));
                    continue;
                }
                for sql in [transitions, update] {
                    tx.prepare_cached(&sql)?.execute(params_from_iter(values()))?;
                }
                written.push(Written::Delivered(true));
            }
            Write::Events { device, events, actor } => {
                let mut out = Vec::with_capacity(events.len());
                for (id, event, response) in events {
                    let row = tx
                        .prepare_cached(writes::EVENT_READ)?
                        .query_row(params![id, device], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()?;
                    let (from, to) = match writes::step(*id, *event, row) {
                        Ok(step) => step,
                        Err(outcome) => {
                            if writes::is_progress(*event, &outcome) {
                                tx.prepare_cached(writes::EVENT_PROGRESS)?.execute(params![response, now, id])?;
                            }
                            out.push(outcome);
                            continue;
                        }
                    };
                    let rows = tx.prepare_cached(writes::EVENT_MOVE)?.execute(params![
                        to.as_str(),
                        response,
                        now,
                        id,
                        from.as_str()
                    ])?;
                    if rows == 1 {
                        tx.prepare_cached(writes::EVENT_TRANSITION)?.execute(params![
                            id,
                            from.as_str(),
                            to.as_str(),
                            actor,
                            now,
                            response
                        ])?;
                    }
                    out.push(writes::moved(*id, from, to, rows as u64));
                }
                written.push(Written::Events(out));
            }
            Write::Telemetry { device, points, rollups } => {
                let mut insert = tx.prepare_cached(writes::TELEMETRY_POINT)?;
                for p in points {
                    insert.execute(params![device, p.name, p.at, p.value.to_string(), p.number()])?;
                }
                let mut latest = tx.prepare_cached(writes::TELEMETRY_LATEST)?;
                for p in writes::newest(points) {
                    latest.execute(params![device, p.name, p.at, p.value.to_string()])?;
                }
                if *rollups {
                    let mut rollup = tx.prepare_cached(&ROLLUP_SQLITE)?;
                    for r in writes::rollups(points) {
                        rollup.execute(params![
                            device, r.name, r.level, r.bucket, r.count, r.sum, r.min, r.max, r.last, r.last_at
                        ])?;
                    }
                }
                written.push(Written::Recorded);
            }
        }
    }
    tx.commit()?;
    Ok(written)
}
