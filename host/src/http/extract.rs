//! What handlers take from a request before they run: a JSON body with a JSON error, the
//! admin caller with the role a handler needs (one typed extractor per role, so a
//! handler states its role in its signature), and the device behind a device credential.

use super::{ApiError, AppState};
use crate::auth::{Role, hash_token};
use crate::scope::{Reach, Scope};
use crate::store::DeviceRow;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use serde::Deserialize;

/// A JSON request body. The content type is not insisted on (curl's `-d` sends a form
/// type); the body must parse, and an error names the line, column and problem.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request("malformed_json", e.body_text()))?;
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request("malformed_json", format!("request body: {e}")))
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// What a long-lived answer (the event stream) checks again to end when its caller's
/// access ends: the admin token it was opened with (a console session's, or the bearer
/// token), or the user an OpenID provider's JWT stood for. Revoked, expired, its user
/// disabled or removed: the stream closes.
#[derive(Debug, Clone)]
pub enum Standing {
    Token(String),
    User(String),
}

impl Standing {
    /// The standing of the request `parts` whose caller is `admin`.
    pub fn of(parts: &Parts, admin: &Admin) -> Option<Standing> {
        if let Some(t) = parts.extensions.get::<super::console::SessionToken>() {
            return Some(Standing::Token(t.0.clone()));
        }
        match bearer(parts) {
            Some(token) if crate::oidc::is_jwt(token) => admin.user.clone().map(Standing::User),
            Some(token) => Some(Standing::Token(hash_token(token))),
            None => None,
        }
    }

    /// Whether the caller may still read.
    pub async fn holds(&self, store: &crate::store::Store) -> Result<bool, crate::store::StoreError> {
        Ok(match self {
            Standing::Token(hash) => store.admin_for_token(hash).await?.is_some(),
            Standing::User(name) => store.user_principal(name).await?.is_some(),
        })
    }
}

/// An authenticated admin-API caller.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The token's name, or the user's for a login token.
    pub name: String,
    pub role: Role,
    /// What part of the fleet it reaches (`scope.rs`); `None`: all of it.
    pub scope: Option<Scope>,
    /// Set when the token is a user's login.
    pub user: Option<String>,
    /// The tenant it is confined to (`tenants.rs`); `None`: an operator of the server.
    pub tenant: Option<String>,
}

impl Admin {
    /// The actor recorded in transitions: `admin:TOKEN` or `user:NAME`.
    pub fn actor(&self) -> String {
        match &self.user {
            Some(u) => format!("user:{u}"),
            None => format!("admin:{}", self.name),
        }
    }

    /// The scope and tenant as a condition on devices, when there is either.
    pub async fn reach(&self, state: &AppState) -> Result<Option<Reach>, ApiError> {
        match (&self.scope, &self.tenant) {
            (Some(s), tenant) => Ok(Some(s.reach(&state.store, self.user.as_deref(), tenant.as_deref()).await?)),
            (None, Some(tenant)) => Ok(Some(Reach::tenant(tenant))),
            (None, None) => Ok(None),
        }
    }

    /// Whether it reaches what belongs to `tenant` (a token's, a user's): an operator of the
    /// server reaches every tenant's, a tenant's caller its own only.
    pub fn reaches_tenant(&self, tenant: &Option<String>) -> bool {
        self.tenant.is_none() || *tenant == self.tenant
    }

    /// Whether it reaches the whole fleet: no scope, no tenant.
    pub fn whole_fleet(&self) -> bool {
        self.scope.is_none() && self.tenant.is_none()
    }

