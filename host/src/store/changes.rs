//! Telling every replica at once that something it follows changed (issue 30).
//!
//! Replicas follow the plugin catalog and plugin settings by reading them back every
//! second (`catalog.rs`, `plugin_settings.rs`). On PostgreSQL the writer also sends a
//! `NOTIFY` on channel `drover_changes` naming what changed, and every replica `LISTEN`s
//! on a connection of its own and wakes the follower at once: an upload on one replica is
//! served by the others within milliseconds, not within the second. The periodic read
//! stays as the fallback (a notification is lost while a listener reconnects, and the
//! listener wakes every follower when it does). SQLite serves one process: nothing to tell.

use super::{Backend, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The PostgreSQL channel replicas listen on.
pub const CHANNEL: &str = "drover_changes";

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The plugin catalog's log: an upload, a rollback, grants, a suspension.
    Catalog,
    /// A plugin's settings.
    Settings,
}

impl Change {
    const ALL: [Change; 2] = [Change::Catalog, Change::Settings];

    fn name(self) -> &'static str {
        match self {
            Change::Catalog => "catalog",
            Change::Settings => "settings",
        }
    }

    fn parse(name: &str) -> Option<Change> {
        Change::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// One wake-up per kind of change, for the one loop that follows it in this process.
#[derive(Default)]
pub struct Changes {
    catalog: Notify,
    settings: Notify,
}

impl Changes {
    fn of(&self, change: Change) -> &Notify {
        match change {
            Change::Catalog => &self.catalog,
            Change::Settings => &self.settings,
        }
    }

    /// Wake the follower of `change`; if it is busy, its next wait returns at once.
    pub fn wake(&self, change: Change) {
        self.of(change).notify_one();
    }

    /// Until `change` is announced (by any replica, this one included).
    pub async fn wait(&self, change: Change) {
        self.of(change).notified().await
    }
}

impl Store {
    /// The wake-ups of this process's followers.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// Tell every replica that `change` was written (after it was committed). Best effort:
    /// followers also read on their own every tick, so a failure here only delays them.
    pub async fn announce(&self, change: Change) {
        if let Backend::Postgres(pool) = &self.backend
            && let Err(e) =
                sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(change.name()).execute(pool).await
        {
            tracing::warn!(?change, "cannot notify the other replicas (they follow within their tick): {e}");
        }
    }

    /// On PostgreSQL, listen for announcements for as long as the task runs, waking this
    /// process's followers; `None` on SQLite.
    pub fn listen(&self) -> Option<tokio::task::JoinHandle<()>> {
        let Backend::Postgres(pool) = &self.backend else { return None };
        let (pool, changes) = (pool.clone(), self.changes.clone());
        Some(tokio::spawn(async move {
            loop {
                let listening = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen(CHANNEL).await?;
                    // Whatever was announced before this listener started is read by a
                    // follower woken now.
                    Change::ALL.into_iter().for_each(|c| changes.wake(c));
                    loop {
                        let n = listener.recv().await?;
                        match Change::parse(n.payload()) {
                            Some(c) => changes.wake(c),
                            None => tracing::debug!(payload = n.payload(), "unknown change announced: ignored"),
                        }
                    }
                };
                let result: Result<(), sqlx::Error> = listening.await;
                if let Err(e) = result {
                    tracing::warn!(
                        "listening for other replicas' changes failed (retried; they are read every tick meanwhile): {e}"
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }
}
