//! The plugin runtime: one engine, a component and its pre-instantiation per plugin
//! version, and a fresh, limited store for every call.
//!
//! The policy in one place:
//! * **Isolation.** Every call instantiates the plugin anew from its `InstancePre` into a
//!   new `Store` (the pooling allocator makes that a few microseconds) and drops both when
//!   the call returns. A trap poisons a store; since no store outlives its call, a faulted
//!   instance is never entered again and one call cannot see another's memory.
//! * **CPU time.** Epoch interruption: a thread ticks the engine every [`EPOCH_TICK`]. At
//!   each tick a running guest yields to the async executor (so a long call never holds a
//!   tokio worker) and is charged one tick; past its CPU budget it traps.
//! * **Memory.** A per-store limiter refuses growth past the memory limit (and records
//!   that it did, so the fault is named as a memory fault, not a generic trap).
//! * **Wall-clock time.** A timeout around the whole call covers time spent in async host
//!   imports, where epochs do not advance the guest.
//! * **Output size.** What a call returns is measured before the host uses it.

use super::bindings::{device_type, device_type_enrolling, policy_rule, transport};
use super::cache::{ArtifactCache, CacheOutcome, sha256_hex};
use super::capability::{Capability, Grants, check_imports, component_imports};
pub use super::context::PluginConfig;
use super::context::{KvStore, PluginContext};
use super::manifest::{Kind, Manifest};
use super::sandbox::{PluginHosts, Reach};
use super::sources::{HoldPolicy, Holds, Source};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// How often the epoch advances. CPU limits are rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per-call limits. The defaults suit translating device messages; a plugin that needs
/// more is doing more than translating.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU time per call.
    pub cpu: Duration,
    /// Wall-clock time per call, including host imports.
    pub wall: Duration,
    /// Linear memory per instance, in bytes.
    pub memory: usize,
    /// Bytes a call may return.
    pub output: usize,
    /// Calls that may run at once across all plugins (pooling allocator slots).
    pub concurrency: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu: Duration::from_millis(200),
            wall: Duration::from_secs(2),
            memory: 256 << 20,
            output: 16 << 20,
            concurrency: 1000,
        }
    }
}

/// The state of one call's store.
pub struct CallState {
    /// Built at the first WASI call, not per store: a plugin call rarely makes one (its
    /// WASI is inert: no environment, no arguments, stdio to the log), and building a
    /// context (boxed clocks and streams, two random generators seeded from the thread's
    /// generator) is part of every call's fixed price otherwise.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    memory: MemoryLimiter,
    pub(crate) plugin: Arc<PluginContext>,
    /// Config values of this call in place of the plugin's (`config.get`): the settings of
    /// the tenant the call serves, merged over the server's (`plugin_settings.rs`).
    pub(crate) config: Option<Arc<BTreeMap<String, String>>>,
    pub(crate) log_lines: u32,
    /// Epoch ticks this call has run for, and whether it ran out of them.
    ticks: u64,
    cpu_exhausted: bool,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let plugin = &self.plugin;
        WasiCtxView { ctx: self.wasi.get_or_insert_with(|| plugin.reach.wasi(&plugin.name)), table: &mut self.table }
    }
}

/// Refuses memory growth past the limit and remembers that it did.
struct MemoryLimiter {
    limit: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Err(wasmtime::format_err!("memory limit of {} MiB reached", self.limit >> 20));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// What went wrong inside a plugin call. Each names the limit that was hit.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Fault {
    #[error("exceeded its CPU time limit of {} ms", .0.as_millis())]
    CpuTime(Duration),
    #[error("exceeded its wall-clock limit of {} ms", .0.as_millis())]
    WallClock(Duration),
    #[error("exceeded its memory limit of {} MiB", .0 >> 20)]
    Memory(usize),
    #[error("returned {size} bytes, over its output limit of {limit} bytes")]
    Output { size: usize, limit: usize },
    #[error("trapped: {0}")]
    Trap(String),
    /// Not a fault of the plugin: every instance slot was in use (back-pressure). Not counted.
    #[error("was not called: all {0} instance slots are in use; try again shortly")]
    Busy(u32),
    /// Not run at all: input from this source made plugins fault too often lately
    /// (`sources::Holds`). Not counted against the plugin.
    #[error("was not called: input from this sender made plugins fault repeatedly; try again in {} s", .0.as_secs().max(1))]
    Held(Duration),
    /// Not a fault of the plugin: the host could not serve one of its imports (the
    /// database behind `kv` failed). Not counted.
    #[error("stopped: {0}")]
    Unavailable(String),
}

