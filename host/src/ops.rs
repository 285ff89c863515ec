//! The operation state machine (seed 000). Pure: no I/O, so every rule is unit-tested
//! here and the store only applies what this module decides. See docs/operations.md.

use serde::{Deserialize, Serialize};

text_enum! {
    /// What an operation is to the device: a one-off command, a profile (configuration it
    /// keeps), or a policy. Only a command is superseded by a newer one of its code
    /// (`REPEATED`); the plugin's catalogue says which kind each code is.
    pub enum Kind ("kind") {
        Command = "command",
        Profile = "profile",
        Policy = "policy",
    }
}

/// Where an operation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Stored, waiting to be delivered.
    Pending,
    /// Delivered; the device has it and has not reported a final result.
    InProgress,
    Completed,
    Error,
    /// Cancelled by an admin, or because the device was disenrolled.
    Cancelled,
    /// Superseded by a newer command with the same code for the same device.
    Repeated,
    /// The device said "not now": still queued, offered again on its next call.
    NotNow,
    /// Its TTL passed before it finished.
    Expired,
}

pub const ALL_STATES: [State; 8] = [
    State::Pending,
    State::InProgress,
    State::Completed,
    State::Error,
    State::Cancelled,
    State::Repeated,
    State::NotNow,
    State::Expired,
];

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::InProgress => "IN_PROGRESS",
            State::Completed => "COMPLETED",
            State::Error => "ERROR",
            State::Cancelled => "CANCELLED",
            State::Repeated => "REPEATED",
            State::NotNow => "NOTNOW",
            State::Expired => "EXPIRED",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        ALL_STATES.into_iter().find(|st| st.as_str() == s)
    }

    /// A terminal operation never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Completed | State::Error | State::Cancelled | State::Repeated | State::Expired)
    }

    /// Queued: offered to the device on its next call.
    pub fn is_queued(self) -> bool {
        matches!(self, State::Pending | State::NotNow)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device reported for an operation (from the plugin's `result-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    InProgress,
    Completed,
    Error,
    NotNow,
}

/// Something that may move an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The host handed it to the device (poll answer, MQTT publish).
    Delivered,
    /// The device reported on it.
    Result(Reported),
    /// An admin cancelled it, or its device left management.
    Cancel,
    /// A newer command with the same code was added for the device.
    Supersede,
    /// Its TTL passed.
    Expire,
    /// The host gave up on it: its plugin cannot encode it, or the device never answered
    /// it however often it was offered. Retrying cannot help, so it ends in ERROR at once.
    Fail,
    /// No answer came within the answer timeout of its delivery by polling (the answer,
    /// or the poll's response, was lost; a replica crashed): it goes back to the queue.
    NoAnswer,
}

/// An operation's counters that the rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    /// Deliveries so far.
    pub made: i64,
    /// Deliveries allowed in all (retries + 1).
    pub max: i64,
}

/// The state `event` moves an operation in `state` to, or `None` when it changes nothing.
/// `None` is what makes reports idempotent: the same result twice, or anything after a
/// terminal state, is a no-op.
pub fn next(state: State, event: Event, attempts: Attempts) -> Option<State> {
    use State::*;
    if state.is_terminal() {
        return None;
    }
    let to = match (state, event) {
        (Pending | NotNow, Event::Delivered) => InProgress,
        (_, Event::Delivered) => return None,
        (_, Event::Cancel) => Cancelled,
        (_, Event::Expire) => Expired,
        (_, Event::Fail) => Error,
        (InProgress, Event::NoAnswer) => Pending,
        (_, Event::NoAnswer) => return None,
        (Pending, Event::Supersede) => Repeated,
        (_, Event::Supersede) => return None,
        (_, Event::Result(Reported::Completed)) => Completed,
        // A failed attempt is retried while deliveries are left; then it is final, so a
        // poison operation cannot hold its place for ever.
        (_, Event::Result(Reported::Error)) => {
            if attempts.made < attempts.max {
                Pending
            } else {
                Error
            }
        }
        (_, Event::Result(Reported::InProgress)) => InProgress,
        (_, Event::Result(Reported::NotNow)) => NotNow,
    };
    (to != state).then_some(to)
}

/// Every event, for checks over all of them.
pub const ALL_EVENTS: [Event; 10] = [
    Event::Delivered,
    Event::Result(Reported::Completed),
    Event::Result(Reported::Error),
    Event::Result(Reported::InProgress),
    Event::Result(Reported::NotNow),
    Event::Cancel,
    Event::Supersede,
    Event::Expire,
    Event::Fail,
    Event::NoAnswer,
];

