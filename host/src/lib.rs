//! Drover: a device-management server whose device types, push transports and policy
//! rules are sandboxed WebAssembly components.
//!
//! One module per domain concept; see `docs/` for the design of each seam.

pub mod agent;
pub mod api;
pub mod auth;
pub mod bounds;
pub mod coap;
pub mod config;
pub mod enrollment;
pub mod events;
pub mod files;
pub mod http_listener;
pub mod metrics;
pub mod mqtt;
pub mod oauth;
pub mod ops;
pub mod plugins;
pub mod secrets;
pub mod server;
pub mod store;
pub mod wakeup;
