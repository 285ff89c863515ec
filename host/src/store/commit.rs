//! Group commit: the hot writes of delivery (operations handed to a device; results a
//! device reported) from many devices share one transaction.
//!
//! Why: on SQLite every write goes through one connection (`mod.rs`), and every statement
//! is a round trip to sqlx's worker thread for it, so BEGIN and COMMIT per device were a
//! third of the writer's work; on PostgreSQL each COMMIT waits for its WAL flush. One task
//! takes whatever writes are waiting, runs them in order in one transaction, and answers
//! each caller: under load batches grow by themselves, and a lone write waits for nobody.
//! If a batch fails, its writes are retried one by one, so one bad write cannot fail the
//! others'; a batch PostgreSQL aborted as a deadlock's victim is first run again whole.
//!
//! On SQLite the committer is a thread of its own with its own connection, and its
//! statements are direct calls (`direct.rs` says why); on PostgreSQL it is a task using
//! the pool.

use super::direct::Writer;
use super::writes::{Write, Written};
use super::{Store, StoreError, now_ms};
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
                let mut batch = Batch::default();
                let mut last_end = std::time::Instant::now();
                while let Some(first) = rx.blocking_recv() {
                    batch.fill(first, &mut rx);
                    if batch.writes.len() < LINGER_BELOW && last_end.elapsed() < BUSY_WITHIN {
                        std::thread::sleep(LINGER);
                        if let Ok(job) = rx.try_recv() {
                            batch.fill(job, &mut rx);
                        }
                    }
                    match writer.write_group(&batch.writes, now_ms()) {
                        Err(e) if batch.writes.len() > 1 => {
                            retrying(batch.writes.len(), &e);
                            for (w, reply) in batch.drain() {
                                let r = writer.write_group(std::slice::from_ref(&w), now_ms());
                                let _ = reply.send(r.map(|mut v| v.remove(0)));
                            }
                        }
                        result => batch.answer(result),
                    }
                    last_end = std::time::Instant::now();
                }
            })
            .expect("spawning the SQLite commit thread");
        Committer(tx)
    }
}

/// The writes of one transaction, and where each one's outcome goes. Two vectors, so
/// that the writes are handed to `write_group` as they are, without a copy.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    replies: Vec<oneshot::Sender<Result<Written, StoreError>>>,
}

impl Batch {
    /// `first` and whatever else is waiting, up to [`MAX_GROUP`].
    fn fill(&mut self, first: Job, rx: &mut mpsc::UnboundedReceiver<Job>) {
        let mut next = Some(first);
        while let Some((w, reply)) = next {
            self.writes.push(w);
            self.replies.push(reply);
            next = if self.writes.len() < MAX_GROUP { rx.try_recv().ok() } else { None };
        }
    }

    /// Each write with its caller, emptying the batch.
    fn drain(&mut self) -> impl Iterator<Item = Job> + '_ {
        self.writes.drain(..).zip(self.replies.drain(..))
    }

    /// Answer every caller from `result`. A failed batch of several is retried one by one
    /// by the caller (one bad write must not fail the others), so an error here answers a
    /// batch of one.
    fn answer(&mut self, result: Result<Vec<Written>, StoreError>) {
        self.writes.clear();
        match result {
            Ok(written) => {
                for (reply, w) in self.replies.drain(..).zip(written) {
                    let _ = reply.send(Ok(w));
                }
            }
            Err(e) => {
                if let Some(reply) = self.replies.pop() {
                    let _ = reply.send(Err(e));
                }
                self.replies.clear();
            }
        }
    }
}

fn retrying(n: usize, e: &StoreError) {
    tracing::debug!(writes = n, "group commit failed ({e}); writing one by one");
}

/// Whether PostgreSQL aborted the transaction for its interplay with another (a deadlock,
/// a serialisation failure), not for anything in it: nothing of it was written, and it
/// may run again as it was. Two replicas' committers can deadlock: each batch locks its
/// writes' operations in the batch's order, and two batches may name the same
/// operations in opposite orders.
fn is_transient(e: &StoreError) -> bool {
    match e {
        StoreError::Db(sqlx::Error::Database(db)) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// How many times a transaction PostgreSQL aborted as a deadlock victim is run again.
const TRANSIENT_RETRIES: usize = 3;

/// `store.write_group(writes)`, run again when PostgreSQL aborted it as a deadlock's
/// victim ([`is_transient`]).
async fn write_group_again(store: &Store, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
    let mut result = store.write_group(writes).await;
    for _ in 0..TRANSIENT_RETRIES {
        match &result {
            Err(e) if is_transient(e) => {
                tracing::debug!(writes = writes.len(), "group commit aborted ({e}); writing it again");
                result = store.write_group(writes).await;
            }
            _ => break,
        }
    }
    result
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Batch::default();
    while let Some(first) = rx.recv().await {
        batch.fill(first, &mut rx);
        match write_group_again(&store, &batch.writes).await {
            Err(e) if batch.writes.len() > 1 => {
                retrying(batch.writes.len(), &e);
                for (w, reply) in batch.drain() {
                    let written = write_group_again(&store, std::slice::from_ref(&w)).await;
                    let _ = reply.send(written.map(|mut v| v.remove(0)));
                }
            }
            result => batch.answer(result),
        }
    }
}

impl Store {
    /// Write `w` in the next group commit.
    pub(crate) async fn grouped(&self, w: Write) -> Result<Written, StoreError> {
        let Some(committer) = &self.committer else {
            return write_group_again(self, std::slice::from_ref(&w)).await.map(|mut v| v.remove(0));
        };
        let (reply, answer) = oneshot::channel();
        committer.0.send((w, reply)).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Db(sqlx::Error::PoolClosed)
}