/// Whether some event moves an operation from `from` to `to`, with attempts left or not: a
/// recorded transition that is no such move was written past the state machine (the
/// kill -9 and property tests check every transition the store holds with it).
pub fn is_move(from: State, to: State) -> bool {
    let attempts = [Attempts { made: 0, max: 1 }, Attempts { made: 1, max: 1 }, Attempts { made: 1, max: 2 }];
    ALL_EVENTS.iter().any(|&e| attempts.iter().any(|&a| next(from, e, a) == Some(to)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    const ONE: Attempts = Attempts { made: 1, max: 1 };

    #[test]
    fn the_happy_path() {
        assert_eq!(next(Pending, Event::Delivered, Attempts { made: 0, max: 1 }), Some(InProgress));
        assert_eq!(next(InProgress, Event::Result(Reported::Completed), ONE), Some(Completed));
    }

    #[test]
    fn reports_are_idempotent() {
        assert_eq!(next(Completed, Event::Result(Reported::Completed), ONE), None);
        assert_eq!(next(InProgress, Event::Result(Reported::InProgress), ONE), None);
        assert_eq!(next(NotNow, Event::Result(Reported::NotNow), ONE), None);
        for s in ALL_STATES.into_iter().filter(|s| s.is_terminal()) {
            for e in [
                Event::Delivered,
                Event::Cancel,
                Event::Expire,
                Event::Supersede,
                Event::NoAnswer,
                Event::Result(Reported::Error),
            ] {
                assert_eq!(next(s, e, ONE), None, "{s} must not move on {e:?}");
            }
        }
    }

    #[test]
    fn errors_are_retried_until_attempts_run_out() {
        assert_eq!(next(InProgress, Event::Result(Reported::Error), Attempts { made: 1, max: 3 }), Some(Pending));
        assert_eq!(next(InProgress, Event::Result(Reported::Error), Attempts { made: 3, max: 3 }), Some(Error));
        assert_eq!(next(InProgress, Event::Result(Reported::Error), ONE), Some(Error));
    }

    #[test]
    fn not_now_stays_queued_and_is_offered_again() {
        assert_eq!(next(InProgress, Event::Result(Reported::NotNow), ONE), Some(NotNow));
        assert!(NotNow.is_queued());
        assert_eq!(next(NotNow, Event::Delivered, ONE), Some(InProgress));
    }

    #[test]
    fn moves() {
        assert!(is_move(Pending, InProgress));
        assert!(is_move(InProgress, Pending), "retry, or no answer");
        assert!(is_move(NotNow, Completed));
        assert!(is_move(Pending, Repeated));
        assert!(!is_move(InProgress, Repeated), "only waiting commands are superseded");
        assert!(!is_move(Completed, Pending), "terminal");
        assert!(!is_move(Pending, Pending));
    }

    #[test]
    fn an_unanswered_delivery_goes_back_to_the_queue() {
        assert_eq!(next(InProgress, Event::NoAnswer, ONE), Some(Pending));
        for s in [Pending, NotNow] {
            assert_eq!(next(s, Event::NoAnswer, ONE), None, "only a delivered operation can go unanswered");
        }
        // A late answer to the first delivery still completes it, once.
        assert_eq!(next(Pending, Event::Result(Reported::Completed), ONE), Some(Completed));
        assert_eq!(next(Completed, Event::NoAnswer, ONE), None);
    }

    #[test]
    fn only_pending_commands_are_superseded() {
        assert_eq!(next(Pending, Event::Supersede, ONE), Some(Repeated));
        assert_eq!(next(InProgress, Event::Supersede, ONE), None);
    }

    #[test]
    fn cancel_and_expire_end_any_live_operation() {
        for s in [Pending, InProgress, NotNow] {
            assert_eq!(next(s, Event::Cancel, ONE), Some(Cancelled));
            assert_eq!(next(s, Event::Expire, ONE), Some(Expired));
        }
    }

    #[test]
    fn a_poison_operation_fails_at_once() {
        assert_eq!(next(Pending, Event::Fail, Attempts { made: 0, max: 5 }), Some(Error));
    }

    #[test]
    fn names_round_trip() {
        for s in ALL_STATES {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("DONE"), None);
    }
}
