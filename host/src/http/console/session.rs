//! Logging in and out, the session a request carries, and the CSRF check of every form.

use super::{ConsoleState, html, layout, see};
use crate::auth::{Role, hash_token};
use crate::store::now_ms;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "drover_session";
/// How long a session lasts (an admin logs in once a working day).
const SESSION: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
const SESSION_MS: i64 = SESSION.as_millis() as i64;
/// Largest form the console takes (a CSV import pasted into the page).
const MAX_FORM: usize = 8 << 20;

/// Set by the console on the requests it makes to the admin API in-process: the hash of
/// the admin token its session stands for. The role extractors take it in place of a
/// bearer token. Only the server can set a request extension; nothing from the network
/// can carry one.
#[derive(Clone)]
pub struct SessionToken(pub String);

/// A logged-in browser: who it is (the admin token's name and role) and its form token.
#[derive(Clone)]
pub struct Session {
    pub name: String,
    /// As the audit trail names it: the token's name, or `user:NAME`.
    pub actor: String,
    pub role: Role,
    /// The token or user reaches part of the fleet only (`scope.rs`): pages that show the
    /// whole fleet are not offered.
    pub scoped: bool,
    /// The tenant it belongs to (`tenants.rs`); `None`: an operator of the server.
    pub tenant: Option<String>,
    /// A tenant's caller without a scope: its tenant's groups are offered.
    pub tenant_whole: bool,
    /// A tenant's admin without a scope: enrollment is offered, into the tenant.
    pub tenant_admin: bool,
    pub token_hash: String,
    pub csrf: String,
}

impl Session {
    pub fn can(&self, role: Role) -> bool {
        self.role >= role
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    hex::encode(bytes)
}

/// Where a request without a session is sent: the login page, then back.
fn to_login(parts: &Parts) -> Response {
    let back = parts.uri.path_and_query().map_or("/console", |p| p.as_str());
    see(&format!("/console/login?next={}", super::enc(back)))
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let Some(value) = cookie(&parts.headers, COOKIE) else { return Err(to_login(parts)) };
        let store = &state.app.store;
        let internal =
            |e: crate::store::StoreError| (StatusCode::INTERNAL_SERVER_ERROR, format!("database: {e}")).into_response();
        let Some(row) = store.session(&hash_token(value)).await.map_err(internal)? else {
            return Err(to_login(parts));
        };
        // The token is looked up on every request: revoked or expired, the session is over.
        let Some(principal) = store.admin_for_token(&row.token_hash).await.map_err(internal)? else {
            return Err(to_login(parts));
        };
        let role = Role::parse(&principal.role).unwrap_or(Role::Viewer);
        // A tenant's session is confined like a scoped one: the console shows its devices.
        let scoped = principal.scope.is_some() || principal.tenant.is_some();
        let actor = principal.user_name.as_ref().map_or_else(|| principal.name.clone(), |u| format!("user:{u}"));
        let tenant_whole = principal.tenant.is_some() && principal.scope.is_none();
        let tenant_admin = tenant_whole && role == Role::Admin;
        Ok(Session {
            name: principal.name,
            actor,
            role,
            scoped,
            tenant: principal.tenant,
            tenant_whole,
            tenant_admin,
            token_hash: row.token_hash,
            csrf: row.csrf,
        })
    }
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// A form posted from a console page: the session, and the form as `T`, read only once
/// its `csrf` field matched the session's. A form from another site (which cannot read
/// the token) is refused with 403 before anything happens.
pub struct Posted<T>(pub Session, pub T);

impl<T: DeserializeOwned> FromRequest<ConsoleState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, MAX_FORM)
            .await
            .map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, format!("form: {e}")).into_response())?;
        let given: CsrfField = serde_urlencoded::from_bytes(&bytes).unwrap_or(CsrfField { csrf: String::new() });
        if !bool::from(given.csrf.as_bytes().ct_eq(session.csrf.as_bytes())) {
            let body = maud::html! {
                p.error role="alert" { "This form's CSRF token is missing or wrong, so nothing was done. Reload the page and try again." }
            };
            return Err(
                (StatusCode::FORBIDDEN, html(layout::page("Refused", Some(&session), "", body))).into_response()
            );
        }
        let form = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            let body = maud::html! { p.error role="alert" { "The form is not what this page sends: " (e) } };
            (StatusCode::BAD_REQUEST, html(layout::page("Refused", Some(&session), "", body))).into_response()
        })?;
        Ok(Posted(session, form))
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Only a console path is a place to go back to (never another site: `//evil`).
fn next_or_home(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with("/console") && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/console")
        .to_string()
}

pub async fn login_page(axum::extract::Query(q): axum::extract::Query<LoginQuery>) -> Response {
    html(login_form(&next_or_home(q.next.as_deref()), None))
}