    /// The caller of `parts`, if its role is at least `role` and it may use the endpoint:
    /// `Confined::No` serves only callers that reach the whole fleet, `Tenant` also a
    /// tenant's callers without a scope (the endpoint acts within their tenant), `Scoped`
    /// any caller (the endpoint narrows what it serves to `reach()`).
    async fn with_role(parts: &Parts, state: &AppState, role: Role, confined: Confined) -> Result<Admin, ApiError> {
        // A console page's call carries its session's token (hash) as an extension, which
        // only the server can set; anything else presents the token itself: Drover's, or
        // an OpenID provider's JWT standing for a user (`oidc.rs`).
        let principal = match (parts.extensions.get::<super::console::SessionToken>(), bearer(parts), &state.oidc) {
            (Some(t), _, _) => state.store.admin_for_token(&t.0).await?,
            (None, Some(token), Some(oidc)) if crate::oidc::is_jwt(token) => {
                let user = oidc.user_of(token).await.map_err(ApiError::unauthorized)?;
                let found = state.store.user_principal(&user).await?;
                Some(found.ok_or_else(|| {
                    ApiError::unauthorized(format!("`{user}` is not an enabled user here: an admin adds users"))
                })?)
            }
            (None, Some(token), _) => state.store.admin_for_token(&hash_token(token)).await?,
            (None, None, _) => {
                return Err(ApiError::unauthorized("send an admin token: Authorization: Bearer <token>"));
            }
        };
        let principal = principal.ok_or_else(|| ApiError::unauthorized("unknown or revoked admin token"))?;
        let admin = Admin::of(principal)?;
        // The audit trail names the caller, refused or not.
        if let Some(slot) = parts.extensions.get::<super::audit::AuditSlot>() {
            slot.set_admin(&admin);
        }
        let who = if admin.user.is_some() { "user" } else { "token" };
        let refused = |what: String| {
            ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "scoped",
                format!("{who} `{}` {what}: this endpoint serves callers that reach the whole fleet", admin.name),
            )
        };
        match (&admin.scope, &admin.tenant, confined) {
            (_, _, Confined::Scoped) | (None, None, _) | (None, Some(_), Confined::Tenant) => {}
            (Some(s), _, _) => return Err(refused(format!("is scoped to {}", s.describe()))),
            (None, Some(t), Confined::No) => return Err(refused(format!("belongs to tenant `{t}`"))),
        }
        if admin.role < role {
            return Err(ApiError::forbidden(format!(
                "{who} `{}` has role {}; this needs {}",
                admin.name,
                admin.role.as_str(),
                role.as_str()
            )));
        }
        Ok(admin)
    }

    /// The caller a stored principal stands for.
    pub fn of(p: crate::store::Principal) -> Result<Admin, ApiError> {
        let role =
            Role::parse(&p.role).ok_or_else(|| ApiError::internal(format!("stored role `{}` is unknown", p.role)))?;
        let scope = Scope::parse_stored(p.scope.as_deref()).map_err(ApiError::internal)?;
        Ok(Admin { name: p.name, role, scope, user: p.user_name, tenant: p.tenant })
    }
}

/// Which confined callers an endpoint serves (`Admin::with_role`).
#[derive(Debug, Clone, Copy)]
enum Confined {
    /// None: only callers that reach the whole fleet.
    No,
    /// A tenant's callers without a scope: the endpoint acts within `admin.tenant`.
    Tenant,
    /// Any: the endpoint narrows what it serves to `admin.reach()`.
    Scoped,
}

/// One extractor per role: `Viewer(admin): Viewer` in a handler's arguments lets in any
/// admin token whose role is at least viewer and that reaches the whole fleet. The
/// `Scoped…` ones also let in scoped callers and a tenant's: a handler that takes one must
/// narrow what it reads and writes to `admin.reach()`; `TenantAdministrator` lets in a
/// tenant's unscoped admins, and the handler acts within their tenant (deny by default:
/// `scope.rs`, `tenants.rs`).
macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr, $confined:expr) => {
        $(#[$doc])*
        pub struct $name(pub Admin);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
                Admin::with_role(parts, state, $role, $confined).await.map($name)
            }
        }
    };
}

