//! Drover: a device-management server whose device types, push transports and policy
//! rules are sandboxed WebAssembly components.
//!
//! One module per domain concept; docs/architecture.md draws the layers:
//!
//! * domain: `core` (shared state), `error`, `events`, the services `operations`,
//!   `enrollment`, `delivery` and `plugin_settings`, the state machine `ops`, and what
//!   they use (`auth`, `bounds`, `egress`, `oauth`, `push_token`, `secrets`, `stats`);
//! * storage (`store`) and the plugin runtime (`plugins`);
//! * fronts: `http`, `mqtt`, `coap`, `wakeup`, each built on the core and never on
//!   another front;
//! * `server`, the composition root that starts them all.

pub mod auth;
pub mod bounds;
pub mod coap;
pub mod config;
pub mod core;
pub mod delivery;
pub mod egress;
pub mod enrollment;
pub mod error;
pub mod events;
pub mod files;
pub mod http;
pub mod mqtt;
pub mod oauth;
pub mod operations;
pub mod ops;
pub mod plugin_settings;
pub mod plugins;
pub mod push_token;
pub mod secrets;
pub mod server;
pub mod stats;
pub mod store;
pub mod wakeup;
