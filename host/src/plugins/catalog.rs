//! The plugin catalog: what every replica serves, kept in the database
//! (docs/plugin-platform.md).
//!
//! Uploaded components are stored by content (`plugin_components`); what happens to a
//! plugin name is appended to an event log (`plugin_events`: install, rollback,
//! auto-rollback, regrant, suspend, enable). Every change, local or made by another
//! replica, reaches the registry the same way: read the events not yet applied, replay
//! each touched name's history into the stack of versions it should have, and make the
//! registry match, reusing versions already loaded. A restart is the same replay from
//! the start. Changes go through one lock per process; replicas meet in the log, and
//! replay is written so that a rollback two replicas both append pops once.

use super::cache::sha256_hex;
use super::capability::{Capability, Grants};
use super::manifest::Manifest;
use super::registry::{MAX_VERSIONS, Registry, first_party_grants, log_loaded};
use super::runtime::{LoadError, LoadOptions, LoadedPlugin};
use super::signing;
use crate::store::{ComponentRow, NewPluginEvent, PluginEventRow, Store, StoreError, now_ms};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Plugin names one tenant may hold: each is a catalog history, grants and a slot in
/// every replica's registry, and a tenant's admin takes one with a single request.
pub const MAX_TENANT_PLUGINS: i64 = 50;

/// Server setting that lets admins upload unsigned plugins.
pub const ALLOW_UNSIGNED: &str = "allow_unsigned_plugins";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    Manifest(String),
    #[error(
        "plugin {label} is not signed: sign it with a key registered for publisher `{publisher}` (`drover plugin sign`), or let an admin allow unsigned plugins"
    )]
    Unsigned { label: String, publisher: String },
    #[error("plugin {label}: {reason}")]
    BadSignature { label: String, reason: String },
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// When the catalog acts on faults by itself.
#[derive(Debug, Clone, Copy)]
pub struct FaultPolicy {
    /// Faults are counted over this sliding window.
    pub window: Duration,
    /// Fault rate (faults / calls in the window) at or above which it acts.
    pub rate: f64,
    /// Fewest faults in the window before it acts (a single early fault is not a trend).
    /// Only faults on input from authenticated sources count (`sources`).
    pub min_faults: u64,
    /// Fewest distinct sources (devices, admins) whose input faulted within the window
    /// before it acts: one device that keeps sending what the plugin cannot handle says
    /// something about that device, not about the version.
    pub min_sources: usize,
    /// A version this recent, with an earlier one loaded, is rolled back; otherwise the
    /// plugin is suspended (the breaker).
    pub probation: Duration,
}

impl Default for FaultPolicy {
    fn default() -> Self {
        FaultPolicy {
            window: Duration::from_secs(60),
            rate: 0.5,
            min_faults: 10,
            min_sources: 3,
            probation: Duration::from_secs(600),
        }
    }
}

/// What an upload did.
pub struct Uploaded {
    pub plugin: Arc<LoadedPlugin>,
    /// The same component was already serving: nothing changed.
    pub unchanged: bool,
    pub signed_by: Option<String>,
}

pub struct Catalog {
    store: Store,
    registry: Arc<Registry>,
    policy: FaultPolicy,
    /// Where applied changes are told (`Event::PluginChanged`).
    events: crate::events::Events,
    /// Id of the last event applied; held while changing, so changes apply in order.
    applied: tokio::sync::Mutex<i64>,
    /// Versions an upload or a regrant loaded just before appending its event, so that
    /// applying the event does not load them again.
    preloaded: Mutex<HashMap<(String, Grants), Arc<LoadedPlugin>>>,
    /// When each name's serving version started serving (ms), from its install event.
    serving_since: Mutex<HashMap<String, i64>>,
    /// Per version (sha256): (when, calls, faults) samples over the fault window.
    samples: Mutex<HashMap<String, VecDeque<Sample>>>,
}

/// (when, calls, faults) of one plugin version.
type Sample = (Instant, u64, u64);

