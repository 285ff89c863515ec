//! `drover serve`: bring the parts up in order and serve until told to stop.

use crate::config::Config;
use crate::plugins::{Limits, Registry, Runtime};
use crate::store::Store;
use anyhow::Context;
use axum::{Json, Router, extract::State, routing::get};
use std::sync::Arc;
use std::time::Duration;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub store: Store,
    /// Devices may enroll themselves (`POST /agent/v1/{type}/enroll`).
    pub open_enrollment: bool,
    /// Largest device message body accepted.
    pub max_agent_body: usize,
}

/// Everything a running server holds.
pub struct Server {
    pub state: AppState,
    pub listener: tokio::net::TcpListener,
    retention: Duration,
}

impl Server {
    /// Open the store, start the plugin runtime, install the first-party plugins, make
    /// sure an admin token exists, and bind the listeners. Returns once ready to serve.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {} (--data-dir)", config.data_dir.display()))?;
        let store = Store::connect(&config.database_url)
            .await
            .with_context(|| format!("cannot open the database (--database-url {})", redact(&config.database_url)))?;
        crate::auth::bootstrap_admin(&store, &config.data_dir, config.admin_token.clone()).await?;
        let runtime = Runtime::new(Limits::default(), Some(config.data_dir.join("cache").join("compiled")))?;
        let registry = Arc::new(Registry::new(Arc::new(runtime)));
        registry.install_first_party().await?;
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on {} (--http-addr): choose another address", config.http_addr))?;
        let state = AppState { registry, store, open_enrollment: config.open_enrollment, max_agent_body: 4 << 20 };
        let retention = Duration::from_secs(u64::from(config.retention_days) * 86_400);
        Ok(Server { state, listener, retention })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` completes.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, database = self.state.store.backend(), "HTTP listening");
        let sweeper = tokio::spawn(housekeeping(self.state.store.clone(), self.retention));
        let result = axum::serve(self.listener, router(self.state)).with_graceful_shutdown(shutdown).await;
        sweeper.abort();
        Ok(result?)
    }
}

/// Expire operations past their TTL even for devices that never call in again (every
/// 10 s), and delete finished operations older than the retention (hourly), so the
/// tables cannot grow without bound.
async fn housekeeping(store: Store, retention: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let now = crate::store::now_ms();
        match store.expire(None, now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "operations expired"),
            Err(e) => tracing::warn!("expiring operations failed: {e}"),
        }
        if n.is_multiple_of(360) {
            match store.purge_finished(now - retention.as_millis() as i64).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "finished operations past retention deleted"),
                Err(e) => tracing::warn!("retention purge failed: {e}"),
            }
        }
        n += 1;
    }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::api::router())
        .merge(crate::agent::router())
        .with_state(state)
}

/// Liveness and a one-line picture of what is loaded.
async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let plugins: Vec<_> = state.registry.list().into_iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
    Json(serde_json::json!({
        "status": "ok", "version": env!("CARGO_PKG_VERSION"), "database": state.store.backend(), "plugins": plugins,
    }))
}
