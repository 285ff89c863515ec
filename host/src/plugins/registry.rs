//! The registry of loaded plugins: what is serving now, by name.
//!
//! Publishing swaps an `Arc` under a short write lock; a call clones the `Arc` of the
//! version current when it starts and finishes on it even if a newer version is published
//! meanwhile. The previous version is kept for rollback.

use super::capability::{Capability, Grants};
use super::manifest::Kind;
use super::runtime::{LoadError, LoadOptions, LoadedPlugin, Runtime, StatsSnapshot};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::UNIX_EPOCH;

struct Slot {
    current: Arc<LoadedPlugin>,
    previous: Option<Arc<LoadedPlugin>>,
}

pub struct Registry {
    runtime: Arc<Runtime>,
    slots: RwLock<BTreeMap<String, Slot>>,
}

/// A loaded plugin as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginSummary {
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub publisher: String,
    pub description: String,
    pub sha256: String,
    pub size: usize,
    pub state: &'static str,
    pub loaded_at_unix_ms: u64,
    pub capabilities_requested: Vec<Capability>,
    pub capabilities_granted: Vec<Capability>,
    pub imports: Vec<String>,
    pub load: super::runtime::LoadFigures,
    pub stats: StatsSnapshot,
    pub previous_version: Option<String>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>) -> Registry {
        Registry { runtime, slots: RwLock::new(BTreeMap::new()) }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Load `bytes` and, if it loads, publish it as the current version of its name.
    pub async fn install(&self, bytes: &[u8], options: LoadOptions) -> Result<Arc<LoadedPlugin>, LoadError> {
        let plugin = Arc::new(self.runtime.load(bytes, options).await?);
        self.publish(plugin.clone());
        tracing::info!(
            plugin = %plugin.manifest.name, version = %plugin.manifest.version, kind = %plugin.manifest.kind,
            sha256 = %plugin.sha256, cache = ?plugin.load.cache, load_ms = plugin.load.total_micros as f64 / 1e3,
            "plugin loaded"
        );
        Ok(plugin)
    }

    /// Make `plugin` the current version of its name.
    pub fn publish(&self, plugin: Arc<LoadedPlugin>) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let name = plugin.manifest.name.clone();
        let previous = slots.remove(&name).map(|s| s.current);
        slots.insert(name, Slot { current: plugin, previous });
    }

    /// The current version of plugin `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).get(name).map(|s| s.current.clone())
    }

    /// The current device-type plugin for device type `name`.
    pub fn device_type(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.get(name).filter(|p| p.kind() == Kind::DeviceType)
    }

    /// Install the first-party plugins embedded in the binary, granting what each asks
    /// for except filesystem and network access, which no first-party plugin needs.
    pub async fn install_first_party(&self) -> Result<(), LoadError> {
        for (name, bytes) in super::first_party::PLUGINS {
            let manifest = super::manifest::Manifest::from_component(bytes)
                .map_err(|e| LoadError { label: name.to_string(), reason: e.into() })?;
            let grants: Grants = manifest
                .capabilities
                .iter()
                .copied()
                .filter(|c| !matches!(c, Capability::Filesystem | Capability::Network))
                .collect();
            self.install(bytes, LoadOptions { grants, ..Default::default() }).await?;
        }
        Ok(())
    }

    pub fn list(&self) -> Vec<PluginSummary> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .map(|s| {
                let p = &s.current;
                PluginSummary {
                    name: p.manifest.name.clone(),
                    version: p.manifest.version.clone(),
                    kind: p.manifest.kind,
                    publisher: p.manifest.publisher.clone(),
                    description: p.manifest.description.clone(),
                    sha256: p.sha256.clone(),
                    size: p.size,
                    state: "active",
                    loaded_at_unix_ms: p.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                    capabilities_requested: p.manifest.capabilities.clone(),
                    capabilities_granted: p.granted.iter().copied().collect(),
                    imports: p.imports.clone(),
                    load: p.load.clone(),
                    stats: p.stats(),
                    previous_version: s.previous.as_ref().map(|p| p.manifest.version.clone()),
                }
            })
            .collect()
    }
}