/// A fault, with the plugin and function it happened in.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}@{version}: `{function}` {fault}")]
pub struct PluginFault {
    pub plugin: String,
    pub version: String,
    pub function: &'static str,
    pub fault: Fault,
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load plugin {label}: {reason}")]
pub struct LoadError {
    /// `name@version` when the manifest could be read, else the first 12 hex of the sha256.
    pub label: String,
    pub reason: LoadFailure,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    #[error(transparent)]
    Manifest(#[from] super::manifest::ManifestError),
    #[error(transparent)]
    Grant(#[from] super::capability::ImportProblems),
    #[error("the component does not compile: {0}")]
    Compile(String),
    #[error("its manifest says kind `{kind}`, but the component does not implement world {}: {detail}", .kind.world())]
    World { kind: Kind, detail: String },
    #[error("smoke test failed: {0}")]
    SmokeTest(String),
    #[error("describe() names {what} `{described}`, but the manifest names `{manifest}`")]
    NameMismatch { what: &'static str, described: String, manifest: String },
}

/// Counters of one plugin version.
#[derive(Debug)]
pub struct Stats {
    pub calls: std::sync::atomic::AtomicU64,
    /// Every fault, whoever's input caused it.
    pub faults: std::sync::atomic::AtomicU64,
    /// Faults on input from authenticated sources (devices, admins): what the breaker judges.
    pub charged_faults: std::sync::atomic::AtomicU64,
    /// Calls refused without running: no free instance slot, or a held source.
    pub busy: std::sync::atomic::AtomicU64,
    pub held: std::sync::atomic::AtomicU64,
    /// Which authenticated sources faulted lately, for the breaker.
    pub faulting: super::sources::FaultLedger,
    pub cpu_limit_hits: std::sync::atomic::AtomicU64,
    pub memory_limit_hits: std::sync::atomic::AtomicU64,
    pub wall_limit_hits: std::sync::atomic::AtomicU64,
    pub output_limit_hits: std::sync::atomic::AtomicU64,
    pub traps: std::sync::atomic::AtomicU64,
    pub busy_nanos: std::sync::atomic::AtomicU64,
    /// Call durations in seconds (faulted calls included), for `/metrics`.
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            calls: Default::default(),
            faults: Default::default(),
            charged_faults: Default::default(),
            busy: Default::default(),
            held: Default::default(),
            faulting: Default::default(),
            cpu_limit_hits: Default::default(),
            memory_limit_hits: Default::default(),
            wall_limit_hits: Default::default(),
            output_limit_hits: Default::default(),
            traps: Default::default(),
            busy_nanos: Default::default(),
            // 50 µs … 3.3 s: a decode takes tens of microseconds, the CPU limit is 200 ms,
            // the wall-clock limit 2 s.
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 17),
            ),
        }
    }
}

/// A snapshot of [`Stats`] for the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    pub calls: u64,
    pub faults: u64,
    /// Faults on input from devices and admins (the breaker's count); the rest came from
    /// unauthenticated requests.
    pub charged_faults: u64,
    /// Calls refused for want of an instance slot.
    pub busy: u64,
    /// Calls refused because their source was held.
    pub held: u64,
    pub cpu_limit_hits: u64,
    pub memory_limit_hits: u64,
    pub wall_limit_hits: u64,
    pub output_limit_hits: u64,
    pub traps: u64,
    pub mean_call_micros: f64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let calls = self.calls.load(Relaxed);
        StatsSnapshot {
            calls,
            faults: self.faults.load(Relaxed),
            charged_faults: self.charged_faults.load(Relaxed),
            busy: self.busy.load(Relaxed),
            held: self.held.load(Relaxed),
            cpu_limit_hits: self.cpu_limit_hits.load(Relaxed),
            memory_limit_hits: self.memory_limit_hits.load(Relaxed),
            wall_limit_hits: self.wall_limit_hits.load(Relaxed),
            output_limit_hits: self.output_limit_hits.load(Relaxed),
            traps: self.traps.load(Relaxed),
            mean_call_micros: if calls == 0 { 0.0 } else { self.busy_nanos.load(Relaxed) as f64 / calls as f64 / 1e3 },
        }
    }
}

/// The interface a device type exports when its enrollment is an exchange.
const EXCHANGE: &str = "drover:plugin/enrollment-exchange@0.1.0";

