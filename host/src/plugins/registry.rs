//! The registry of loaded plugins: what is serving now, by name.
//!
//! The catalog (`catalog.rs`) decides what each name serves and sets it here: swapping
//! the stack of versions takes a short write lock; a call clones the `Arc` of the version
//! current when it starts and finishes on it even if a newer version is published
//! meanwhile. Earlier versions stay loaded for rollback.

use super::capability::{Capability, Grants};
use super::manifest::Kind;
use super::runtime::{LoadedPlugin, Runtime, StatsSnapshot};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::UNIX_EPOCH;

/// The versions of one plugin name that are loaded, side by side.
struct Slot {
    /// Oldest first; the last serves. Rollback pops back to the one before.
    versions: Vec<Arc<LoadedPlugin>>,
    /// Why it was suspended (by the breaker or an admin): calls are refused, devices'
    /// operations stay queued.
    suspended: Option<String>,
}

/// How many versions of a name stay loaded for instant rollback.
pub const MAX_VERSIONS: usize = 5;

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
    /// `active`, or `suspended` (see `suspended_reason`).
    pub state: &'static str,
    pub suspended_reason: Option<String>,
    pub loaded_at_unix_ms: u64,
    pub capabilities_requested: Vec<Capability>,
    pub capabilities_granted: Vec<Capability>,
    pub imports: Vec<String>,
    pub load: super::runtime::LoadFigures,
    pub stats: StatsSnapshot,
    /// The version a rollback returns to.
    pub previous_version: Option<String>,
    /// Every loaded version, oldest first (the last serves).
    pub loaded_versions: Vec<String>,
    /// The tenant whose plugin it is; absent: shared (first-party, or the operators').
    /// The registry does not know; the API fills it in from the catalog.
    pub tenant: Option<String>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>) -> Registry {
        Registry { runtime, slots: RwLock::new(BTreeMap::new()) }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Replace everything loaded for `name` (oldest first) and its suspension: how the
    /// catalog makes this replica match the event log.
    pub fn set(&self, name: &str, versions: Vec<Arc<LoadedPlugin>>, suspended: Option<String>) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if versions.is_empty() {
            slots.remove(name);
        } else {
            slots.insert(name.to_string(), Slot { versions, suspended });
        }
    }

    /// Every loaded version of `name`, oldest first, and its suspension.
    pub fn versions(&self, name: &str) -> (Vec<Arc<LoadedPlugin>>, Option<String>) {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(name).map_or((Vec::new(), None), |s| (s.versions.clone(), s.suspended.clone()))
    }

    /// The current version of plugin `name`, suspended or not (for admins).
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).get(name).and_then(|s| s.versions.last().cloned())
    }

    /// The current version of plugin `name` if it may be called (not suspended).
    pub fn serving(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(name).filter(|s| s.suspended.is_none()).and_then(|s| s.versions.last().cloned())
    }

    /// Why plugin `name` is suspended, if it is.
    pub fn suspension(&self, name: &str) -> Option<String> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).get(name).and_then(|s| s.suspended.clone())
    }

    /// The serving device-type plugin for device type `name`.
    pub fn device_type(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.serving(name).filter(|p| p.kind() == Kind::DeviceType)
    }

    pub fn names(&self) -> Vec<String> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Every plugin name's current version.
    pub fn list(&self) -> Vec<PluginSummary> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .filter_map(|s| {
                let p = s.versions.last()?;
                Some(PluginSummary {
                    name: p.manifest.name.clone(),
                    version: p.manifest.version.clone(),
                    kind: p.manifest.kind,
                    publisher: p.manifest.publisher.clone(),
                    description: p.manifest.description.clone(),
                    sha256: p.sha256.clone(),
                    size: p.size,
                    state: if s.suspended.is_some() { "suspended" } else { "active" },
                    suspended_reason: s.suspended.clone(),
                    loaded_at_unix_ms: p.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                    capabilities_requested: p.manifest.capabilities.clone(),
                    capabilities_granted: p.granted.iter().copied().collect(),
                    imports: p.imports.clone(),
                    load: p.load.clone(),
                    stats: p.stats(),
                    previous_version: s.versions.iter().rev().nth(1).map(|p| p.manifest.version.clone()),
                    loaded_versions: s.versions.iter().map(|p| p.manifest.version.clone()).collect(),
                    tenant: None,
                })
            })
            .collect()
    }
}

/// What a first-party plugin is granted unless an admin says otherwise: what it asks
/// for, except filesystem and network access, which no first-party plugin needs.
pub fn first_party_grants(manifest: &super::manifest::Manifest) -> Grants {
    manifest
        .capabilities
        .iter()
        .copied()
        .filter(|c| !matches!(c, Capability::Filesystem | Capability::Network))
        .collect()
}

pub(crate) fn log_loaded(plugin: &LoadedPlugin) {
    tracing::info!(
        plugin = %plugin.manifest.name, version = %plugin.manifest.version, kind = %plugin.manifest.kind,
        sha256 = %plugin.sha256, cache = ?plugin.load.cache, load_ms = plugin.load.total_micros as f64 / 1e3,
        "plugin loaded"
    );
}
