//! The HTTP front: the admin API under `/api/v1` (one resource per file), the web console
//! under `/console` (a client of that API, in-process), the device agent under
//! `/agent/v1`, `/metrics`, `/healthz` and `/readyz`. Handlers parse, call a service or read the
//! store, and map errors (`error.rs`); no delivery or enrollment logic lives here.

mod agent;
mod analytics;
mod api;
mod artifacts;
mod audit;
mod console;
mod devices;
mod enrollment;
mod error;
mod events;
mod extract;
mod fleet;
mod groups;
pub mod listener;
mod metrics;
mod operations;
mod plugin_settings;
mod plugins;
mod policies;
mod rollouts;
mod tenants;
pub mod throttle;
mod tokens;
mod users;
mod webhooks;

pub use error::{ApiError, ErrorBody};
pub use extract::{
    Admin, Administrator, ApiJson, AuthDevice, Operator, Path, Query, ScopedOperator, ScopedViewer,
    TenantAdministrator, TenantOperator, TenantViewer, Viewer,
};

use crate::core::Core;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use std::time::Duration;

/// Shared state of the HTTP handlers: the core, and what only HTTP needs.
#[derive(Clone)]
pub struct AppState {
    pub core: Core,
    /// Largest device message body accepted (from an authenticated device).
    pub max_agent_body: usize,
    /// How long a handler waits for a request body.
    pub body_timeout: Duration,
    /// Requests before any credential, per client address (`throttle.rs`).
    pub throttle: std::sync::Arc<throttle::Throttle>,
}

/// Handlers read the core's parts (`state.store`, `state.registry` …) directly.
impl std::ops::Deref for AppState {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// Largest device message accepted by default (4 MiB: an Apple MDM answer with an
/// installed-application list, a Windows SyncML package).
pub const MAX_AGENT_BODY: usize = 4 << 20;

pub fn router(state: AppState) -> Router {
    // The console calls the admin API in-process: it holds the same router.
    let api: Router = api::router(state.clone()).with_state(state.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .merge(agent::router())
        .route("/download/{token}", get(artifacts::download).head(artifacts::download))
        .with_state(state.clone())
        .merge(api.clone())
        .merge(console::router(state, api))
}

/// `s` percent-encoded for a URL path segment or query value (all but the unreserved
/// characters): how the console and the CLI put names into API paths.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long readiness waits for the database before calling it away.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness: 200 when the database answers within 2 s, else 503 naming what is wrong,
/// so a load balancer or an orchestrator sends no traffic to a replica that would fail
/// it. `/healthz` stays the liveness probe: a replica whose database is away is alive
/// and should not be restarted for it.
async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let database = match tokio::time::timeout(READY_WAIT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("database ({}): {e}", state.store.backend())),
        Err(_) => Err(format!("database ({}): no answer within {} s", state.store.backend(), READY_WAIT.as_secs())),
    };
    match database {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "unready", "reason": reason })),
            )
                .into_response()
        }
    }
}

/// Liveness and a one-line picture of what is loaded.
async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let plugins: Vec<_> = state.registry.list().into_iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
    Json(serde_json::json!({
        "status": "ok", "version": env!("CARGO_PKG_VERSION"), "database": state.store.backend(), "plugins": plugins,
    }))
}