fn login_form(next: &str, error: Option<&str>) -> maud::Markup {
    let body = maud::html! {
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form.card #user-login method="post" action="/console/login" {
            input type="hidden" name="next" value=(next);
            label for="user" { "User" }
            input #user type="text" name="name" autocomplete="username" required autofocus
                pattern="[A-Za-z0-9._@-]{1,64}";
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            button type="submit" { "Log in" }
        }
        form.card #token-login method="post" action="/console/login" {
            input type="hidden" name="next" value=(next);
            label for="token" { "Admin token" }
            input #token type="password" name="token" autocomplete="off" required
                placeholder="drv_admin_…";
            p.hint { "Or an admin token from " code { "drover token create" } " or the server's " code { "admin-token" } " file. The console acts with that token's role." }
            button type="submit" { "Log in with a token" }
        }
    };
    layout::page("Log in", None, "", body)
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: Option<String>,
    name: Option<String>,
    password: Option<String>,
    next: Option<String>,
}

/// Whether a browser says the form came from another site. The login form has no CSRF
/// token (there is no session yet): without this, another site could log a browser in
/// with the attacker's token (login CSRF). Browsers send `Origin` on every POST.
/// The server's own origins: the request's Host, and `--public-url` (a proxy in front may
/// pass another Host).
fn cross_site(headers: &HeaderMap, public_url: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    let public = public_url.trim_end_matches('/');
    let public =
        public.find("://").and_then(|i| public[i + 3..].find('/').map(|j| &public[..i + 3 + j])).unwrap_or(public);
    origin == "null" || !(authority.eq_ignore_ascii_case(host) || origin.eq_ignore_ascii_case(public))
}

/// A login is a request before any credential: counted per client address as the
/// API's are (`http/throttle.rs`), and answered with the form and the reason past it.
pub struct LoginThrottled;

impl FromRequestParts<ConsoleState> for LoginThrottled {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Response> {
        crate::http::extract::throttle(&state.app, parts).map(|()| LoginThrottled).map_err(|e| {
            let wait = e.retry_after.unwrap_or(1);
            let message = format!("Too many login attempts from this address: try again in {wait} s.");
            let mut r = (e.status, html(login_form("/console", Some(&message)))).into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
            r
        })
    }
}

pub async fn login(
    State(state): State<ConsoleState>,
    _: LoginThrottled,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let next = next_or_home(form.next.as_deref());
    if cross_site(&headers, &state.app.public_url) {
        return (StatusCode::FORBIDDEN, html(login_form(&next, Some("A login form from another site is refused."))))
            .into_response();
    }
    let token = match (form.name.as_deref(), form.password.as_deref(), form.token.as_deref()) {
        (Some(name), Some(password), _) => {
            match crate::users::login(&state.app.store, name.trim(), password, Some(SESSION)).await {
                Ok(session) => session.token,
                Err(e) => {
                    let status = crate::http::ApiError::from(e.clone()).status;
                    return (status, html(login_form(&next, Some(&e.message)))).into_response();
                }
            }
        }
        (_, _, Some(token)) => token.trim().to_string(),
        _ => {
            return (StatusCode::BAD_REQUEST, html(login_form(&next, Some("Give a user and password, or a token."))))
                .into_response();
        }
    };
    let token_hash = hash_token(&token);
    let known = match state.app.store.admin_for_token(&token_hash).await {
        Ok(k) => k,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("database: {e}")).into_response(),
    };
    let Some(principal) = known else {
        tracing::info!(target: "console", "console login refused: unknown, expired or revoked token");
        return (StatusCode::UNAUTHORIZED, html(login_form(&next, Some("Unknown, expired or revoked admin token."))))
            .into_response();
    };
    // In the trail as the API's calls are: a token by its name, a user as `user:NAME`.
    let tenant = principal.tenant.clone();
    let (name, role) = match principal.user_name {
        Some(user) => (format!("user:{user}"), principal.role),
        None => (principal.name, principal.role),
    };
    let (id, csrf) = (random_hex(), random_hex());
    if let Err(e) = state.app.store.create_session(&hash_token(&id), &token_hash, &csrf, now_ms() + SESSION_MS).await {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("database: {e}")).into_response();
    }
    // Secure when the server is reached over https (its public URL says how).
    let secure = if state.app.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}", SESSION_MS / 1000);
    audit(&state, &name, &role, tenant, "POST /console/login").await;
    let mut response = see(&next);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// A login or logout in the audit trail, as the API's actions are (`admin.action`). A
/// refused login has no actor and is not recorded, as an API call without a valid token
/// is not (anyone could fill the table); it is logged.
async fn audit(state: &ConsoleState, name: &str, role: &str, tenant: Option<String>, action: &str) {
    let event = crate::store::NewEvent {
        event_type: crate::store::ADMIN_ACTION.into(),
        actor: Some(name.into()),
        role: Some(role.into()),
        action: Some(action.into()),
        target: Some(action.split_once(' ').map_or(action, |(_, p)| p).into()),
        outcome: Some(crate::store::Outcome::Ok.as_str().into()),
        status: Some(303),
        data: None,
        device: None,
        // A tenant's caller's row is its tenant's, as in the API's trail.
        tenant,
    };
    if let Err(e) = state.app.store.append_event(&event).await {
        tracing::error!(target: "audit", error = %e, action, actor = name, "audit row not written");
    }
}

pub async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        let _ = state.app.store.delete_session(&hash_token(id)).await;
    }
    // A user's login token was made for this session only: it ends with it.
    let _ = state.app.store.end_user_session(&session.token_hash).await;
    audit(&state, &session.actor, session.role.as_str(), session.tenant.clone(), "POST /console/logout").await;
    let mut response = see("/console/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("drover_session=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}