/// The exported world of a loaded plugin: its pre-instantiation.
#[derive(Clone)]
pub(crate) enum Exports {
    /// A device type, and its enrollment exchange when it exports one
    /// (`device-type-enrolling`).
    DeviceType(device_type::DeviceTypePre<CallState>, Option<device_type_enrolling::DeviceTypeEnrollingPre<CallState>>),
    Transport(transport::TransportPre<CallState>),
    PolicyRule(policy_rule::PolicyRulePre<CallState>),
}

/// What the plugin's `describe` answered at load (the smoke test), kept for the API.
#[derive(Debug, Clone)]
pub enum Described {
    DeviceType(device_type::drover::plugin::types::DeviceTypeInfo),
    Transport(transport::drover::plugin::transport_types::TransportInfo),
    PolicyRule(policy_rule::drover::plugin::policy_types::RuleInfo),
}

/// How long a load took and whether the compiled artifact came from the cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFigures {
    pub cache: CacheOutcome,
    pub compile_micros: u64,
    pub total_micros: u64,
}

/// One loaded plugin version, ready to call.
pub struct LoadedPlugin {
    pub manifest: Manifest,
    pub sha256: String,
    pub size: usize,
    /// Names the component imports.
    pub imports: Vec<String>,
    pub granted: Grants,
    pub loaded_at: SystemTime,
    pub load: LoadFigures,
    pub described: Described,
    pub(crate) exports: Exports,
    pub(crate) caller: Caller,
}

/// Everything about a load an admin decides: grants and config values.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub grants: Grants,
    pub config: BTreeMap<String, String>,
}

pub(crate) type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

/// Runs calls into one plugin version: makes the store, applies the limits, classifies
/// faults and counts them.
pub(crate) struct Caller {
    pub(crate) ctx: Arc<PluginContext>,
    pub(crate) limits: Limits,
    pub(crate) stats: Stats,
    /// Held sources, shared by every plugin of the runtime.
    pub(crate) holds: Arc<Holds>,
}

/// Measures what a call returned, for the output limit.
pub(crate) trait OutputSize {
    fn output_size(&self) -> usize;
}

impl Caller {
    /// Run `f` in a fresh store with this plugin's limits. `f` instantiates the plugin
    /// from its pre-instantiation and makes one call.
    pub(crate) async fn call<R, F>(&self, function: &'static str, source: Source, f: F) -> Result<R, PluginFault>
    where
        R: OutputSize,
        F: for<'a> FnOnce(&'a mut Store<CallState>) -> CallFuture<'a, R>,
        F: Send,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.stats;
        let refuse =
            |fault| PluginFault { plugin: self.ctx.name.clone(), version: self.ctx.version.clone(), function, fault };
        if let Err(retry) = self.holds.check(source) {
            stats.held.fetch_add(1, Relaxed);
            return Err(refuse(Fault::Held(retry)));
        }
        let started = Instant::now();
        stats.calls.fetch_add(1, Relaxed);
        let mut store = self.new_store();
        // +1: the first tick may come at once, so N+1 ticks guarantee N full periods.
        let budget = self.limits.cpu.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            state.ticks += 1;
            if state.ticks >= budget {
                state.cpu_exhausted = true;
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            Ok(wasmtime::UpdateDeadline::Yield(1))
        });
        let outcome = tokio::time::timeout(self.limits.wall, f(&mut store)).await;
        let result = match outcome {
            Err(_) => {
                stats.wall_limit_hits.fetch_add(1, Relaxed);
                Err(Fault::WallClock(self.limits.wall))
            }
            // Every slot of the pooling allocator in use: the server is busy, the plugin
            // did nothing wrong.
            Ok(Err(e)) if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                stats.busy.fetch_add(1, Relaxed);
                stats.calls.fetch_sub(1, Relaxed);
                return Err(refuse(Fault::Busy(self.limits.concurrency)));
            }
            // The host failed the plugin (its database): not the plugin's fault, and not
            // its sender's.
            Ok(Err(e)) if e.downcast_ref::<super::context::HostUnavailable>().is_some() => {
                let why = e.downcast_ref::<super::context::HostUnavailable>().map(|h| h.to_string());
                return Err(refuse(Fault::Unavailable(why.unwrap_or_default())));
            }
            Ok(Err(e)) => Err(if store.data().memory.hit {
                stats.memory_limit_hits.fetch_add(1, Relaxed);
                Fault::Memory(self.limits.memory)
            } else if store.data().cpu_exhausted {
                stats.cpu_limit_hits.fetch_add(1, Relaxed);
                Fault::CpuTime(self.limits.cpu)
            } else {
                stats.traps.fetch_add(1, Relaxed);
                Fault::Trap(trap_message(&e))
            }),
            Ok(Ok(r)) => {
                let size = r.output_size();
                if size > self.limits.output {
                    stats.output_limit_hits.fetch_add(1, Relaxed);
                    Err(Fault::Output { size, limit: self.limits.output })
                } else {
                    Ok(r)
                }
            }
        };
        drop(store);
        let elapsed = started.elapsed();
        stats.busy_nanos.fetch_add(elapsed.as_nanos() as u64, Relaxed);
        stats.latency.observe(elapsed.as_secs_f64());
        result.map_err(|fault| {
            // Charged to whoever sent the input; against the version only when that sender
            // is authenticated (see `sources`).
            stats.faults.fetch_add(1, Relaxed);
            if source.charges_version() {
                stats.charged_faults.fetch_add(1, Relaxed);
                stats.faulting.record(source);
            }
            let held = self.holds.charge(source);
            let f = refuse(fault);
            tracing::warn!(target: "plugin", plugin = %f.plugin, version = %f.version, ?source, held, "{f}");
            f
        })
    }

    /// A store for calls into this plugin, with its memory limit. No CPU deadline yet:
    /// `call` sets one per call.
    pub(crate) fn new_store(&self) -> Store<CallState> {
        let state = CallState {
            wasi: None,
            table: ResourceTable::new(),
            memory: MemoryLimiter { limit: self.limits.memory, hit: false },
            plugin: self.ctx.clone(),
            config: None,
            log_lines: 0,
            ticks: 0,
            cpu_exhausted: false,
        };
        let mut store = Store::new(&self.ctx.engine, state);
        store.limiter(|s| &mut s.memory);
        store
    }
}

