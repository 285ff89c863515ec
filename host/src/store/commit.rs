//! Group commit: the hot writes of delivery (operations handed to a device; results a
//! device reported) from many devices share one transaction.
//!
//! Why: on SQLite every write goes through one connection (`mod.rs`), and every statement
//! is a round trip to sqlx's worker thread for it, so BEGIN and COMMIT per device were a
//! third of the writer's work; on PostgreSQL each COMMIT waits for its WAL flush. One task
//! takes whatever writes are waiting, runs them in order in one transaction, and answers
//! each caller: under load batches grow by themselves, and a lone write waits for nobody.
//! If a batch fails, its writes are retried one by one, so one bad write cannot fail the
//! others'.
//!
//! On SQLite the committer is a thread of its own with its own connection, and its
//! statements are direct calls (`direct.rs` says why); on PostgreSQL it is a task using
//! the pool.

use super::direct::Writer;
use super::{ResultOutcome, Store, StoreError, now_ms};
use crate::ops::Event;
use tokio::sync::{mpsc, oneshot};

/// Most writes in one transaction (a transaction should stay short: readers on
/// PostgreSQL and the next batch wait for it).
const MAX_GROUP: usize = 128;

/// On SQLite, while writes keep coming (the last batch ended less than [`BUSY_WITHIN`]
/// before the next write arrived) and fewer than [`LINGER_BELOW`] are waiting, the
/// committer waits [`LINGER`] for more before it begins: PostgreSQL's `commit_delay`, in
/// our committer. Without it, a poll benchmark's batches held ~3 writes, and each paid a
/// transaction's fixed work (the write lock, the WAL append and its index) and a wake-up
/// of the committer. With it, a write under load waits up to ~0.3 ms more, the committer
/// spends ~30% less CPU, and polling did 1.1–1.6× as much (docs/BENCHMARKS.md). A lone
/// write still waits for nobody. Not on PostgreSQL: its batches are larger already (each
/// takes network round trips), and lingering measured no gain there.
const LINGER: std::time::Duration = std::time::Duration::from_micros(300);
/// See [`LINGER`].
const LINGER_BELOW: usize = 16;
/// See [`LINGER`].
const BUSY_WITHIN: std::time::Duration = std::time::Duration::from_millis(2);

/// A write that may share a transaction with other devices' writes.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    /// Operations handed to a device: IN_PROGRESS, attempt counted.
    Deliver { device: i64, ids: Vec<i64>, actor: String },
    /// Events on a device's operations (results it reported, a plugin's refusal).
    Events { device: i64, events: Vec<(i64, Event, Option<String>)>, actor: String },
}

/// What a [`Write`] did.
#[derive(Debug)]
pub(crate) enum Written {
    Delivered,
    Events(Vec<ResultOutcome>),
}

type Job = (Write, oneshot::Sender<Result<Written, StoreError>>);

/// The sending side of the group committer, held by every clone of the store.
#[derive(Clone)]
pub(crate) struct Committer(mpsc::UnboundedSender<Job>);

impl Committer {
    /// Start the committer for `store` (which must not itself have one: the task writes
    /// directly). It ends when the last store holding the committer is dropped.
    pub(crate) fn start(store: Store) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Committer(tx)
    }

    /// Start SQLite's committer thread. It ends when the last store holding the committer
    /// is dropped.
    pub(crate) fn start_sqlite(mut writer: Writer) -> Committer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("drover-commit".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(MAX_GROUP);
                let mut last_end = std::time::Instant::now();
                while let Some(first) = rx.blocking_recv() {
                    fill(&mut batch, first, &mut rx);
                    if batch.len() < LINGER_BELOW && last_end.elapsed() < BUSY_WITHIN {
                        std::thread::sleep(LINGER);
                        if let Ok(job) = rx.try_recv() {
                            fill(&mut batch, job, &mut rx);
                        }
                    }
                    let writes: Vec<Write> = batch.iter().map(|(w, _)| w.clone()).collect();
                    match writer.write_group(&writes, now_ms()) {
                        Err(e) if batch.len() > 1 => {
                            retrying(batch.len(), &e);
                            for (w, reply) in batch.drain(..) {
                                let r = writer.write_group(std::slice::from_ref(&w), now_ms());
                                let _ = reply.send(r.map(|mut v| v.remove(0)));
                            }
                        }
                        result => answer(&mut batch, result),
                    }
                    last_end = std::time::Instant::now();
                }
            })
            .expect("spawning the SQLite commit thread");
        Committer(tx)
    }
}

/// `first` and whatever else is waiting, up to [`MAX_GROUP`].
fn fill(batch: &mut Vec<Job>, first: Job, rx: &mut mpsc::UnboundedReceiver<Job>) {
    batch.push(first);
    while batch.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Answer every caller of `batch` from `result`. A failed batch of several is retried
/// one by one by the caller (one bad write must not fail the others), so an error here
/// answers a batch of one.
fn answer(batch: &mut Vec<Job>, result: Result<Vec<Written>, StoreError>) {
    match result {
        Ok(written) => {
            for ((_, reply), w) in batch.drain(..).zip(written) {
                let _ = reply.send(Ok(w));
            }
        }
        Err(e) => {
            if let Some((_, reply)) = batch.pop() {
                let _ = reply.send(Err(e));
            }
            batch.clear();
        }
    }
}

fn retrying(n: usize, e: &StoreError) {
    tracing::debug!(writes = n, "group commit failed ({e}); writing one by one");
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.recv().await {
        fill(&mut batch, first, &mut rx);
        let writes: Vec<Write> = batch.iter().map(|(w, _)| w.clone()).collect();
        match store.write_group(&writes).await {
            Err(e) if batch.len() > 1 => {
                retrying(batch.len(), &e);
                for (w, reply) in batch.drain(..) {
                    let _ = reply.send(store.write_group(std::slice::from_ref(&w)).await.map(|mut v| v.remove(0)));
                }
            }
            result => answer(&mut batch, result),
        }
    }
}

impl Store {
    /// Write `w` in the next group commit.
    pub(crate) async fn grouped(&self, w: Write) -> Result<Written, StoreError> {
        let Some(committer) = &self.committer else {
            return self.write_group(std::slice::from_ref(&w)).await.map(|mut v| v.remove(0));
        };
        let (reply, answer) = oneshot::channel();
        committer.0.send((w.clone(), reply)).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Db(sqlx::Error::PoolClosed)
}
