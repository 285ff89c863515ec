//! `drover serve`: bring the parts up in order and serve until told to stop.

//!
//! The composition root: it builds the core (`core.rs`) and each front on it (HTTP, MQTT,
//! CoAP, the wake-up sender), and is the only file that knows them all.

use crate::config::Config;
use crate::core::Core;
use crate::http::AppState;
use crate::mqtt::Gate;
use crate::mqtt::broker::EmbeddedBroker;
use crate::mqtt::delivery::{self, Endpoint, Job, Push};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

/// Everything a running server holds.
pub struct Server {
    pub state: AppState,
    pub listener: tokio::net::TcpListener,
    housekeeping: Housekeeping,
    mqtt: Mqtt,
    coap: crate::coap::Coap,
    http: crate::http::listener::Limits,
    /// TLS on the HTTP listener and the embedded broker (`None`: `--plaintext`).
    tls: Option<Arc<crate::tls::Tls>>,
    /// Proxies whose forwarded client certificates are believed.
    proxies: Arc<[ipnet::IpNet]>,
    /// How often this replica reads what others changed besides being told (`store/changes.rs`).
    follow: Duration,
}

/// The MQTT side: the embedded broker (unless an external one is used) and the endpoint
/// Drover's delivery client connects to.
struct Mqtt {
    embedded: Option<(EmbeddedBroker, tokio::net::TcpListener, Arc<Gate>)>,
    endpoint: Endpoint,
    push: Push,
    jobs: tokio::sync::mpsc::UnboundedReceiver<Job>,
    /// Publish the event log on the broker (`--mqtt-events`).
    feed: bool,
}

/// What the periodic sweep needs to know.
#[derive(Clone)]
struct Housekeeping {
    retention: Duration,
    event_retention: Duration,
    unreachable_after: Duration,
    /// How long an operation taken by a poll may go unanswered (`None`: for ever).
    answer_timeout: Option<Duration>,
    /// How long rollups are kept, per level (`writes::LEVELS`'s order).
    rollup_retention: [Duration; 2],
    /// The unauthenticated requests' buckets, swept every minute.
    throttle: std::sync::Arc<crate::http::throttle::Throttle>,
}

