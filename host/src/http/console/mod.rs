//! The web console at `/console` (docs/console.md): server-rendered HTML (maud), one
//! module per page family, every asset in the binary.
//!
//! The console is a client of the admin API that happens to live in the same process:
//! each page calls the API router in-process (`Api::get`, `Api::send`) as the admin
//! token the session stands for, and renders the JSON it gets. So a page can do nothing
//! the API would refuse that token, every change goes through the same validation, events
//! and audit trail as a `curl`, and there is no second implementation of any rule.
//!
//! A session is a row (`console_sessions`) standing for the admin token that logged in;
//! its cookie is HttpOnly, SameSite=Strict, scoped to `/console` (and Secure behind an
//! https public URL). Every form carries the session's CSRF token, checked before the
//! form is read ([`Posted`]). Revoking or expiring the token ends its sessions at once:
//! each request looks the token up again.

mod activities;
mod analytics;
mod devices;
mod enrollment;
mod fleet;
mod groups;
mod layout;
mod plugins;
mod rollouts;
mod session;
mod tenants;
mod users;

pub use session::SessionToken;

use super::AppState;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::de::DeserializeOwned;
use serde_json::Value;
use session::Session;
use tower::ServiceExt;

/// The console's routes. `api` is the admin API's router, which pages call in-process.
pub fn router(state: AppState, api: Router) -> Router {
    let console = ConsoleState { app: state, api };
    Router::new()
        .route("/console", get(fleet::overview))
        .route("/console/", get(fleet::overview))
        .route("/console/login", get(session::login_page).post(session::login))
        .route("/console/logout", post(session::logout))
        .route("/console/assets/console.css", get(layout::css))
        .route("/console/assets/console.js", get(layout::js))
        .route("/console/devices", get(devices::list))
        .route("/console/devices/{device_type}/{device_id}", get(devices::show))
        .route("/console/devices/{device_type}/{device_id}/operations", get(devices::operations_fragment))
        .route("/console/devices/{device_type}/{device_id}/operations/add", post(devices::add_operation))
        .route("/console/devices/{device_type}/{device_id}/tags", post(devices::set_tags))
        .route("/console/devices/{device_type}/{device_id}/revoke", post(devices::revoke))
        .route(
            "/console/devices/{device_type}/{device_id}/certificates/{serial}/revoke",
            post(devices::revoke_certificate),
        )
        .route("/console/devices/{device_type}/{device_id}/psk", post(devices::provision_psk))
        .route("/console/devices/{device_type}/{device_id}/remove", post(devices::remove))
        .route("/console/operations/{id}", get(devices::operation))
        .route("/console/operations/{id}/cancel", post(devices::cancel_operation))
        .route("/console/activities", get(activities::list))
        .route("/console/activities/{id}", get(activities::show))
        .route("/console/activities/{id}/counts", get(activities::counts_fragment))
        .route("/console/activities/{id}/cancel", post(activities::cancel))
        .route("/console/groups", get(groups::list).post(groups::create))
        .route("/console/groups/count", get(groups::count))
        .route("/console/groups/{name}", get(groups::show))
        .route("/console/groups/{name}/members", post(groups::add_members))
        .route("/console/groups/{name}/delete", post(groups::delete))
        .route("/console/enrollment", get(enrollment::index))
        .route("/console/enrollment/tokens", post(enrollment::create_token))
        .route("/console/enrollment/import", post(enrollment::import))
        .route("/console/plugins", get(plugins::list))
        .route("/console/plugins/{name}", get(plugins::show))
        .route("/console/plugins/{name}/{action}", post(plugins::act))
        .route("/console/rollouts", get(rollouts::list))
        .route("/console/rollouts/{name}", get(rollouts::show))
        .route("/console/rollouts/{name}/{action}", post(rollouts::act))
        .route("/console/policies", get(rollouts::policies))
        .route("/console/alerts", get(analytics::alerts))
        .route("/console/alerts/{id}/resolve", post(analytics::resolve))
        .route("/console/alert-rules", post(analytics::add_rule))
        .route("/console/alert-rules/{name}/delete", post(analytics::delete_rule))
        .route("/console/metrics", get(analytics::metrics))
        .route("/console/audit", get(rollouts::audit))
        .route("/console/users", get(users::list).post(users::create))
        .route("/console/users/{name}/{action}", post(users::act))
        .route("/console/tenants", get(tenants::list).post(tenants::create))
        .route("/console/tenants/{name}/remove", post(tenants::remove))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

#[derive(Clone)]
pub(crate) struct ConsoleState {
    app: AppState,
    api: Router,
}

/// Every console answer: no framing by other sites, scripts and styles only from here,
/// forms only to here, no referrer to other sites, no caching of pages with fleet data.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// What the API answered when it did not succeed: its status, its error's stable code
/// and message.
#[derive(Debug)]
pub(crate) struct ApiFailure {
    status: StatusCode,
    code: String,
    message: String,
}

/// The admin API as the session's token, in-process.
pub(crate) struct Api<'a> {
    console: &'a ConsoleState,
    session: &'a Session,
}

