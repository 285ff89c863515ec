//! The domain's error: what went wrong, in words a caller can act on, with no protocol in
//! it. Each front maps a [`Kind`] to its own form (an HTTP status in `http/error.rs`, a
//! CoAP response code in `coap/`, a log line for MQTT, which has no answer).

use crate::plugins::{CallError, Fault, PluginFault};
use crate::store::StoreError;
use std::time::Duration;

/// What kind of failure, as far as the caller is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or invalid; the message names the problem.
    Invalid,
    /// No credential, or one that is unknown, expired or revoked.
    Unauthenticated,
    /// The caller is known but may not do this.
    Forbidden,
    /// What the request names does not exist.
    NotFound,
    /// The request conflicts with what is stored (a taken name, a finished operation).
    Conflict,
    /// The input made a plugin hit a limit or trap; charged to its sender.
    PluginFault,
    /// The sender's inputs made plugins fault repeatedly: refused for a while.
    Held(Duration),
    /// Every instance slot of a plugin is in use: back-pressure, try again shortly.
    Busy(Duration),
    /// The part that would serve this is not there now (a suspended or missing plugin).
    Unavailable,
    /// Drover's own failure (the database, a bug); logged.
    Internal,
}

/// A domain failure: a kind, a stable machine-readable code (`unknown_operation`,
/// `already_enrolled` …) and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Error {
        Error { kind, code, message: message.into() }
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(Kind::Invalid, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, "not_found", message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Error {
        Error::new(Kind::Unauthenticated, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(Kind::Forbidden, "forbidden", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(Kind::Conflict, code, message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(Kind::Unavailable, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(Kind::Internal, "internal", message)
    }

    /// The same error with `prefix: ` before its message (which device type said it).
    pub fn context(mut self, prefix: impl std::fmt::Display) -> Error {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Error {}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Conflict(what) => Error::conflict("conflict", format!("{what} already exists")),
            StoreError::NotFound(what) => Error::not_found(format!("{what} not found")),
            StoreError::Refused(why) => Error::conflict("refused", why),
            other => Error::internal(other.to_string()),
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        match e {
            CallError::Rejected(p) => {
                use crate::plugins::types::ErrorCode as C;
                let code = match p.code {
                    C::Malformed => "malformed",
                    C::Invalid => "invalid",
                    C::UnknownOperation => "unknown_operation",
                    C::Unsupported => "unsupported",
                    C::Rejected => "rejected",
                    C::Internal => "plugin_error",
                };
                Error::invalid(code, p.message)
            }
            CallError::Fault(f @ PluginFault { fault: Fault::Busy(_), .. }) => {
                Error::new(Kind::Busy(Duration::from_secs(1)), "busy", f.to_string())
            }
            CallError::Fault(f @ PluginFault { fault: Fault::Unavailable(_), .. }) => {
                Error::new(Kind::Busy(Duration::from_secs(5)), "unavailable", f.to_string())
            }
            CallError::Fault(f @ PluginFault { fault: Fault::Held(retry), .. }) => {
                Error::new(Kind::Held(retry), "held", f.to_string())
            }
            // The input made the plugin hit a limit or trap: this request is refused; the
            // fault is charged to its sender (plugins::sources).
            CallError::Fault(f) => Error::new(Kind::PluginFault, "plugin_fault", f.to_string()),
            CallError::WrongKind(p) => Error::internal(format!("plugin {p} is not a device type")),
        }
    }
}
