//! `drover serve`: bring the parts up in order and serve until told to stop.

use crate::config::Config;
use crate::plugins::{Limits, Registry, Runtime};
use anyhow::Context;
use axum::{Json, Router, extract::State, routing::get};
use std::sync::Arc;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
}

/// Everything a running server holds.
pub struct Server {
    pub state: AppState,
    pub listener: tokio::net::TcpListener,
}

impl Server {
    /// Start the plugin runtime, install the first-party plugins and bind the listeners.
    /// Returns once everything is ready to serve.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {} (--data-dir)", config.data_dir.display()))?;
        let runtime = Runtime::new(Limits::default(), Some(config.data_dir.join("cache").join("compiled")))?;
        let registry = Arc::new(Registry::new(Arc::new(runtime)));
        registry.install_first_party().await?;
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on {} (--http-addr): choose another address", config.http_addr))?;
        Ok(Server { state: AppState { registry }, listener })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` completes.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "HTTP listening");
        axum::serve(self.listener, router(self.state)).with_graceful_shutdown(shutdown).await?;
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    Router::new().route("/healthz", get(healthz)).with_state(state)
}

/// Liveness and a one-line picture of what is loaded.
async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let plugins: Vec<_> = state.registry.list().into_iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
    Json(serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "plugins": plugins }))
}