/// Largest API answer a page reads (a page of 1000 devices with metadata).
const MAX_ANSWER: usize = 32 << 20;

impl Api<'_> {
    async fn call(&self, method: Method, path: &str, body: Body, content_type: &str) -> Result<Value, ApiFailure> {
        let request = Request::builder()
            .method(method)
            .uri(format!("/api/v1/{path}"))
            .header(header::CONTENT_TYPE, content_type)
            .extension(SessionToken(self.session.token_hash.clone()))
            .body(body)
            .map_err(|e| failure(StatusCode::BAD_REQUEST, "invalid", e.to_string()))?;
        let response = match self.console.api.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        let value: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]["message"].as_str().map(str::to_string);
        let message = message.unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        let code = value["error"]["code"].as_str().unwrap_or("error").to_string();
        Err(ApiFailure { status, code, message })
    }

    /// GET `path` (under `/api/v1/`) and read the answer as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiFailure> {
        let value = self.call(Method::GET, path, Body::empty(), "application/json").await?;
        serde_json::from_value(value).map_err(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
    }

    /// Send a JSON body (`Value::Null`: none) with `method`.
    pub async fn send(&self, method: Method, path: &str, body: &Value) -> Result<Value, ApiFailure> {
        let body = if body.is_null() { Body::empty() } else { Body::from(body.to_string()) };
        self.call(method, path, body, "application/json").await
    }

    /// POST a body of another type (CSV).
    pub async fn post_raw(&self, path: &str, body: String, content_type: &str) -> Result<Value, ApiFailure> {
        self.call(Method::POST, path, Body::from(body), content_type).await
    }
}

fn failure(status: StatusCode, code: &str, message: String) -> ApiFailure {
    ApiFailure { status, code: code.into(), message }
}

/// A page, or the error page for what the API refused.
pub(crate) type PageResult = Result<Response, PageError>;

/// An error shown as a page: the API's message, with its status. Boxed: it travels in
/// every page's `Result`.
pub(crate) struct PageError(Box<Failed>);

struct Failed {
    failure: ApiFailure,
    session: Option<Session>,
}

impl PageError {
    fn new(failure: ApiFailure, session: &Session) -> PageError {
        PageError(Box::new(Failed { failure, session: Some(session.clone()) }))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let this = *self.0;
        let title = match this.failure.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            s if s.is_client_error() => "Refused",
            _ => "Something went wrong",
        };
        let body = maud::html! {
            p.error role="alert" { (this.failure.message) }
            p.hint { "Error code: " code { (this.failure.code) } }
            p { a href="/console" { "Overview" } }
        };
        let page = layout::page(title, this.session.as_ref(), "", body);
        (this.failure.status, html(page)).into_response()
    }
}

/// Map an API failure of a page's call to the error page.
pub(crate) trait OrPage<T> {
    fn or_page(self, session: &Session) -> Result<T, PageError>;
}

impl<T> OrPage<T> for Result<T, ApiFailure> {
    fn or_page(self, session: &Session) -> Result<T, PageError> {
        self.map_err(|f| PageError::new(f, session))
    }
}

/// A complete HTML answer.
pub(crate) fn html(markup: Markup) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

/// After a form: see the page that shows the result (303, so a reload does not post again).
pub(crate) fn see(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_string())]).into_response()
}

pub(crate) use super::path_segment as enc;
