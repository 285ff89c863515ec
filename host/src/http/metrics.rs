//! `GET /metrics`: Prometheus (OpenMetrics) text for scrapers, behind a viewer token
//! (Prometheus sends one with `authorization: {credentials: …}`).
//!
//! Per loaded plugin version (`plugin`, `version` labels): calls, faults by kind,
//! limit hits, a call-duration histogram, whether it serves and whether its plugin is
//! suspended. Counted by the runtime as it calls (`runtime::Stats`); read at scrape
//! time by a collector, so nothing is registered or unregistered as versions come and go.
//!
//! Delivery (`stats::DeliveryStats`, counted since the process started): device messages
//! received and refused and operations sent, by channel; wake-up attempts by transport
//! and outcome; devices online for push.
//!
//! Rollouts (read from the database at scrape time): rollouts by state, and the devices
//! of each rollout not yet over by state (`rollout`, `state` labels).
//!
//! A tenant's viewer scrapes its tenant's own figures (docs/security.md, "Tenants"): its
//! devices by type and status, those seen in the last 15 minutes, its devices' operations
//! by state, and its rollouts, all read from the database at scrape time. The plugin and
//! delivery counters are the whole server's, counted in the process without a tenant,
//! and are not served to it.

use super::{ApiError, AppState, TenantViewer};
use crate::plugins::{LoadedPlugin, Registry};
use crate::stats::{CHANNELS, DeliveryStats};
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

#[derive(Debug)]
struct Delivery(Arc<DeliveryStats>);

impl Collector for Delivery {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let by_channel: [(&str, &str, [u64; 3]); 3] = [
            (
                "drover_device_messages",
                "Device messages received (polls, MQTT messages, CoAP requests)",
                self.0.messages_by_channel(),
            ),
            (
                "drover_device_messages_refused",
                "Device messages refused: undecodable, over a limit, or sent faster than served",
                self.0.refused_by_channel(),
            ),
            ("drover_operations_sent", "Operations handed to devices (marked IN_PROGRESS)", self.0.sent_by_channel()),
        ];
        for (name, help, counts) in by_channel {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (channel, count) in CHANNELS.iter().zip(counts) {
                ConstCounter::new(count).encode(family.encode_family(&[("channel", *channel)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "drover_wakeup_attempts",
            "Wake-up attempts by transport and outcome (sent, retry, invalid_token, failed)",
            None,
            MetricType::Counter,
        )?;
        let wakeups = self.0.wakeups();
        for ((transport, outcome), n) in wakeups {
            ConstCounter::new(n)
                .encode(family.encode_family(&[("transport", transport.as_str()), ("outcome", outcome)])?)?;
        }
        let family = encoder.encode_descriptor(
            "drover_push_online_devices",
            "Devices online for push over MQTT now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.online.load(Relaxed)).encode(family)?;
        Ok(())
    }
}

/// Rollouts by state, and the devices of live ones by state, as read at scrape time.
#[derive(Debug)]
struct Rollouts {
    by_state: std::collections::BTreeMap<String, i64>,
    devices: Vec<(String, String, i64)>,
}

impl Rollouts {
    /// Every rollout, or `tenant`'s only.
    async fn read(state: &AppState, tenant: Option<&str>) -> Result<Rollouts, ApiError> {
        let mut by_state = std::collections::BTreeMap::new();
        let mut devices = Vec::new();
        let rows = state.store.rollouts().await?;
        for r in rows.into_iter().filter(|r| tenant.is_none() || r.tenant.as_deref() == tenant) {
            *by_state.entry(r.state.clone()).or_default() += 1;
            if r.done_at.is_none() {
                let mut totals: std::collections::BTreeMap<String, i64> = Default::default();
                for (_, s, n) in state.store.rollout_counts(r.id).await? {
                    *totals.entry(s).or_default() += n;
                }
                devices.extend(totals.into_iter().map(|(s, n)| (r.name.clone(), s, n)));
            }
        }
        Ok(Rollouts { by_state, devices })
    }
}

impl Collector for Rollouts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor("drover_rollouts", "Rollouts by state", None, MetricType::Gauge)?;
        for (s, n) in &self.by_state {
            ConstGauge::new(*n).encode(family.encode_family(&[("state", s.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "drover_rollout_devices",
            "Devices of each rollout not yet over, by state (waiting, pending, downloading, succeeded, failed …)",
            None,
            MetricType::Gauge,
        )?;
        for (rollout, s, n) in &self.devices {
            ConstGauge::new(*n)
                .encode(family.encode_family(&[("rollout", rollout.as_str()), ("state", s.as_str())])?)?;
        }
        Ok(())
    }
}

/// A tenant's fleet as read at scrape time (`Store::fleet_counts`).
#[derive(Debug)]
struct Fleet(crate::store::FleetCounts);

impl Collector for Fleet {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family =
            encoder.encode_descriptor("drover_devices", "Devices by type and status", None, MetricType::Gauge)?;
        for d in &self.0.devices {
            ConstGauge::new(d.count).encode(
                family.encode_family(&[("device_type", d.device_type.as_str()), ("status", d.status.as_str())])?,
            )?;
        }
        let family = encoder.encode_descriptor(
            "drover_devices_seen_15m",
            "Devices that called in within the last 15 minutes",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.seen_last_15_min).encode(family)?;
        let mut family =
            encoder.encode_descriptor("drover_operations", "Operations by state", None, MetricType::Gauge)?;
        for o in &self.0.operations {
            ConstGauge::new(o.count).encode(family.encode_family(&[("state", o.state.as_str())])?)?;
        }
        Ok(())
    }
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(
    State(state): State<AppState>,
    TenantViewer(admin): TenantViewer,
) -> Result<impl IntoResponse, ApiError> {
    let mut registry = prometheus_client::registry::Registry::default();
    match admin.tenant.as_deref() {
        None => {
            registry.register_collector(Box::new(Plugins(state.registry.clone())));
            registry.register_collector(Box::new(Delivery(state.stats.clone())));
        }
        Some(t) => registry.register_collector(Box::new(Fleet(state.store.fleet_counts(Some(t)).await?))),
    }
    registry.register_collector(Box::new(Rollouts::read(&state, admin.tenant.as_deref()).await?));
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
    ("drover_plugin_charged_faults", "Faults on input from devices and admins: what the breaker judges", |s| {
        &s.charged_faults
    }),
    ("drover_plugin_busy", "Calls refused without running: every instance slot in use", |s| &s.busy),
    ("drover_plugin_held", "Calls refused without running: their sender is held for earlier faults", |s| &s.held),
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