/// The most useful line of a trap: the trap code or the guest's own message, without the
/// backtrace that wasmtime's top-level Display starts with.
fn trap_message(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return trap.to_string();
    }
    format!("{:#}", e.root_cause())
}

/// The engine, the linker and the compiled-artifact cache, shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    limits: Limits,
    cache: Option<Arc<ArtifactCache>>,
    /// Key-value stores by plugin name: shared by all versions of a plugin.
    kv: std::sync::Mutex<BTreeMap<String, Arc<KvStore>>>,
    /// Where the key-value stores are kept (`with_kv_store`); in memory without one.
    kv_database: Option<crate::store::Store>,
    /// Config values by plugin name, shared by all versions and changed live: an admin's
    /// new setting reaches the next call without a reload.
    configs: std::sync::Mutex<BTreeMap<String, Arc<PluginConfig>>>,
    /// Sources held for the faults their input caused, across every plugin.
    holds: Arc<Holds>,
    /// Where each plugin's `filesystem` grant directory is (`with_plugin_files`).
    files_root: Option<PathBuf>,
    /// Hosts each plugin's sockets may reach (its settings' `granted_hosts`), by name,
    /// shared by all versions and changed live.
    hosts: std::sync::Mutex<BTreeMap<String, Arc<PluginHosts>>>,
}

