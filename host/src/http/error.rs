//! The HTTP form of an error: a status, a stable code and a message, as
//! `{"error": {"code", "message"}}` (with `Retry-After` where a retry helps).

use crate::error::{Error, Kind};
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error for an HTTP caller: HTTP status, a stable code, a message saying what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds.max(1));
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `unknown_operation`, `malformed_json`.
    code: String,
    /// What was wrong, for a person.
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        match self.retry_after {
            Some(s) => (self.status, [(header::RETRY_AFTER, s.to_string())], Json(body)).into_response(),
            None => (self.status, Json(body)).into_response(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let (status, retry) = match e.kind {
            Kind::Invalid => (StatusCode::BAD_REQUEST, None),
            Kind::Unauthenticated => (StatusCode::UNAUTHORIZED, None),
            Kind::Forbidden => (StatusCode::FORBIDDEN, None),
            Kind::NotFound => (StatusCode::NOT_FOUND, None),
            Kind::Conflict => (StatusCode::CONFLICT, None),
            Kind::PluginFault => (StatusCode::UNPROCESSABLE_ENTITY, None),
            Kind::Held(after) => (StatusCode::TOO_MANY_REQUESTS, Some(after.as_secs())),
            Kind::Busy(after) => (StatusCode::SERVICE_UNAVAILABLE, Some(after.as_secs())),
            Kind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
            Kind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        let error = ApiError::new(status, e.code, e.message);
        match retry {
            Some(s) => error.retry_after(s),
            None => error,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        Error::from(e).into()
    }
}

impl From<crate::plugins::CallError> for ApiError {
    fn from(e: crate::plugins::CallError) -> ApiError {
        Error::from(e).into()
    }
}