/// The stack of versions a name's history leaves, and its suspension.
#[derive(Debug, Default, PartialEq)]
struct Replayed {
    /// (sha256, event time), oldest first; the last serves.
    stack: Vec<(String, i64)>,
    suspended: Option<String>,
}

/// Replay one name's events (oldest first).
fn replay<'a>(events: impl IntoIterator<Item = &'a PluginEventRow>) -> Replayed {
    let mut r = Replayed::default();
    for e in events {
        match (e.kind.as_str(), e.sha256.as_deref()) {
            ("install", Some(sha)) => {
                if r.stack.last().is_none_or(|(top, _)| top != sha) {
                    r.stack.push((sha.to_string(), e.at));
                }
                r.suspended = None;
            }
            // A rollback names the version it leaves: appended twice (two replicas reacting
            // to the same faults), it still pops once.
            ("rollback" | "auto-rollback", Some(from)) => {
                if r.stack.len() > 1 && r.stack.last().is_some_and(|(top, _)| top == from) {
                    r.stack.pop();
                }
                r.suspended = None;
            }
            ("suspend", _) => r.suspended = Some(e.reason.clone().unwrap_or_else(|| "suspended".into())),
            ("enable", _) => r.suspended = None,
            _ => {}
        }
    }
    r
}

fn embedded(name: &str) -> Option<&'static [u8]> {
    super::first_party::PLUGINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The first-party components shipped in this binary, by sha256 (hashed once).
fn embedded_by_sha(sha: &str) -> Option<&'static [u8]> {
    static SHAS: std::sync::OnceLock<Vec<(String, &'static [u8])>> = std::sync::OnceLock::new();
    SHAS.get_or_init(|| super::first_party::PLUGINS.iter().map(|(_, b)| (sha256_hex(b), *b)).collect())
        .iter()
        .find(|(s, _)| s == sha)
        .map(|(_, b)| *b)
}

impl Catalog {
    /// Bring the registry to what the database says, first-party plugins where it says
    /// nothing. Fails only on the database: a stored version that no longer loads is
    /// logged and skipped.
    pub async fn open(
        store: Store,
        registry: Arc<Registry>,
        policy: FaultPolicy,
        events: crate::events::Events,
    ) -> Result<Arc<Catalog>, CatalogError> {
        let catalog = Arc::new(Catalog {
            store,
            registry,
            policy,
            events,
            applied: tokio::sync::Mutex::new(0),
            preloaded: Mutex::default(),
            serving_since: Mutex::default(),
            samples: Mutex::default(),
        });
        let mut applied = catalog.applied.lock().await;
        let events = catalog.store.plugin_events_since(0).await?;
        let mut names: BTreeSet<String> = super::first_party::PLUGINS.iter().map(|(n, _)| n.to_string()).collect();
        names.extend(events.iter().map(|e| e.name.clone()));
        for name in &names {
            catalog.reconcile(name).await?;
        }
        *applied = events.last().map_or(0, |e| e.id);
        drop(applied);
        Ok(catalog)
    }

    /// Apply events appended since the last sync (by this replica or another).
    pub async fn sync(&self) -> Result<(), CatalogError> {
        let mut applied = self.applied.lock().await;
        self.sync_locked(&mut applied).await
    }

    async fn sync_locked(&self, applied: &mut i64) -> Result<(), CatalogError> {
        let events = self.store.plugin_events_since(*applied).await?;
        let names: BTreeSet<&str> = events.iter().map(|e| e.name.as_str()).collect();
        for name in names {
            self.reconcile(name).await?;
        }
        if let Some(last) = events.last() {
            *applied = last.id;
        }
        // Told once applied, whichever replica made the change.
        for e in events {
            self.events.publish(crate::events::Event::PluginChanged {
                plugin: e.name,
                change: e.kind,
                version: e.version,
                actor: e.actor,
            });
        }
        Ok(())
    }

    /// The grants for a version of `name`: the admin's, else for a first-party
    /// component the first-party defaults, else none.
    async fn grants_for(&self, manifest: &Manifest, first_party: bool) -> Result<Grants, CatalogError> {
        if let Some(g) = self.stored_grants(&manifest.name).await? {
            return Ok(g);
        }
        Ok(if first_party { first_party_grants(manifest) } else { Grants::new() })
    }