impl Runtime {
    /// A runtime with `limits`, caching compiled artifacts in `cache_dir` when given.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.concurrency);
        pool.total_core_instances(limits.concurrency * 4);
        pool.total_memories(limits.concurrency * 2);
        pool.total_tables(limits.concurrency * 2);
        pool.total_stacks(limits.concurrency);
        pool.max_memory_size(limits.memory);
        // Guests built by Rust have one large core module and a few small shims; guests
        // built by componentize-py (CPython and its adapters) have 38 core instances and
        // several memories and tables. These are per-component checks: the pool's totals
        // above bound what is reserved.
        pool.max_core_instances_per_component(64);
        pool.max_memories_per_component(16);
        pool.max_tables_per_component(32);
        // A fresh instance per call is cheap only if its memory is too. By default a slot's
        // memory is reset with madvise on every drop, and the next call page-faults it all
        // back in (with TLB shootdowns): that was most of an isolated call's cost. Keeping
        // the low pages resident, and resetting only the pages a call dirtied (PAGEMAP_SCAN,
        // Linux 6.7+, used when available), avoids both.
        pool.pagemap_scan(wasmtime::Enabled::Auto);
        pool.linear_memory_keep_resident(4 << 20);
        pool.table_keep_resident(64 << 10);
        pool.async_stack_keep_resident(256 << 10);
        pool.decommit_batch_size(32);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        device_type::DeviceType::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        let cache = match cache_dir {
            Some(dir) => Some(Arc::new(ArtifactCache::open(&dir, &engine)?)),
            None => None,
        };
        Ok(Runtime {
            engine,
            linker,
            limits,
            cache,
            kv: Default::default(),
            kv_database: None,
            configs: Default::default(),
            holds: Arc::new(Holds::new(HoldPolicy::default())),
            files_root: None,
            hosts: Default::default(),
        })
    }

    /// Give plugins granted `filesystem` the directory `<root>/<plugin>` (before plugins
    /// load). Without a root, that grant shows the guest no directory.
    pub fn with_plugin_files(mut self, root: PathBuf) -> Runtime {
        self.files_root = Some(root);
        self
    }

    /// Replace the hosts plugin `name`'s sockets may reach; calls that start afterwards
    /// see them.
    pub fn set_hosts(&self, name: &str, hosts: Vec<String>) {
        *self.hosts_of(name).write().unwrap_or_else(|p| p.into_inner()) = hosts;
    }

    fn hosts_of(&self, name: &str) -> Arc<PluginHosts> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone()
    }

    /// What a version of `manifest.name` granted `grants` may reach outside its sandbox.
    fn reach(&self, name: &str, grants: &Grants) -> Result<Reach, String> {
        let mut reach = Reach::default();
        if grants.contains(&Capability::Filesystem)
            && let Some(root) = &self.files_root
        {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            reach.files = Some(dir);
        }
        if grants.contains(&Capability::Network) {
            reach.network = Some(self.hosts_of(name));
        }
        Ok(reach)
    }

    /// Keep plugins' key-value stores in `store` (before plugins load).
    pub fn with_kv_store(mut self, store: crate::store::Store) -> Runtime {
        self.kv_database = Some(store);
        self
    }

    /// Set when a source is held for the faults its input causes (before plugins load).
    pub fn with_hold_policy(mut self, policy: HoldPolicy) -> Runtime {
        self.holds = Arc::new(Holds::new(policy));
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Check, compile, pre-instantiate and smoke-test a plugin. Nothing is published:
    /// the caller decides what to do with the result (the registry swaps it in).
    pub async fn load(&self, bytes: &[u8], options: LoadOptions) -> Result<LoadedPlugin, LoadError> {
        let started = Instant::now();
        let sha256 = sha256_hex(bytes);
        let mut label = sha256[..12].to_string();
        let fail = |label: &str, reason: LoadFailure| LoadError { label: label.to_string(), reason };

        let manifest = Manifest::from_component(bytes).map_err(|e| fail(&label, e.into()))?;
        label = format!("{}@{}", manifest.name, manifest.version);
        // Imports are checked before compiling: a refused plugin costs no compile time.
        let imports = component_imports(bytes)
            .map_err(|e| fail(&label, LoadFailure::Compile(format!("cannot read imports: {e}"))))?;
        check_imports(&manifest.name, imports.iter().map(String::as_str), &manifest.capabilities, &options.grants)
            .map_err(|e| fail(&label, e.into()))?;

        let compile_started = Instant::now();
        let (component, cache) =
            self.compile(bytes, &sha256).await.map_err(|e| fail(&label, LoadFailure::Compile(e)))?;
        let compile_micros = compile_started.elapsed().as_micros() as u64;

        let world_err = |e: wasmtime::Error| LoadFailure::World { kind: manifest.kind, detail: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| fail(&label, world_err(e)))?;
        let exports = match manifest.kind {
            Kind::DeviceType => {
                // A component that exports the enrollment exchange must export it with
                // the contract's types: a mistyped one is refused at load, not found
                // wanting at a device's first enrollment.
                let exchange = component.get_export_index(None, EXCHANGE).is_some();
                let enrolling = if exchange {
                    Some(
                        device_type_enrolling::DeviceTypeEnrollingPre::new(pre.clone())
                            .map_err(|e| fail(&label, world_err(e)))?,
                    )
                } else {
                    None
                };
                device_type::DeviceTypePre::new(pre).map(|pre| Exports::DeviceType(pre, enrolling))
            }
            Kind::Transport => transport::TransportPre::new(pre).map(Exports::Transport),
            Kind::PolicyRule => policy_rule::PolicyRulePre::new(pre).map(Exports::PolicyRule),
        }
        .map_err(|e| fail(&label, world_err(e)))?;

        let reach = self.reach(&manifest.name, &options.grants).map_err(|e| fail(&label, LoadFailure::Compile(e)))?;
        let caller = Caller {
            ctx: Arc::new(PluginContext {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
                config: self.config_of(&manifest.name, options.config),
                kv: self.kv_store(&manifest.name),
                reach,
                engine: self.engine.clone(),
            }),
            limits: self.limits,
            stats: Stats::default(),
            holds: self.holds.clone(),
        };
        // Smoke test: `describe` must answer within limits and agree with the manifest.
        let described =
            describe(&caller, &exports).await.map_err(|e| fail(&label, LoadFailure::SmokeTest(e.to_string())))?;
        let (what, name) = match &described {
            Described::DeviceType(i) => ("device type", &i.name),
            Described::Transport(i) => ("transport", &i.name),
            Described::PolicyRule(i) => ("rule", &i.name),
        };
        if *name != manifest.name {
            let reason = LoadFailure::NameMismatch { what, described: name.clone(), manifest: manifest.name.clone() };
            return Err(fail(&label, reason));
        }
        Ok(LoadedPlugin {
            manifest,
            sha256,
            size: bytes.len(),
            imports,
            granted: options.grants,
            loaded_at: SystemTime::now(),
            load: LoadFigures { cache, compile_micros, total_micros: started.elapsed().as_micros() as u64 },
            described,
            exports,
            caller,
        })
    }

    async fn compile(&self, bytes: &[u8], sha256: &str) -> Result<(Component, CacheOutcome), String> {
        // Cranelift is CPU-bound for tens of milliseconds: keep it off the async workers.
        let engine = self.engine.clone();
        let bytes = bytes.to_vec();
        let sha = sha256.to_string();
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || match cache {
            Some(c) => c.load_or_compile(&engine, &bytes, &sha),
            None => Component::new(&engine, &bytes).map(|c| (c, CacheOutcome::Uncached)),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e:#}"))
    }

    /// Replace plugin `name`'s config values; calls that start afterwards see them.
    pub fn set_config(&self, name: &str, values: BTreeMap<String, String>) {
        let config = self.config_of(name, BTreeMap::new());
        *config.write().unwrap_or_else(|p| p.into_inner()) = values;
    }

    /// Plugin `name`'s config values; `initial` replaces them when not empty.
    fn config_of(&self, name: &str, initial: BTreeMap<String, String>) -> Arc<PluginConfig> {
        let config =
            self.configs.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().clone();
        if !initial.is_empty() {
            *config.write().unwrap_or_else(|p| p.into_inner()) = initial;
        }
        config
    }

    fn kv_store(&self, plugin: &str) -> Arc<KvStore> {
        let mut stores = self.kv.lock().unwrap_or_else(|p| p.into_inner());
        let kv = stores.entry(plugin.to_string()).or_insert_with(|| {
            Arc::new(match &self.kv_database {
                Some(store) => KvStore::Database { store: store.clone(), plugin: plugin.to_string() },
                None => KvStore::default(),
            })
        });
        kv.clone()
    }
}

async fn describe(caller: &Caller, exports: &Exports) -> Result<Described, PluginFault> {
    match exports.clone() {
        Exports::DeviceType(pre, _) => caller
            .call("describe", Source::Admin, move |store| {
                Box::pin(async move { pre.instantiate_async(&mut *store).await?.call_describe(&mut *store).await })
            })
            .await
            .map(Described::DeviceType),
        Exports::Transport(pre) => caller
            .call("describe", Source::Admin, move |store| {
                Box::pin(async move { pre.instantiate_async(&mut *store).await?.call_describe(&mut *store).await })
            })
            .await
            .map(Described::Transport),
        Exports::PolicyRule(pre) => caller
            .call("describe", Source::Admin, move |store| {
                Box::pin(async move { pre.instantiate_async(&mut *store).await?.call_describe(&mut *store).await })
            })
            .await
            .map(Described::PolicyRule),
    }
}

impl LoadedPlugin {
    pub fn kind(&self) -> Kind {
        self.manifest.kind
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.caller.stats.snapshot()
    }

    /// `name@version`, for logs and errors.
    pub fn label(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }
}

/// Advance the engine's epoch every [`EPOCH_TICK`] for as long as the engine lives.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("drover-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}
