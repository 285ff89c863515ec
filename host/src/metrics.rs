//! `GET /metrics`: Prometheus (OpenMetrics) text for scrapers, behind a viewer token
//! (Prometheus sends one with `authorization: {credentials: …}`).
//!
//! Per loaded plugin version (`plugin`, `version` labels): calls, faults by kind,
//! limit hits, a call-duration histogram, whether it serves and whether its plugin is
//! suspended. Counted by the runtime as it calls (`runtime::Stats`); read at scrape
//! time by a collector, so nothing is registered or unregistered as versions come and go.

use crate::api::ApiError;
use crate::auth::{Admin, Role};
use crate::plugins::{LoadedPlugin, Registry};
use crate::server::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(State(state): State<AppState>, admin: Admin) -> Result<impl IntoResponse, ApiError> {
    admin.require(Role::Viewer)?;
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Plugins(state.registry.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}

struct Plugins(Arc<Registry>);

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plugins")
    }
}

/// One loaded version and where it stands.
struct Version {
    plugin: Arc<LoadedPlugin>,
    serving: bool,
    suspended: bool,
}

type Counter = (&'static str, &'static str, fn(&crate::plugins::runtime::Stats) -> &AtomicU64);

const COUNTERS: &[Counter] = &[
    ("drover_plugin_calls", "Calls into the plugin version", |s| &s.calls),
    ("drover_plugin_faults", "Calls that faulted (any kind below)", |s| &s.faults),
    ("drover_plugin_traps", "Calls that trapped (panic, unreachable …)", |s| &s.traps),
    ("drover_plugin_cpu_limit_hits", "Calls stopped at the CPU-time limit", |s| &s.cpu_limit_hits),
    ("drover_plugin_memory_limit_hits", "Calls stopped at the memory limit", |s| &s.memory_limit_hits),
    ("drover_plugin_wall_limit_hits", "Calls stopped at the wall-clock limit", |s| &s.wall_limit_hits),
    ("drover_plugin_output_limit_hits", "Calls whose answer was over the output limit", |s| &s.output_limit_hits),
];

impl Collector for Plugins {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut versions = Vec::new();
        for name in self.0.names() {
            let (loaded, suspended) = self.0.versions(&name);
            let n = loaded.len();
            for (i, plugin) in loaded.into_iter().enumerate() {
                versions.push(Version { plugin, serving: i + 1 == n, suspended: suspended.is_some() });
            }
        }
        let labels =
            |v: &Version| [("plugin", v.plugin.manifest.name.clone()), ("version", v.plugin.manifest.version.clone())];
        for (name, help, field) in COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for v in &versions {
                let value = field(&v.plugin.caller.stats).load(Relaxed);
                ConstCounter::new(value).encode(family.encode_family(&labels(v))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "drover_plugin_call_duration",
            "Duration of calls into the plugin version",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for v in &versions {
            v.plugin.caller.stats.latency.encode(family.encode_family(&labels(v))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "drover_plugin_serving",
            "1 for the version that serves its plugin name, 0 for earlier versions kept for rollback",
            None,
            MetricType::Gauge,
        )?;
        for v in &versions {
            ConstGauge::new(i64::from(v.serving)).encode(family.encode_family(&labels(v))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "drover_plugin_suspended",
            "1 when the plugin is suspended (by the breaker or an admin)",
            None,
            MetricType::Gauge,
        )?;
        for v in versions.iter().filter(|v| v.serving) {
            ConstGauge::new(i64::from(v.suspended)).encode(family.encode_family(&labels(v))?)?;
        }
        Ok(())
    }
}