impl Server {
    /// Open the store, start the plugin runtime, install the first-party plugins, make
    /// sure an admin token exists, and bind the listeners. Returns once ready to serve.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        let mut core = Core::open(config).await?;
        let tls = crate::tls::Tls::load(
            &config.tls,
            &config.data_dir,
            &certificate_names(config),
            Some(core.device_ca.cert_der()),
        )?;
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on {} (--http-addr): choose another address", config.http_addr))?;
        if config.public_url.is_none() {
            let bound = listener.local_addr()?;
            if bound.ip().is_unspecified() {
                tracing::warn!(%bound, "no --public-url: download links name {bound}, which devices cannot reach; set --public-url");
            }
            core.public_url = format!("{}://{bound}", if tls.is_some() { "https" } else { "http" });
        }
        let (push, jobs) = Push::channel();
        let mqtt = match &config.broker {
            Some(url) => {
                let ca = config.broker_ca.as_deref();
                let mut tls_error = None;
                let endpoint =
                    Endpoint::parse(url, || crate::tls::broker_client(ca).map_err(|e| tls_error = Some(e)).ok());
                if let Some(e) = tls_error {
                    return Err(e);
                }
                let endpoint = endpoint.with_context(|| {
                    format!(
                        "--broker `{}`: expected mqtt://[user:password@]host:port or mqtts://…",
                        crate::secrets::redact_url(url)
                    )
                })?;
                Mqtt { embedded: None, endpoint, push, jobs, feed: config.mqtt_events }
            }
            None => {
                let listener = tokio::net::TcpListener::bind(config.mqtt_addr).await.with_context(|| {
                    format!(
                        "cannot listen for MQTT on {} (--mqtt-addr): another broker may hold it; choose another address, \
                         or use it with --broker {}://{}",
                        config.mqtt_addr,
                        if tls.is_some() { "mqtts" } else { "mqtt" },
                        config.mqtt_addr
                    )
                })?;
                let port = listener.local_addr()?.port();
                let (secret, _) = crate::auth::new_token("mqtt");
                let gate = Arc::new(Gate::new(core.store.clone(), secret.clone(), push.clone()));
                let endpoint = Endpoint {
                    host: "127.0.0.1".into(),
                    port,
                    credentials: Some((crate::mqtt::SERVICE_USER.into(), secret)),
                    // Drover's own clients speak TLS to its broker too, trusting exactly
                    // the certificate it serves.
                    tls: tls.as_ref().map(|t| t.self_client()),
                };
                Mqtt {
                    embedded: Some((EmbeddedBroker::start(config.mqtt_max_connections), listener, gate)),
                    endpoint,
                    push,
                    jobs,
                    feed: config.mqtt_events,
                }
            }
        };
        let coap = crate::coap::Coap::bind(crate::coap::Listen {
            plain: config.coap_addr,
            secure: Some(config.coaps_addr),
            nosec: config.coap_nosec,
            allow_address_change: config.coap_allow_address_change,
        })
        .await?;
        let throttle = std::sync::Arc::new(crate::http::throttle::Throttle::new(
            config.http.enroll_rate_per_sec,
            config.http.enroll_burst,
        ));
        let state = AppState {
            core,
            max_agent_body: crate::http::MAX_AGENT_BODY,
            body_timeout: config.http.body_timeout,
            throttle: throttle.clone(),
        };
        let housekeeping = Housekeeping {
            retention: Duration::from_secs(u64::from(config.retention_days) * crate::enrollment::DAY_SECS as u64),
            event_retention: Duration::from_secs(
                u64::from(config.event_retention_days) * crate::enrollment::DAY_SECS as u64,
            ),
            unreachable_after: Duration::from_secs(u64::from(config.unreachable_after_hours) * 3600),
            answer_timeout: config.answer_timeout,
            rollup_retention: [config.rollup_minute_retention_days, config.rollup_hour_retention_days]
                .map(|d| Duration::from_secs(u64::from(d) * crate::enrollment::DAY_SECS as u64)),
            throttle,
        };
        let proxies = config.trusted_proxies.clone().into();
        Ok(Server {
            state,
            listener,
            housekeeping,
            mqtt,
            coap,
            http: config.http,
            tls,
            proxies,
            follow: config.follow_interval,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the CoAP listener for LwM2M devices is bound.
    pub fn coap_addr(&self) -> Option<std::net::SocketAddr> {
        self.coap.local_addr().ok()
    }

    /// The CoAP over DTLS listener's address.
    pub fn coaps_addr(&self) -> Option<std::net::SocketAddr> {
        self.coap.secure_addr()
    }

    /// Where the embedded MQTT broker listens (`None` with an external broker).
    pub fn mqtt_addr(&self) -> Option<std::net::SocketAddr> {
        self.mqtt.embedded.as_ref().and_then(|(_, l, _)| l.local_addr().ok())
    }

    /// Serve until `shutdown` completes.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(
            addr = %self.listener.local_addr()?,
            database = self.state.store.backend(),
            tls = self.tls.is_some(),
            "HTTP listening"
        );
        if self.tls.is_none() {
            tracing::warn!("--plaintext: HTTP and MQTT serve without TLS; tokens cross the network in the clear");
        }
        let reload = self.tls.as_ref().and_then(|t| t.spawn_reload());
        let core = self.state.core.clone();
        // Every front that follows events subscribes here, before the first request is
        // taken, so none misses an event.
        let events = &core.events;
        let (broker_events, push_events, wakeup_events, coap_events, policy_events) =
            (events.subscribe(), events.subscribe(), events.subscribe(), events.subscribe(), events.subscribe());
        // Alert rules are in force from the first point taken.
        core.analytics.reload(&core).await;
        let analytics = crate::analytics::Analytics::spawn_refresh(core.clone());
        let sweeper = tokio::spawn(housekeeping(core.clone(), self.housekeeping));
        let catalog = core.catalog.spawn_watch(self.follow);
        let listening = core.store.listen();
        let Mqtt { embedded, endpoint, push, jobs, feed } = self.mqtt;
        // On an external broker every replica hears some devices' presence and may push to
        // any device: presence is kept in the database (`mqtt/delivery.rs`).
        let presence =
            if embedded.is_some() { delivery::PresenceKept::InProcess } else { delivery::PresenceKept::Shared };
        let feed = feed.then(|| tokio::spawn(crate::mqtt::feed::run(core.clone(), endpoint.clone())));
        let broker = embedded.map(|(broker, listener, gate)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, tls = self.tls.is_some(), "MQTT broker listening");
            }
            tokio::spawn(broker.serve(listener, gate, broker_events, self.tls.clone()))
        });
        let delivery = tokio::spawn(delivery::run(core.clone(), endpoint, presence, push, jobs, push_events));
        let wakeups = tokio::spawn(crate::wakeup::run(core.clone(), wakeup_events));
        let settings = tokio::spawn(crate::plugin_settings::follow(core.clone(), self.follow));
        let coap = tokio::spawn(self.coap.run(core.clone(), coap_events));
        let webhooks = tokio::spawn(crate::webhooks::run(core.clone(), core.webhooks.clone()));
        let policies = tokio::spawn(crate::policies::follow(core.clone(), policy_events));
        let compliance = tokio::spawn(crate::policies::evaluate_compliance(core.clone()));
        let holder = crate::rollouts::holder();
        let rollouts = tokio::spawn(crate::rollouts::run(core.clone(), holder.clone()));
        let result = crate::http::listener::serve(
            self.listener,
            crate::http::router(self.state),
            self.http,
            self.tls,
            self.proxies,
            shutdown,
        )
        .await;
        if let Some(r) = reload {
            r.abort();
        }
        sweeper.abort();
        analytics.abort();
        catalog.abort();
        if let Some(l) = listening {
            l.abort();
        }
        delivery.abort();
        wakeups.abort();
        settings.abort();
        coap.abort();
        webhooks.abort();
        policies.abort();
        compliance.abort();
        rollouts.abort();
        // Another replica takes this one's rollouts at once instead of after the lease.
        let _ = core.store.release_rollouts(&holder).await;
        if let Some(b) = broker {
            b.abort();
        }
        if let Some(f) = feed {
            f.abort();
        }
        Ok(result?)
    }
}

