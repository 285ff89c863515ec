//! The delivery writes that may share one transaction (group commit): what the committer
//! (`commit.rs`) queues and the SQLite writer (`direct.rs`) and the PostgreSQL path
//! (`operations.rs`) carry out. Apart from both so neither imports the other for them.

use super::ResultOutcome;
use crate::ops::Event;

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
