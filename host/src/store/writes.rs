//! The delivery writes that may share one transaction (group commit), and the one way
//! they are written: what the committer (`commit.rs`) queues, and the statements and the
//! rule that the SQLite writer (`direct.rs`, rusqlite) and the PostgreSQL path
//! (`operations.rs`, sqlx) both carry out. The drivers differ (one is blocking on the
//! committer's thread, the other async), so each runs the statements itself; what the
//! statements say and what a transition is decided here, once.
//!
//! Statements are written with SQLite's numbered placeholders (`?1`), which name their
//! parameter by number wherever they appear; [`postgres`] turns them into PostgreSQL's
//! (`$1`). (SQLite also reads `$1`, but as a *name*, numbered by first appearance, which
//! rusqlite's positional binding would then get wrong.)

use super::ResultOutcome;
use super::telemetry::Point;
use crate::ops::{self, Attempts, Event, State};

/// A write that may share a transaction with other devices' writes.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    /// Operations handed to a device: IN_PROGRESS, attempt counted.
    Deliver { device: i64, ids: Vec<i64>, actor: String },
    /// Events on a device's operations (results it reported, a plugin's refusal).
    Events { device: i64, events: Vec<(i64, Event, Option<String>)>, actor: String },
    /// Telemetry a device reported: its points, the newest value of each name, and the
    /// rollups the numeric points fall in (docs/analytics.md), all in one transaction.
    Telemetry { device: i64, points: Vec<Point>, rollups: bool },
}

/// What a [`Write`] did.
#[derive(Debug)]
pub(crate) enum Written {
    /// Whether the delivery claimed every operation it named (`false`: another delivery
    /// had claimed some first, and nothing was moved).
    Delivered(bool),
    Events(Vec<ResultOutcome>),
    Recorded,
}

/// `sql` with PostgreSQL's placeholders. Our statements have no `?` but placeholders.
pub(super) fn postgres(sql: &str) -> String {
    sql.replace('?', "$")
}

/// [`EVENT_READ`], [`EVENT_MOVE`] and [`EVENT_TRANSITION`] for PostgreSQL, converted once
/// rather than per event (they run for every result a device reports).
pub(super) static PG_EVENT: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
    [postgres(EVENT_READ), postgres(EVENT_MOVE), postgres(EVENT_TRANSITION), postgres(EVENT_PROGRESS)]
});