role_extractor!(
    /// A caller that may read everything.
    Viewer,
    Role::Viewer,
    Confined::No
);
role_extractor!(
    /// A caller that may also add and cancel operations, tag and group devices.
    Operator,
    Role::Operator,
    Confined::No
);
role_extractor!(
    /// A caller that may also enroll and remove devices, manage tokens and plugins.
    Administrator,
    Role::Admin,
    Confined::No
);
role_extractor!(
    /// A viewer that may belong to a tenant (not scoped): the handler serves what is
    /// `admin.tenant`'s (its groups: `groups::find`).
    TenantViewer,
    Role::Viewer,
    Confined::Tenant
);
role_extractor!(
    /// An operator that may belong to a tenant (not scoped): the handler acts within
    /// `admin.tenant`.
    TenantOperator,
    Role::Operator,
    Confined::Tenant
);
role_extractor!(
    /// An administrator that may belong to a tenant (not scoped): the handler acts within
    /// `admin.tenant` (`tenants::acting_in`, `tenants::of_new_principal`).
    TenantAdministrator,
    Role::Admin,
    Confined::Tenant
);
role_extractor!(
    /// A viewer that may be scoped: the handler narrows what it serves to the scope.
    ScopedViewer,
    Role::Viewer,
    Confined::Scoped
);
role_extractor!(
    /// An operator that may be scoped: the handler narrows what it touches to the scope.
    ScopedOperator,
    Role::Operator,
    Confined::Scoped
);

/// An authenticated device: the bearer of a live device credential, and that
/// credential's hash (to refresh it).
pub struct AuthDevice(pub DeviceRow, pub String);

impl FromRequestParts<AppState> for AuthDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let hash = device_token_hash(parts)?;
        let device = state.store.device_for_credential(&hash).await?.ok_or_else(unknown_device_token)?;
        Ok(AuthDevice(device, hash))
    }
}

/// The hash of the device credential a request bears: its bearer token, or else the
/// client certificate its connection presented (mTLS, `identity.rs`).
pub fn device_token_hash(parts: &Parts) -> Result<String, ApiError> {
    if let Some(token) = bearer(parts) {
        return Ok(hash_token(token));
    }
    if let Some(c) = parts.extensions.get::<crate::tls::ClientCertificate>() {
        return Ok(c.0.clone());
    }
    Err(ApiError::unauthorized(
        "send the device's access token (Authorization: Bearer <token>) or connect with its certificate",
    ))
}

/// The client's address: the TCP peer, or behind a proxy of `--trusted-proxies` the
/// address it forwarded (`listener.rs`), not the proxy's or a load balancer's. Unspecified
/// when the server was not served with connection info.
pub fn client_addr(parts: &Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// A request made before any credential (an enrollment, a login), counted against its
/// client address's bucket (`throttle.rs`): past it, 429 with how long to wait, before
/// anything of the request is read.
pub struct Throttled;

impl FromRequestParts<AppState> for Throttled {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        throttle(state, parts).map(|()| Throttled)
    }
}

/// Count a request made before any credential; see [`Throttled`].
pub fn throttle(state: &AppState, parts: &Parts) -> Result<(), ApiError> {
    let client = client_addr(parts);
    state.throttle.check(client).map_err(|wait| {
        tracing::debug!(%client, "request before a credential over its address's rate: 429");
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests before a credential from this address (enrollment, SCEP, certificates, logins): \
             slow down",
        )
        .retry_after(wait.as_secs_f64().ceil() as u64)
    })
}

/// The answer to a device credential that is not live.
pub fn unknown_device_token() -> ApiError {
    ApiError::unauthorized("unknown, expired or revoked device token")
}

/// Query parameters, refused with the JSON error body the API promises (axum's own
/// extractor answers `text/plain`): `invalid_query` naming the parameter and problem.
pub struct Query<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// Path parameters, refused with the JSON error body: `invalid_path` (an id that is not
/// a number, or past the largest one).
pub struct Path<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state).await.map(|p| Path(p.0)).map_err(|e| {
            let status = e.status();
            let code = if status.is_server_error() { "internal" } else { "invalid_path" };
            ApiError::new(status, code, e.body_text())
        })
    }
}

/// An integer field that also takes `90.0`: JSON Schema's integers include numbers whose
/// fraction is zero, and some clients write them so.
pub(super) fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(i64),
        Float(f64),
    }
    match Number::deserialize(d)? {
        Number::Int(v) => Ok(v),
        Number::Float(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Ok(v as i64),
        Number::Float(v) => Err(serde::de::Error::custom(format!("{v} is not a whole number"))),
    }
}

/// [`whole`], for an optional field (with `#[serde(default)]`).
pub(super) fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole")] i64);
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
}