    /// What an admin granted plugin `name`, if they said anything.
    pub async fn stored_grants(&self, name: &str) -> Result<Option<Grants>, CatalogError> {
        let all = self.store.plugin_grants().await?;
        Ok(all.into_iter().find(|(p, _)| p == name).and_then(|(_, caps)| serde_json::from_str(&caps).ok()))
    }

    /// Make the registry's versions of `name` what its history says.
    async fn reconcile(&self, name: &str) -> Result<(), CatalogError> {
        let mut history = self.store.plugin_history(name, 100_000).await?;
        history.reverse();
        let mut want = replay(&history);
        if want.stack.is_empty()
            && let Some(bytes) = embedded(name)
        {
            want.stack.push((sha256_hex(bytes), 0));
        }
        let skip = want.stack.len().saturating_sub(MAX_VERSIONS);
        let (loaded, _) = self.registry.versions(name);
        let mut versions = Vec::new();
        for (sha, _) in &want.stack[skip..] {
            match self.version(name, sha, &loaded).await {
                Ok(Some(p)) => versions.push(p),
                Ok(None) => {
                    tracing::error!(plugin = name, sha256 = %sha, "a version in the plugin's history is in neither the database nor this binary: skipped")
                }
                Err(e) => {
                    tracing::error!(plugin = name, sha256 = %sha, "a version in the plugin's history does not load: skipped: {e}")
                }
            }
        }
        // Nothing in the history loads any more (say, built for an older contract): a
        // first-party plugin of the name is better than none.
        if versions.is_empty()
            && let Some(bytes) = embedded(name)
        {
            match self.version(name, &sha256_hex(bytes), &loaded).await {
                Ok(Some(p)) => versions.push(p),
                Ok(None) => {}
                Err(e) => tracing::error!(plugin = name, "the first-party version does not load: {e}"),
            }
        }
        if let Some((_, at)) = want.stack.last() {
            self.serving_since.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), *at);
        }
        let before = self.registry.get(name).map(|p| p.label());
        let now = versions.last().map(|p| p.label());
        self.registry.set(name, versions, want.suspended.clone());
        if before != now || want.suspended.is_some() {
            tracing::info!(plugin = name, serving = ?now, was = ?before, suspended = ?want.suspended, "plugin catalog applied");
        }
        Ok(())
    }

    /// Version `sha` of `name` with its current grants: reused if loaded so, else from
    /// an upload's preload, else loaded from the database or the binary.
    async fn version(
        &self,
        name: &str,
        sha: &str,
        loaded: &[Arc<LoadedPlugin>],
    ) -> Result<Option<Arc<LoadedPlugin>>, CatalogError> {
        // Already loaded with the grants it should have: no bytes to read, nothing to load.
        // (First-party means: these exact bytes ship in this binary.)
        if let Some(p) = loaded.iter().find(|p| p.sha256 == sha) {
            let grants = self.grants_for(&p.manifest, embedded_by_sha(sha).is_some()).await?;
            if p.granted == grants {
                return Ok(Some(p.clone()));
            }
        }
        let bytes: Vec<u8> = match (embedded_by_sha(sha), self.store.component_bytes(sha).await?) {
            (Some(b), _) => b.to_vec(),
            (None, Some(b)) => b,
            // A first-party version recorded by an older binary: this binary's replaces it.
            (None, None) => match embedded(name) {
                Some(b) => b.to_vec(),
                None => return Ok(None),
            },
        };
        let sha = sha256_hex(&bytes);
        let manifest = Manifest::from_component(&bytes).map_err(|e| CatalogError::Manifest(e.to_string()))?;
        let grants = self.grants_for(&manifest, embedded_by_sha(&sha).is_some()).await?;
        if let Some(p) = loaded.iter().find(|p| p.sha256 == sha && p.granted == grants) {
            return Ok(Some(p.clone()));
        }
        if let Some(p) = self.preloaded.lock().unwrap_or_else(|p| p.into_inner()).remove(&(sha.clone(), grants.clone()))
        {
            return Ok(Some(p));
        }
        let plugin =
            Arc::new(self.registry.runtime().load(&bytes, LoadOptions { grants, ..Default::default() }).await?);
        log_loaded(&plugin);
        Ok(Some(plugin))
    }

    async fn allow_unsigned(&self) -> Result<bool, CatalogError> {
        Ok(self.store.server_setting(ALLOW_UNSIGNED).await?.as_deref() == Some("true"))
    }

    /// Take a component an admin uploaded: verify its signature against the keys
    /// registered for its manifest's publisher (unless unsigned uploads are allowed and
    /// it has none), load it (compile, pre-instantiate, smoke-test), store it, then
    /// publish it on every replica. Nothing is published if any step fails.
    ///
    /// `tenant` is the uploading admin's tenant (`None`: an operator, whose uploads are
    /// shared). A tenant's upload must be a device type named `TENANT-…`, and its name
    /// becomes (or must already be) the tenant's ([`Catalog::tenant_may_upload`]).
    pub async fn upload(
        &self,
        bytes: &[u8],
        signature: Option<&[u8]>,
        actor: &str,
        tenant: Option<&str>,
    ) -> Result<Uploaded, CatalogError> {
        let manifest = Manifest::from_component(bytes)
            .map_err(|e| CatalogError::Manifest(format!("cannot take the plugin: {e}")))?;
        if let Some(t) = tenant {
            self.tenant_may_upload(&manifest, t).await?;
        }
        let label = format!("{}@{}", manifest.name, manifest.version);
        let signed_by = match signature {
            Some(sig) => {
                let sig = signing::parse_signature(sig)
                    .map_err(|e| CatalogError::BadSignature { label: label.clone(), reason: e.to_string() })?;
                let keys: Vec<_> = self
                    .store
                    .publisher_keys()
                    .await?
                    .into_iter()
                    .filter(|k| k.publisher == manifest.publisher)
                    .filter_map(|k| signing::parse_public_key(&k.public_key).ok().map(|v| (k.key_id, v)))
                    .collect();
                if keys.is_empty() {
                    return Err(CatalogError::BadSignature {
                        label,
                        reason: format!("no key is registered for its publisher `{}`", manifest.publisher),
                    });
                }
                match signing::verify(&keys, bytes, &sig) {
                    Some(id) => Some(id.to_string()),
                    None => {
                        return Err(CatalogError::BadSignature {
                            label,
                            reason: format!(
                                "the signature does not match the component under any key registered for publisher `{}`: the file was changed after signing, or signed with another key",
                                manifest.publisher
                            ),
                        });
                    }
                }
            }
            None if self.allow_unsigned().await? => None,
            None => return Err(CatalogError::Unsigned { label, publisher: manifest.publisher.clone() }),
        };

        // A name's kind and an unchanged re-upload are answered before compiling, as they
        // were when the compile ran under the lock (after catching up with the log).
        let sha = sha256_hex(bytes);
        self.sync().await?;
        if let Some(done) = self.already(&manifest, &sha, &signed_by)? {
            return Ok(done);
        }
        // Compile, pre-instantiate and smoke-test before taking the catalog's lock: that
        // takes ~250 ms for a Rust plugin and seconds for a large one, and meanwhile the
        // lock orders every other change (rollbacks, grants, the fault breaker's
        // suspensions, other replicas' events). If the grants change before the lock is
        // taken, the version loaded here is not used: the replay below loads it again with
        // the new ones (`preloaded` is keyed by sha and grants).
        let grants = self.grants_for(&manifest, embedded_by_sha(&sha).is_some()).await?;
        let plugin = Arc::new(
            self.registry.runtime().load(bytes, LoadOptions { grants: grants.clone(), ..Default::default() }).await?,
        );

        let mut applied = self.applied.lock().await;
        self.sync_locked(&mut applied).await?;
        // Again: another upload (here or on another replica) may have published meanwhile.
        if let Some(done) = self.already(&manifest, &sha, &signed_by)? {
            return Ok(done);
        }
        log_loaded(&plugin);
        let row = ComponentRow {
            sha256: sha.clone(),
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            publisher: manifest.publisher.clone(),
            size: bytes.len() as i64,
            signed_by: signed_by.clone(),
            uploaded_at: now_ms(),
            uploaded_by: actor.to_string(),
        };
        self.store.put_component(&row, bytes).await.map_err(|e| match e {
            StoreError::Conflict(what) => CatalogError::Conflict(what),
            e => e.into(),
        })?;
        // The first upload over a first-party plugin records it, so rollback can return to
        // it (its name may have events already: grants, a suspension; but no install).
        if !self.store.plugin_history(&manifest.name, 100_000).await?.iter().any(|e| e.kind == "install")
            && let Some(current) = self.registry.get(&manifest.name)
        {
            self.append(&manifest.name, "install", Some(&current), None, "first-party").await?;
        }
        if let Some(t) = tenant
            && self.store.claim_plugin_name(&manifest.name, t).await? != t
        {
            return Err(CatalogError::Conflict(format!("plugin `{}` is another tenant's", manifest.name)));
        }
        self.preloaded.lock().unwrap_or_else(|p| p.into_inner()).insert((sha, grants), plugin.clone());
        self.append(&manifest.name, "install", Some(&plugin), None, actor).await?;
        self.sync_locked(&mut applied).await?;
        tracing::info!(plugin = %plugin.label(), actor, signed_by = ?signed_by, "plugin published");
        Ok(Uploaded { plugin, unchanged: false, signed_by })
    }

    /// Whether tenant `t`'s admin may upload `manifest`: a device type (transports and
    /// policy rules run for every tenant's devices, so they are the operators'), named
    /// `t-…` (so a tenant never takes, or learns of, a name outside its own), and not a
    /// name the operators' plugins hold (a first-party one, or one uploaded as shared).
    async fn tenant_may_upload(&self, manifest: &Manifest, t: &str) -> Result<(), CatalogError> {
        if manifest.kind != super::manifest::Kind::DeviceType {
            return Err(CatalogError::Manifest(format!(
                "a tenant's admin uploads device-type plugins only; `{}` is a {}: transports and policy rules \
                 serve every tenant, and the server's operators upload them",
                manifest.name, manifest.kind
            )));
        }
        self.tenant_may_use(&manifest.name, t).await
    }

    /// Whether plugin name `name` is, or may become, tenant `t`'s: named `t-…`, and either
    /// already its, or no one's and never installed (first-party and the operators'
    /// uploads are shared, and stay out of a tenant's hands).
    pub async fn tenant_may_use(&self, name: &str, t: &str) -> Result<(), CatalogError> {
        if !name.strip_prefix(t).is_some_and(|rest| rest.starts_with('-') && rest.len() > 1) {
            return Err(CatalogError::Manifest(format!(
                "a plugin of tenant `{t}` is named `{t}-…` (its device type's name too); this one is `{name}`"
            )));
        }
        match self.store.plugin_owner(name).await? {
            Some(owner) if owner == t => Ok(()),
            Some(_) => Err(CatalogError::Conflict(format!("plugin `{name}` is another tenant's"))),
            None if self.registry.get(name).is_some()
                || self.store.plugin_history(name, 100_000).await?.iter().any(|e| e.kind == "install") =>
            {
                Err(CatalogError::Conflict(format!(
                    "plugin `{name}` is shared by the server's operators: a tenant cannot replace it"
                )))
            }
            None if self.store.tenant_plugin_names(t).await? >= MAX_TENANT_PLUGINS => {
                Err(CatalogError::Conflict(format!(
                    "tenant `{t}` holds {MAX_TENANT_PLUGINS} plugin names, the most a tenant may: `{name}` would be one more"
                )))
            }
            None => Ok(()),
        }
    }

    /// What an upload of `sha` amounts to without publishing anything: a conflict when the
    /// name serves another kind, `unchanged` when this very component already serves
    /// (and is not suspended); `None` when it is to be published.
    fn already(
        &self,
        manifest: &Manifest,
        sha: &str,
        signed_by: &Option<String>,
    ) -> Result<Option<Uploaded>, CatalogError> {
        let Some(current) = self.registry.get(&manifest.name) else { return Ok(None) };
        if current.kind() != manifest.kind {
            return Err(CatalogError::Conflict(format!(
                "plugin `{}` is a {}; this component is a {}: a name keeps its kind",
                manifest.name,
                current.kind(),
                manifest.kind
            )));
        }
        if current.sha256 == sha && self.registry.suspension(&manifest.name).is_none() {
            return Ok(Some(Uploaded { plugin: current, unchanged: true, signed_by: signed_by.clone() }));
        }
        Ok(None)
    }

    async fn append(
        &self,
        name: &str,
        kind: &str,
        version: Option<&LoadedPlugin>,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<i64, CatalogError> {
        Ok(self
            .store
            .append_plugin_event(&NewPluginEvent {
                name,
                kind,
                sha256: version.map(|p| p.sha256.as_str()),
                version: version.map(|p| p.manifest.version.as_str()),
                reason,
                actor,
            })
            .await?)
    }

    /// Return `name` to the version that served before the current one, at once (it is
    /// still loaded). `auto`: the catalog's own decision, recorded as such.
    pub async fn rollback(
        &self,
        name: &str,
        actor: &str,
        reason: Option<&str>,
        auto: bool,
    ) -> Result<Arc<LoadedPlugin>, CatalogError> {
        let mut applied = self.applied.lock().await;
        self.sync_locked(&mut applied).await?;
        let (versions, _) = self.registry.versions(name);
        let Some(current) = versions.last() else {
            return Err(CatalogError::NotFound(format!("no plugin `{name}` is loaded")));
        };
        if versions.len() < 2 {
            return Err(CatalogError::Conflict(format!(
                "plugin {} has no earlier version loaded to roll back to",
                current.label()
            )));
        }
        let kind = if auto { "auto-rollback" } else { "rollback" };
        self.append(name, kind, Some(current), reason, actor).await?;
        self.sync_locked(&mut applied).await?;
        let now = self.registry.get(name).ok_or_else(|| CatalogError::NotFound(format!("plugin `{name}`")))?;
        tracing::warn!(plugin = name, from = %current.label(), to = %now.label(), actor, reason, "plugin rolled back");
        Ok(now)
    }

    /// Suspend `name`: calls are refused, its devices' operations stay queued.
    pub async fn suspend(&self, name: &str, reason: &str, actor: &str) -> Result<(), CatalogError> {
        let mut applied = self.applied.lock().await;
        self.sync_locked(&mut applied).await?;
        let current =
            self.registry.get(name).ok_or_else(|| CatalogError::NotFound(format!("no plugin `{name}` is loaded")))?;
        self.append(name, "suspend", Some(&current), Some(reason), actor).await?;
        self.sync_locked(&mut applied).await?;
        tracing::warn!(plugin = %current.label(), actor, reason, "plugin suspended");
        Ok(())
    }

    /// Lift a suspension.
    pub async fn enable(&self, name: &str, actor: &str) -> Result<(), CatalogError> {
        let mut applied = self.applied.lock().await;
        self.sync_locked(&mut applied).await?;
        let current =
            self.registry.get(name).ok_or_else(|| CatalogError::NotFound(format!("no plugin `{name}` is loaded")))?;
        self.append(name, "enable", Some(&current), None, actor).await?;
        // Faults from before the suspension are forgiven: the window starts now.
        let s = current.stats();
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(current.sha256.clone(), VecDeque::from([(Instant::now(), s.calls, s.charged_faults)]));
        current.caller.stats.faulting.clear();
        self.sync_locked(&mut applied).await?;
        tracing::info!(plugin = %current.label(), actor, "plugin enabled");
        Ok(())
    }

    /// Replace what plugin `name` is granted. A loaded plugin is reloaded with the new
    /// grants first; if it imports something no longer granted, nothing changes.
    pub async fn set_grants(&self, name: &str, grants: Grants, actor: &str) -> Result<(), CatalogError> {
        let mut applied = self.applied.lock().await;
        self.sync_locked(&mut applied).await?;
        let current = self.registry.get(name);
        if let Some(current) = &current {
            let bytes = match self.store.component_bytes(&current.sha256).await? {
                Some(b) => b,
                None => embedded_by_sha(&current.sha256).map(<[u8]>::to_vec).ok_or_else(|| {
                    CatalogError::NotFound(format!("the component of {} is not stored", current.label()))
                })?,
            };
            let plugin = Arc::new(
                self.registry
                    .runtime()
                    .load(&bytes, LoadOptions { grants: grants.clone(), ..Default::default() })
                    .await?,
            );
            self.preloaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((plugin.sha256.clone(), grants.clone()), plugin);
        }
        let json = serde_json::to_string(&grants.iter().collect::<Vec<&Capability>>()).unwrap_or_else(|_| "[]".into());
        self.store.put_plugin_grants(name, &json, actor).await?;
        self.append(name, "regrant", current.as_deref(), Some(&json), actor).await?;
        self.sync_locked(&mut applied).await?;
        tracing::info!(plugin = name, actor, grants = %json, "plugin grants changed");
        Ok(())
    }

    /// Look at every serving plugin's faults over the window: roll a recent version back
    /// to the one before it, or suspend a plugin that keeps faulting. Returns what it did.
    pub async fn supervise(&self) -> Vec<String> {
        let mut actions = Vec::new();
        let now = Instant::now();
        let mut decisions = Vec::new();
        {
            let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            let live: BTreeSet<String> = self
                .registry
                .names()
                .into_iter()
                .filter_map(|n| self.registry.get(&n))
                .map(|p| p.sha256.clone())
                .collect();
            samples.retain(|sha, _| live.contains(sha));
            for name in self.registry.names() {
                let Some(p) = self.registry.serving(&name) else { continue };
                let s = p.stats();
                let ring = samples.entry(p.sha256.clone()).or_insert_with(|| {
                    // First look at this version: its counters started at zero when it
                    // loaded, so a version loaded within the window counts from its load.
                    let age = p.loaded_at.elapsed().unwrap_or_default();
                    let first = match now.checked_sub(age) {
                        Some(loaded) if age < self.policy.window => (loaded, 0, 0),
                        _ => (now, s.calls, s.charged_faults),
                    };
                    VecDeque::from([first])
                });
                ring.push_back((now, s.calls, s.charged_faults));
                // Keep one sample at or before the window's start: the baseline.
                while ring.get(1).is_some_and(|(t, _, _)| now.duration_since(*t) >= self.policy.window) {
                    ring.pop_front();
                }
                let (_, c0, f0) = ring.front().copied().unwrap_or((now, s.calls, s.charged_faults));
                let (calls, faults) = (s.calls.saturating_sub(c0), s.charged_faults.saturating_sub(f0));
                let sources = p.caller.stats.faulting.sources_within(self.policy.window);
                if faults >= self.policy.min_faults
                    && sources >= self.policy.min_sources
                    && calls > 0
                    && faults as f64 / calls as f64 >= self.policy.rate
                {
                    let since =
                        self.serving_since.lock().unwrap_or_else(|p| p.into_inner()).get(&name).copied().unwrap_or(0);
                    let recent = now_ms() - since < self.policy.probation.as_millis() as i64;
                    let has_previous = self.registry.versions(&name).0.len() > 1;
                    let why = format!(
                        "{faults} faults from {sources} devices in {calls} calls ({:.0}%) within {} s (threshold {:.0}%)",
                        faults as f64 * 100.0 / calls as f64,
                        self.policy.window.as_secs(),
                        self.policy.rate * 100.0
                    );
                    decisions.push((name, p.label(), recent && has_previous, why, p.sha256.clone()));
                }
            }
        }
        for (name, label, roll_back, why, sha) in decisions {
            self.samples.lock().unwrap_or_else(|p| p.into_inner()).remove(&sha);
            if roll_back {
                match self.rollback(&name, "breaker", Some(&why), true).await {
                    Ok(now) => actions.push(format!("rolled {label} back to {}: {why}", now.label())),
                    Err(e) => tracing::error!(plugin = %label, "automatic rollback failed: {e}"),
                }
            } else {
                match self.suspend(&name, &why, "breaker").await {
                    Ok(()) => actions.push(format!("suspended {label}: {why}")),
                    Err(e) => tracing::error!(plugin = %label, "suspending a faulting plugin failed: {e}"),
                }
            }
        }
        actions
    }

    /// Keep this replica in step with the log and supervise faults, for as long as the
    /// process runs.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let catalog = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let Some(changes) = catalog.upgrade().map(|c| c.store.changes().clone()) else { return };
            loop {
                // Every tick, or at once when a replica announces a change (store/changes.rs).
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = changes.wait(crate::store::Change::Catalog) => {}
                }
                let Some(c) = catalog.upgrade() else { return };
                if let Err(e) = c.sync().await {
                    tracing::warn!("plugin catalog sync failed (retried): {e}");
                }
                c.supervise().await;
            }
        })
    }

    /// Every stored component of `name`, newest first, and its history, newest first.
    pub async fn describe(&self, name: &str) -> Result<(Vec<ComponentRow>, Vec<PluginEventRow>), CatalogError> {
        Ok((self.store.components(name).await?, self.store.plugin_history(name, 100).await?))
    }
}