/// The names a development certificate must be valid for besides loopback: the public
/// URL's host and the listeners' addresses when they are neither loopback nor wildcard.
fn certificate_names(config: &Config) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(url) = &config.public_url
        && let Ok(u) = reqwest::Url::parse(url)
        && let Some(host) = u.host_str()
    {
        names.push(host.trim_start_matches('[').trim_end_matches(']').to_string());
    }
    for addr in [config.http_addr, config.mqtt_addr] {
        let ip = addr.ip();
        if !ip.is_loopback() && !ip.is_unspecified() && !names.contains(&ip.to_string()) {
            names.push(ip.to_string());
        }
    }
    names
}

/// Mark devices not seen for `after` unreachable (the housekeeping's minute step), after
/// counting those connected to this process's MQTT broker as seen now: a device that holds
/// its session and says nothing is reachable (the broker checks its keepalive, and a push
/// reaches it). On an external broker the stored presence does the same in the store's
/// rule. Returns how many were marked.
pub async fn sweep_unreachable(core: &Core, now: i64, after: Duration) -> Result<u64, crate::store::StoreError> {
    let connected: Vec<(String, String)> =
        core.stats.online_devices.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
    if !connected.is_empty() {
        // Written at most about twice per `after` for a silent device.
        let stale = now - (after.as_millis() / 2) as i64;
        core.store.touch_connected(&connected, now, stale).await?;
    }
    core.store.mark_unreachable(now - after.as_millis() as i64).await
}

/// Expire operations past their TTL even for devices that never call in again, put
/// operations a poll took and no answer followed back in the queue (both every 10 s), mark devices unreachable (every minute), and delete finished operations older
/// than the retention and events older than theirs (hourly), so the tables cannot grow
/// without bound.
async fn housekeeping(core: Core, config: Housekeeping) {
    let store = &core.store;
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
        if let Some(timeout) = config.answer_timeout {
            let cutoff = now - timeout.as_millis() as i64;
            for actor in [crate::delivery::POLL_ACTOR, crate::delivery::COAP_ACTOR] {
                match store.requeue_unanswered(actor, cutoff).await {
                    Ok((0, 0)) => {}
                    Ok((requeued, ended)) => {
                        tracing::info!(requeued, ended, actor, "operations handed out and never answered")
                    }
                    Err(e) => tracing::warn!("requeueing unanswered operations failed: {e}"),
                }
            }
        }
        if n.is_multiple_of(6) {
            config.throttle.sweep();
            match sweep_unreachable(&core, now, config.unreachable_after).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(devices = n, "devices not seen recently marked unreachable"),
                Err(e) => tracing::warn!("marking unreachable devices failed: {e}"),
            }
        }
        if n.is_multiple_of(360) {
            // A CoAP answer is not awaited for more than a day (its operation went back to
            // the queue long before); observations stay until cancelled or re-registered.
            match store.sweep_coap_exchanges(now - crate::enrollment::DAY_SECS * 1000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(swept = n, "stored CoAP requests never answered"),
                Err(e) => tracing::warn!("sweeping stored CoAP requests failed: {e}"),
            }
            match store.sweep_pending_certificates().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(swept = n, "pending certificates never claimed"),
                Err(e) => tracing::warn!("sweeping pending certificates failed: {e}"),
            }
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
            for ((level, _), keep) in crate::store::ROLLUP_LEVELS.iter().zip(config.rollup_retention) {
                match store.purge_rollups(level, now - keep.as_millis() as i64).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, level, "telemetry rollups past retention deleted"),
                    Err(e) => tracing::warn!("rollup retention purge failed: {e}"),
                }
            }
            match store.prune_deliveries(now - config.event_retention.as_millis() as i64).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "webhook delivery records past the event retention deleted"),
                Err(e) => tracing::warn!("webhook delivery purge failed: {e}"),
            }
            match store.prune_compliance_history(now - config.event_retention.as_millis() as i64).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "compliance changes past the event retention deleted"),
                Err(e) => tracing::warn!("compliance history purge failed: {e}"),
            }
            match store.prune_events(now - config.event_retention.as_millis() as i64).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "events past their retention deleted"),
                Err(e) => tracing::warn!("event retention purge failed: {e}"),
            }
        }
        n += 1;
    }
}