/// [`Write::Deliver`]: claim, record the transitions, move the operations. Parameters:
/// `?1` actor, `?2` now, `?3` device, `?4`… the `n` operation ids.
///
/// The claim reads the named operations still queued for this device (locked on
/// PostgreSQL: `FOR UPDATE` waits for a concurrent claim of the same rows to commit, then
/// sees that they moved). The caller moves them only when every one is still queued, so
/// two deliveries racing for an operation (a poll beside a push, two replicas) never both
/// send it, and a delivery that lost moves nothing (docs/delivery.md).
pub(super) fn claim_and_deliver_sql(n: usize, postgres: bool) -> [String; 3] {
    let list = (4..4 + n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    let queued = format!("device = ?3 AND state IN ('PENDING', 'NOTNOW') AND id IN ({list})");
    let lock = if postgres { " FOR UPDATE" } else { "" };
    [
        // `?1 = ?1 AND ?2 = ?2`: every statement takes the same parameters.
        format!("SELECT id FROM operations WHERE {queued} AND ?1 = ?1 AND ?2 = ?2{lock}"),
        format!(
            "INSERT INTO transitions (operation, from_state, to_state, actor, at)
             SELECT id, state, 'IN_PROGRESS', ?1, ?2 FROM operations WHERE {queued}"
        ),
        // `?1 = ?1`: both statements take the same parameters.
        format!(
            "UPDATE operations SET state = 'IN_PROGRESS', attempts = attempts + 1, updated_at = ?2
             WHERE {queued} AND ?1 = ?1"
        ),
    ]
}

/// [`Write::Deliver`] on PostgreSQL as one statement, one round trip instead of the three
/// of [`claim_and_deliver_sql`] (the committer waits for each): lock the named operations
/// still queued for the device, move them only if every one still was, and record each
/// move from the state it was in. A concurrent claim of the same rows is waited for, and
/// the rows are then checked again as they are (`FOR UPDATE`), so a lost race counts fewer
/// and moves nothing. Rows are locked in id order, so two claims of overlapping lists
/// cannot deadlock each other (two batches of several claims still can: the committer
/// runs a deadlock's victim again). Answers one row: how many moved (`n`, or 0). Parameters as
/// [`claim_and_deliver_sql`]'s, in PostgreSQL's placeholders.
pub(super) fn claim_and_deliver_pg(n: usize) -> String {
    let list = (4..4 + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
    format!(
        "WITH locked AS (SELECT id, state FROM operations
                         WHERE device = $3 AND state IN ('PENDING', 'NOTNOW') AND id IN ({list})
                         ORDER BY id FOR UPDATE),
              claimed AS (SELECT COUNT(*) AS n FROM locked),
              moved AS (UPDATE operations o SET state = 'IN_PROGRESS', attempts = o.attempts + 1, updated_at = $2
                        FROM locked, claimed WHERE o.id = locked.id AND claimed.n = {n}
                        RETURNING o.id, locked.state AS from_state),
              recorded AS (INSERT INTO transitions (operation, from_state, to_state, actor, at)
                           SELECT id, from_state, 'IN_PROGRESS', $1, $2 FROM moved RETURNING operation)
         SELECT COUNT(*) FROM recorded"
    )
}

/// [`EVENT_MOVE`] and, if it held, [`EVENT_TRANSITION`] on PostgreSQL as one statement
/// (one round trip instead of two); its row count is the move's. Parameters: `$1` to, `$2`
/// response (kept when none), `$3` now, `$4` operation, `$5` from, `$6` actor.
pub(super) const PG_EVENT_MOVE_AND_RECORD: &str =
    "WITH moved AS (UPDATE operations SET state = $1, response = COALESCE($2, response), updated_at = $3
                    WHERE id = $4 AND state = $5 RETURNING id)
     INSERT INTO transitions (operation, from_state, to_state, actor, at, response)
     SELECT id, $5, $1, $6, $3, $2 FROM moved";

/// Statements that move every operation `filter` selects (a `WHERE` over `operations`) to
/// `to`, each move with its transition: actor `$1`, time `$2`. Every statement takes the
/// same parameters; run them in order in one transaction. The last one's row count is how
/// many moved.
///
/// On SQLite: the transitions, then the update. The writer is alone, so both statements
/// see the same rows. On PostgreSQL each statement of a READ COMMITTED transaction sees
/// what committed before it began, so the two could see different rows: a transition
/// recorded for an operation that another transaction moved in between (a report racing
/// a cancel), or an operation moved with no transition (a newer command, committed in
/// between, superseded by an older one). There it is one statement: lock the rows
/// (`FOR UPDATE` waits for a concurrent change and checks the filter again on the row as
/// it then is), move exactly those, and record each with the state it had.
pub(super) fn move_where(filter: &str, to: &str, postgres: bool) -> Vec<String> {
    if postgres {
        vec![format!(
            "WITH locked AS (SELECT id, state FROM operations WHERE {filter} FOR UPDATE),
                  moved AS (UPDATE operations o SET state = '{to}', updated_at = $2 FROM locked
                            WHERE o.id = locked.id RETURNING o.id, locked.state AS from_state)
             INSERT INTO transitions (operation, from_state, to_state, actor, at)
             SELECT id, from_state, '{to}', $1, $2 FROM moved"
        )]
    } else {
        vec![
            format!(
                "INSERT INTO transitions (operation, from_state, to_state, actor, at)
                 SELECT id, state, '{to}', $1, $2 FROM operations WHERE {filter}"
            ),
            // `$1 = $1`: both statements take the same parameters.
            format!("UPDATE operations SET state = '{to}', updated_at = $2 WHERE {filter} AND $1 = $1"),
        ]
    }
}

