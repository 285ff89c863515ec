//! `drover serve`: bring the parts up in order and serve until told to stop.

use crate::config::Config;
use crate::mqtt::Gate;
use crate::mqtt::broker::EmbeddedBroker;
use crate::mqtt::delivery::{self, Endpoint, Job, Push};
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
    /// Largest device message body accepted (from an authenticated device).
    pub max_agent_body: usize,
    /// How long a handler waits for a request body.
    pub body_timeout: Duration,
    /// Push over MQTT (absent only in tests that build a state by hand).
    pub push: Option<Push>,
    /// Wake-ups through transport plugins.
    pub wakeup: crate::wakeup::WakeUp,
    /// What admins set for plugins: config values, granted hosts, redirects.
    pub settings: Arc<crate::wakeup::Settings>,
    /// Uploads, rollback, grants and the breaker, kept in the database.
    pub catalog: Arc<crate::plugins::catalog::Catalog>,
    /// CoAP for LwM2M devices (absent only in tests that build a state by hand).
    pub coap: Option<crate::coap::Coap>,
    /// Delivery counts for `/metrics`.
    pub stats: Arc<crate::metrics::DeliveryStats>,
    /// Domain events, for the fronts that react to them.
    pub events: crate::events::Events,
}

/// Everything a running server holds.
pub struct Server {
    pub state: AppState,
    pub listener: tokio::net::TcpListener,
    housekeeping: Housekeeping,
    mqtt: Mqtt,
    http: crate::http_listener::Limits,
}

/// The MQTT side: the embedded broker (unless an external one is used) and the endpoint
/// Drover's delivery client connects to.
struct Mqtt {
    embedded: Option<(EmbeddedBroker, tokio::net::TcpListener, Arc<Gate>)>,
    endpoint: Endpoint,
    jobs: tokio::sync::mpsc::UnboundedReceiver<Job>,
}

/// How often a replica looks for plugin changes made by others and at plugin faults.
const CATALOG_TICK: Duration = Duration::from_secs(1);

/// What the periodic sweep needs to know.
#[derive(Clone, Copy)]
struct Housekeeping {
    retention: Duration,
    unreachable_after: Duration,
}

impl Server {
    /// Open the store, start the plugin runtime, install the first-party plugins, make
    /// sure an admin token exists, and bind the listeners. Returns once ready to serve.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        crate::files::private_dir(&config.data_dir)
            .with_context(|| format!("cannot create data directory {} (--data-dir)", config.data_dir.display()))?;
        let sealer = crate::secrets::Sealer::load(
            config.secret_key.as_deref(),
            &config.secret_key_file,
            config.previous_secret_key_file.as_deref(),
        )?;
        let store = Store::connect(&config.database_url)
            .await
            .with_context(|| {
                format!(
                    "cannot open the database (--database-url {})",
                    crate::secrets::redact_url(&config.database_url)
                )
            })?
            .with_sealer(sealer);
        crate::files::private_sqlite(&config.database_url)
            .context("cannot restrict the database files to mode 0600")?;
        match store.reseal_secrets().await.context("cannot seal the secrets stored in the database")? {
            0 => {}
            n => tracing::info!(plugins = n, "secrets in the database sealed with the current key"),
        }
        crate::auth::bootstrap_admin(&store, &config.data_dir, config.admin_token.clone()).await?;
        let runtime = Runtime::new(Limits::default(), Some(config.data_dir.join("cache").join("compiled")))?
            .with_hold_policy(config.hold_policy);
        let registry = Arc::new(Registry::new(Arc::new(runtime)));
        let catalog = crate::plugins::catalog::Catalog::open(store.clone(), registry.clone(), config.fault_policy)
            .await
            .context("cannot load the plugin catalog")?;
        let settings = Arc::new(crate::wakeup::Settings::default());
        for row in store.plugin_settings().await? {
            let s = crate::wakeup::PluginSettings::from_row(&row);
            registry.runtime().set_config(&row.plugin, s.config.clone());
            settings.set(&row.plugin, s);
        }
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on {} (--http-addr): choose another address", config.http_addr))?;
        let (push, jobs) = Push::channel();
        let events = crate::events::Events::default();
        let mqtt = match &config.broker {
            Some(url) => {
                let endpoint = Endpoint::parse(url).with_context(|| {
                    format!("--broker `{}`: expected mqtt://[user:password@]host:port", crate::secrets::redact_url(url))
                })?;
                Mqtt { embedded: None, endpoint, jobs }
            }
            None => {
                let listener = tokio::net::TcpListener::bind(config.mqtt_addr).await.with_context(|| {
                    format!(
                        "cannot listen for MQTT on {} (--mqtt-addr): another broker may hold it; choose another address, \
                         or use it with --broker mqtt://{}",
                        config.mqtt_addr, config.mqtt_addr
                    )
                })?;
                let port = listener.local_addr()?.port();
                let (secret, _) = crate::auth::new_token("mqtt");
                let gate = Arc::new(Gate::new(store.clone(), secret.clone(), push.clone()));
                let endpoint = Endpoint {
                    host: "127.0.0.1".into(),
                    port,
                    credentials: Some((crate::mqtt::SERVICE_USER.into(), secret)),
                };
                Mqtt {
                    embedded: Some((EmbeddedBroker::start(config.mqtt_max_connections), listener, gate)),
                    endpoint,
                    jobs,
                }
            }
        };
        let coap = crate::coap::Coap::bind(config.coap_addr, config.coap_allow_address_change).await?;
        let state = AppState {
            registry,
            store,
            open_enrollment: config.open_enrollment,
            max_agent_body: 4 << 20,
            body_timeout: config.http.body_timeout,
            push: Some(push),
            wakeup: crate::wakeup::WakeUp::default(),
            settings,
            catalog,
            coap: Some(coap),
            stats: Arc::default(),
            events,
        };
        let housekeeping = Housekeeping {
            retention: Duration::from_secs(u64::from(config.retention_days) * 86_400),
            unreachable_after: Duration::from_secs(u64::from(config.unreachable_after_hours) * 3600),
        };
        Ok(Server { state, listener, housekeeping, mqtt, http: config.http })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the CoAP listener for LwM2M devices is bound.
    pub fn coap_addr(&self) -> Option<std::net::SocketAddr> {
        self.state.coap.as_ref().and_then(|c| c.local_addr().ok())
    }

