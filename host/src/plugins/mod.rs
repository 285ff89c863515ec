//! Plugins: the WebAssembly components that give device types, push transports and
//! policy rules their meaning. See `docs/plugin-runtime.md` for the design.
//!
//! * `manifest`: who a plugin is and what it asks for (embedded custom section);
//! * `capability`: the host imports, and the one place grants are checked;
//! * `runtime`: engine, limits, per-call isolation, loading;
//! * `cache`: compiled artifacts on disk;
//! * `registry`: the loaded plugins, published atomically;
//! * `catalog`: uploads, rollback, grants and the breaker, kept in the database;
//! * `signing`: Ed25519 signatures of components;
//! * `sources`: whose input a call works on, what its faults are charged to, held sources;
//! * `device_type`, `transport`: typed calls the rest of the host makes;
//! * `host_imports`: the host side of `log`, `config`, `kv`.

pub mod bindings;
pub mod cache;
pub mod capability;
pub mod catalog;
pub mod context;
pub mod contract;
pub mod device_type;
pub mod fixtures;
mod host_imports;
pub mod manifest;
pub mod policy_rule;
pub mod registry;
pub mod runtime;
pub mod sandbox;
pub mod signing;
pub mod sources;
pub mod template;
pub mod transport;

pub use bindings::types;
pub use capability::{Capability, Grants};
pub use device_type::{CallError, EnrollContext, EnrollStep, ExchangeIssued, Refusal};
pub use manifest::{Kind, Manifest};
pub use registry::{PluginSummary, Registry};
pub use runtime::{Described, Fault, Limits, LoadError, LoadOptions, LoadedPlugin, PluginFault, Runtime};
pub use sources::Source;

/// First-party plugins, built for wasm32-wasip2 by `host/build.rs` and embedded in the
/// binary so a fresh `drover serve` has them without any file beside it.
pub mod first_party {
    include!(concat!(env!("OUT_DIR"), "/first_party.rs"));
}