/// [`Write::Events`], per event: the operation's state, attempts made and allowed.
/// Parameters: `?1` operation, `?2` device.
pub(super) const EVENT_READ: &str =
    "SELECT state, attempts, max_attempts FROM operations WHERE id = ?1 AND device = ?2";

/// [`Write::Events`], per event that moves an operation: the move, only from the state
/// read (the row count says whether it held). Parameters: `?1` to, `?2` response (kept
/// when none), `?3` now, `?4` operation, `?5` from.
pub(super) const EVENT_MOVE: &str =
    "UPDATE operations SET state = ?1, response = COALESCE(?2, response), updated_at = ?3
     WHERE id = ?4 AND state = ?5";

/// [`Write::Events`], after a move: its transition. Parameters: `?1` operation, `?2`
/// from, `?3` to, `?4` actor, `?5` now, `?6` response.
pub(super) const EVENT_TRANSITION: &str =
    "INSERT INTO transitions (operation, from_state, to_state, actor, at, response)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// [`Write::Events`], for a report that keeps an operation IN_PROGRESS: no transition
/// (nothing moved), but the device answered, so the answer timeout starts again
/// (`updated_at`, [`super::Store::requeue_unanswered`]), and a response that says more (a
/// firmware update's state and percentage) is kept as the newest. Parameters: `?1`
/// response (kept when none), `?2` now, `?3` operation.
pub(super) const EVENT_PROGRESS: &str = "UPDATE operations SET response = COALESCE(?1, response), updated_at = ?2
     WHERE id = ?3 AND state = 'IN_PROGRESS'";

/// Whether an unchanged outcome is a progress report ([`EVENT_PROGRESS`]).
pub(super) fn is_progress(event: Event, outcome: &ResultOutcome) -> bool {
    event == Event::Result(ops::Reported::InProgress)
        && matches!(outcome, ResultOutcome::Unchanged { state: State::InProgress, .. })
}

/// What `event` does to operation `id`, given what [`EVENT_READ`] found (`None`: the
/// device has no such operation): an outcome already, or a move to make with
/// [`EVENT_MOVE`] and, if it held, [`EVENT_TRANSITION`] (then [`moved`]).
pub(super) fn step(id: i64, event: Event, row: Option<(String, i64, i64)>) -> Result<(State, State), ResultOutcome> {
    let Some((state, made, max)) = row else { return Err(ResultOutcome::Unknown { operation: id }) };
    let from = State::parse(&state).unwrap_or(State::Error);
    match ops::next(from, event, Attempts { made, max }) {
        None => Err(ResultOutcome::Unchanged { operation: id, state: from }),
        Some(to) => Ok((from, to)),
    }
}

/// The outcome of a move [`EVENT_MOVE`] made to `rows` rows. None: the operation left
/// `from` between the read and the move (on PostgreSQL, another transaction committed
/// in between), so nothing happened and no transition is recorded.
pub(super) fn moved(id: i64, from: State, to: State, rows: u64) -> ResultOutcome {
    if rows == 1 {
        ResultOutcome::Applied { operation: id, from, to }
    } else {
        ResultOutcome::Unchanged { operation: id, state: from }
    }
}

/// [`Write::Telemetry`], per point. Parameters: `?1` device, `?2` name, `?3` at, `?4`
/// value (JSON text), `?5` number.
pub(super) const TELEMETRY_POINT: &str =
    "INSERT INTO telemetry (device, name, at, value, number) VALUES (?1, ?2, ?3, ?4, ?5)";

/// [`Write::Telemetry`], per name: the newest value moves forward, never back (a late
/// point with an older time does not replace a newer one). Parameters: `?1` device, `?2`
/// name, `?3` at, `?4` value.
pub(super) const TELEMETRY_LATEST: &str =
    "INSERT INTO telemetry_latest (device, name, at, value) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (device, name) DO UPDATE SET at = excluded.at, value = excluded.value
     WHERE excluded.at >= telemetry_latest.at";