    /// Where the embedded MQTT broker listens (`None` with an external broker).
    pub fn mqtt_addr(&self) -> Option<std::net::SocketAddr> {
        self.mqtt.embedded.as_ref().and_then(|(_, l, _)| l.local_addr().ok())
    }

    /// Serve until `shutdown` completes.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, database = self.state.store.backend(), "HTTP listening");
        let sweeper = tokio::spawn(housekeeping(self.state.store.clone(), self.housekeeping));
        let catalog = self.state.catalog.spawn_watch(CATALOG_TICK);
        let Mqtt { embedded, endpoint, jobs } = self.mqtt;
        let broker = embedded.map(|(broker, listener, gate)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "MQTT broker listening");
            }
            tokio::spawn(broker.serve(listener, gate, self.state.events.subscribe()))
        });
        let delivery = tokio::spawn(delivery::run(self.state.clone(), endpoint, jobs));
        let wakeups = tokio::spawn(crate::wakeup::run(self.state.clone(), self.state.wakeup.clone()));
        let settings = tokio::spawn(crate::wakeup::follow_settings(self.state.clone(), CATALOG_TICK));
        let coap = self.state.coap.clone().map(|c| tokio::spawn(c.run(self.state.clone())));
        let result = crate::http_listener::serve(self.listener, router(self.state), self.http, shutdown).await;
        sweeper.abort();
        catalog.abort();
        delivery.abort();
        wakeups.abort();
        settings.abort();
        if let Some(c) = coap {
            c.abort();
        }
        if let Some(b) = broker {
            b.abort();
        }
        Ok(result?)
    }
}

/// Expire operations past their TTL even for devices that never call in again (every
/// 10 s), mark devices unreachable (every minute), and delete finished operations older
/// than the retention (hourly), so the tables cannot grow without bound.
async fn housekeeping(store: Store, config: Housekeeping) {
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
        if n.is_multiple_of(6) {
            match store.mark_unreachable(now - config.unreachable_after.as_millis() as i64).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(devices = n, "devices not seen recently marked unreachable"),
                Err(e) => tracing::warn!("marking unreachable devices failed: {e}"),
            }
        }
        if n.is_multiple_of(360) {
            match store.purge_finished(now - config.retention.as_millis() as i64).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "finished operations past retention deleted"),
                Err(e) => tracing::warn!("retention purge failed: {e}"),
            }
            match store.purge_telemetry(now - config.retention.as_millis() as i64).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "telemetry past retention deleted"),
                Err(e) => tracing::warn!("telemetry retention purge failed: {e}"),
            }
        }
        n += 1;
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::metrics))
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