/// Parse capability names (`log`, `kv` …) as an admin writes them.
pub fn parse_grants(names: &[String]) -> Result<Grants, String> {
    names
        .iter()
        .map(|n| {
            serde_json::from_value::<Capability>(serde_json::Value::String(n.clone()))
                .map_err(|_| format!("unknown capability `{n}` (log, config, kv, clock, random, filesystem, network)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: i64, kind: &str, sha: &str) -> PluginEventRow {
        PluginEventRow {
            id,
            name: "p".into(),
            kind: kind.into(),
            sha256: Some(sha.into()),
            version: None,
            reason: None,
            actor: "t".into(),
            at: id,
        }
    }

    fn shas(r: &Replayed) -> Vec<&str> {
        r.stack.iter().map(|(s, _)| s.as_str()).collect()
    }

    #[test]
    fn replay_pushes_pops_once_and_suspends() {
        let log = [ev(1, "install", "a"), ev(2, "install", "b"), ev(3, "install", "c")];
        assert_eq!(shas(&replay(&log)), ["a", "b", "c"]);
        // Two replicas rolled back the same version: one pop.
        let log = [ev(1, "install", "a"), ev(2, "install", "b"), ev(3, "rollback", "b"), ev(4, "auto-rollback", "b")];
        assert_eq!(shas(&replay(&log)), ["a"]);
        // Never pops the last version; re-installing the current one is not a new entry.
        let log = [ev(1, "install", "a"), ev(2, "rollback", "a"), ev(3, "install", "a")];
        assert_eq!(shas(&replay(&log)), ["a"]);
        let log = [ev(1, "install", "a"), ev(2, "suspend", "a")];
        assert!(replay(&log).suspended.is_some());
        let log = [ev(1, "install", "a"), ev(2, "suspend", "a"), ev(3, "enable", "a")];
        assert!(replay(&log).suspended.is_none());
        // A new install lifts a suspension.
        let log = [ev(1, "install", "a"), ev(2, "suspend", "a"), ev(3, "install", "b")];
        assert!(replay(&log).suspended.is_none());
    }

    #[test]
    fn grants_parse_and_refuse_unknown() {
        assert_eq!(parse_grants(&["log".into(), "kv".into()]).unwrap().len(), 2);
        assert!(parse_grants(&["sockets".into()]).unwrap_err().contains("unknown capability `sockets`"));
    }
}