/// [`Write::Telemetry`], per rollup: merged into the bucket's row. Parameters: `?1`
/// device, `?2` name, `?3` level, `?4` bucket, `?5` count, `?6` sum, `?7` min, `?8` max,
/// `?9` last, `?10` last_at. A point arriving late (an older `at`) counts in its bucket
/// but does not become its `last`. SQLite's two-argument `min`/`max` are PostgreSQL's
/// `LEAST`/`GREATEST`. `values`: one row's placeholders, or several rows' on PostgreSQL
/// (numbered as there: `$1` …), each with one bucket no other row of them has.
pub(super) fn rollup_sql(values: &str, postgres: bool) -> String {
    let (least, greatest) = if postgres { ("LEAST", "GREATEST") } else { ("min", "max") };
    format!(
        "INSERT INTO telemetry_rollups (device, name, level, bucket, count, sum, min, max, last, last_at)
         VALUES {values}
         ON CONFLICT (device, name, level, bucket) DO UPDATE SET
           count = telemetry_rollups.count + excluded.count,
           sum = telemetry_rollups.sum + excluded.sum,
           min = {least}(telemetry_rollups.min, excluded.min),
           max = {greatest}(telemetry_rollups.max, excluded.max),
           last = CASE WHEN excluded.last_at >= telemetry_rollups.last_at THEN excluded.last ELSE telemetry_rollups.last END,
           last_at = {greatest}(telemetry_rollups.last_at, excluded.last_at)"
    )
}

/// One row of [`rollup_sql`]'s values on SQLite.
pub(super) const ROLLUP_ROW: &str = "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// The rollup levels: name and bucket width in ms.
pub const LEVELS: [(&str, i64); 2] = [("minute", 60_000), ("hour", 3_600_000)];

/// One bucket's aggregate of a batch of points, merged by [`rollup_sql`].
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Rollup<'a> {
    pub name: &'a str,
    pub level: &'static str,
    pub bucket: i64,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    pub last_at: i64,
}

/// The rollups of `points` (numbers, and booleans as 0/1; text is not aggregated), one
/// per name, level and bucket, in a stable order: two writes touch rows in the same
/// order, so concurrent transactions on PostgreSQL cannot deadlock on them.
pub(super) fn rollups(points: &[Point]) -> Vec<Rollup<'_>> {
    let mut out: std::collections::BTreeMap<(&str, &str, i64), Rollup<'_>> = std::collections::BTreeMap::new();
    for p in points {
        let Some(x) = p.number() else { continue };
        for (level, width) in LEVELS {
            let bucket = p.at.div_euclid(width) * width;
            out.entry((p.name.as_str(), level, bucket))
                .and_modify(|r| {
                    r.count += 1;
                    r.sum += x;
                    r.min = r.min.min(x);
                    r.max = r.max.max(x);
                    if p.at >= r.last_at {
                        r.last = x;
                        r.last_at = p.at;
                    }
                })
                .or_insert(Rollup {
                    name: &p.name,
                    level,
                    bucket,
                    count: 1,
                    sum: x,
                    min: x,
                    max: x,
                    last: x,
                    last_at: p.at,
                });
        }
    }
    out.into_values().collect()
}

/// The newest point of each name in `points` (the last reported of equal times), by name.
pub(super) fn newest(points: &[Point]) -> Vec<&Point> {
    let mut newest: std::collections::BTreeMap<&str, &Point> = std::collections::BTreeMap::new();
    for p in points {
        let l = newest.entry(p.name.as_str()).or_insert(p);
        if l.at <= p.at {
            *l = p;
        }
    }
    newest.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement binds by number on both backends: SQLite must see each `?N` as
    /// parameter N, in order, with none missing.
    #[test]
    fn statements_number_their_parameters() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE operations (id, device, state, attempts, max_attempts, response, updated_at);
             CREATE TABLE transitions (operation, from_state, to_state, actor, at, response);
             CREATE TABLE telemetry (device, name, at, value, number);
             CREATE TABLE telemetry_latest (device, name, at, value, PRIMARY KEY (device, name));
             CREATE TABLE telemetry_rollups (device, name, level, bucket, count, sum, min, max, last, last_at,
                 PRIMARY KEY (device, name, level, bucket));",
        )
        .unwrap();
        let [claim, deliver_t, deliver_u] = claim_and_deliver_sql(3, false);
        let rollup = rollup_sql(ROLLUP_ROW, false);
        for sql in [
            claim.as_str(),
            deliver_t.as_str(),
            deliver_u.as_str(),
            EVENT_READ,
            EVENT_MOVE,
            EVENT_TRANSITION,
            EVENT_PROGRESS,
            TELEMETRY_POINT,
            TELEMETRY_LATEST,
            &rollup,
        ] {
            let stmt = db.prepare(sql).unwrap();
            for i in 1..=stmt.parameter_count() {
                assert_eq!(stmt.parameter_name(i), Some(format!("?{i}").as_str()), "{sql}");
            }
            assert!(!postgres(sql).contains('?'), "{sql}");
        }
    }

    /// A batch's rollups are what the points say, bucket by bucket; a late point counts
    /// but does not become `last`; text is not aggregated.
    #[test]
    fn rollups_aggregate_a_batch_by_bucket() {
        let p = |name: &str, at: i64, v: serde_json::Value| Point { name: name.into(), at, value: v };
        let points = [
            p("t", 60_000, 2.0.into()),
            p("t", 61_000, 4.into()),
            p("t", 60_500, 9.into()),
            p("t", 120_000, true.into()),
            p("s", 60_000, "text".into()),
        ];
        let r = rollups(&points);
        let minute: Vec<_> = r.iter().filter(|r| r.level == "minute").collect();
        assert_eq!(minute.len(), 2, "{r:?}");
        assert_eq!(
            *minute[0],
            Rollup {
                name: "t",
                level: "minute",
                bucket: 60_000,
                count: 3,
                sum: 15.0,
                min: 2.0,
                max: 9.0,
                last: 4.0,
                last_at: 61_000
            }
        );
        assert_eq!((minute[1].bucket, minute[1].count, minute[1].last), (120_000, 1, 1.0));
        let hour: Vec<_> = r.iter().filter(|r| r.level == "hour").collect();
        assert_eq!((hour.len(), hour[0].bucket, hour[0].count, hour[0].sum), (1, 0, 4, 16.0));
        assert_eq!(
            newest(&points).iter().map(|p| (p.name.as_str(), p.at)).collect::<Vec<_>>(),
            [("s", 60_000), ("t", 120_000)]
        );
    }

    #[test]
    fn a_move_that_did_not_hold_is_no_transition() {
        let step = step(7, Event::Result(ops::Reported::Completed), Some(("IN_PROGRESS".into(), 1, 1)));
        assert_eq!(step, Ok((State::InProgress, State::Completed)));
        assert_eq!(
            moved(7, State::InProgress, State::Completed, 1),
            ResultOutcome::Applied { operation: 7, from: State::InProgress, to: State::Completed }
        );
        assert_eq!(
            moved(7, State::InProgress, State::Completed, 0),
            ResultOutcome::Unchanged { operation: 7, state: State::InProgress }
        );
        assert_eq!(super::step(8, Event::Fail, None), Err(ResultOutcome::Unknown { operation: 8 }));
    }

    #[test]
    fn only_an_in_progress_report_on_an_in_progress_operation_is_progress() {
        let progress = Event::Result(ops::Reported::InProgress);
        let unchanged = step(7, progress, Some(("IN_PROGRESS".into(), 1, 1))).unwrap_err();
        assert!(is_progress(progress, &unchanged));
        // A report on a finished operation keeps nothing.
        let finished = step(7, progress, Some(("COMPLETED".into(), 1, 1))).unwrap_err();
        assert!(!is_progress(progress, &finished));
        let completed = Event::Result(ops::Reported::Completed);
        assert!(!is_progress(completed, &unchanged));
    }
}
