//! # drover-sdk: write Drover plugins in Rust
//!
//! A Drover plugin is a WebAssembly component implementing one world of the
//! `drover:plugin@0.1.0` contract (its WIT is in this crate's `wit/`; see Drover's
//! `docs/plugin-contract.md`):
//!
//! * [`device_type`]: translate a device type's wire format (Android JSON, Apple MDM
//!   plists, OMA-DM SyncML, LwM2M TLV …) to and from the host's model;
//! * [`device_type_enrolling`]: the same, with an enrollment of several requests in the
//!   device's own protocol (Windows MS-MDE2);
//! * [`transport`]: build push/wake-up requests for a provider (FCM, APNS, WNS);
//! * [`policy_rule`]: a custom compliance rule.
//!
//! Enable the feature of the world you implement (`device-type`, `transport` or
//! `policy-rule`): each world's bindings are linked only when asked for, so a component
//! imports nothing of the worlds it does not implement.
//!
//! An author implements the world's `Guest` trait and writes one macro line:
//!
//! ```ignore
//! use drover_sdk::device_type::{Guest, types::*};
//! struct MyType;
//! impl Guest for MyType { /* describe, validate, enroll, encode, decode */ }
//! drover_sdk::export_device_type!(MyType);
//! ```
//!
//! The macro also embeds the crate's `plugin.toml` (the manifest: name, version, kind,
//! publisher, requested capabilities) into the component as the custom section
//! [`MANIFEST_SECTION`], so one `.wasm` file is the whole plugin. Build with
//! `cargo build --release --target wasm32-wasip2`.

/// Name of the custom section holding the plugin manifest (TOML text).
pub const MANIFEST_SECTION: &str = "drover-manifest";

/// Bindings for the `device-type` world (feature `device-type`).
#[cfg(feature = "device-type")]
#[allow(clippy::too_many_arguments)]
pub mod device_type {
    wit_bindgen::generate!({
        path: "wit",
        world: "drover:plugin/device-type",
        pub_export_macro: true,
        export_macro_name: "__export_device_type",
        default_bindings_module: "drover_sdk::device_type",
    });
    crate::error_helpers!(super::drover::plugin::types);
    crate::log_helpers!(super::drover::plugin::log);
}

/// Bindings for the `device-type-enrolling` world (feature `device-type-enrolling`): a
/// device type whose enrollment is an exchange of several requests in the device's own
/// protocol (Windows MS-MDE2). Its `Guest` has `device-type`'s five functions, and
/// `exports::drover::plugin::enrollment_exchange::Guest` the exchange's two; the shared
/// types are [`device_type`]'s, so a plugin moves to this world by changing its `Guest`
/// import and export macro and implementing the second trait.
#[cfg(feature = "device-type-enrolling")]
#[allow(clippy::too_many_arguments)]
pub mod device_type_enrolling {
    wit_bindgen::generate!({
        path: "wit",
        world: "drover:plugin/device-type-enrolling",
        pub_export_macro: true,
        export_macro_name: "__export_device_type_enrolling",
        default_bindings_module: "drover_sdk::device_type_enrolling",
        with: {
            "drover:plugin/types@0.1.0": crate::device_type::drover::plugin::types,
            "drover:plugin/log@0.1.0": crate::device_type::drover::plugin::log,
            "drover:plugin/config@0.1.0": crate::device_type::drover::plugin::config,
            "drover:plugin/kv@0.1.0": crate::device_type::drover::plugin::kv,
        },
    });
}

/// Bindings for the `transport` world (feature `transport`).
#[cfg(feature = "transport")]
#[allow(clippy::too_many_arguments)]
pub mod transport {
    wit_bindgen::generate!({
        path: "wit",
        world: "drover:plugin/transport",
        pub_export_macro: true,
        export_macro_name: "__export_transport",
        default_bindings_module: "drover_sdk::transport",
    });
    crate::error_helpers!(super::drover::plugin::types);
    crate::log_helpers!(super::drover::plugin::log);
}

/// Bindings for the `policy-rule` world (feature `policy-rule`).
#[cfg(feature = "policy-rule")]
#[allow(clippy::too_many_arguments)]
pub mod policy_rule {
    wit_bindgen::generate!({
        path: "wit",
        world: "drover:plugin/policy-rule",
        pub_export_macro: true,
        export_macro_name: "__export_policy_rule",
        default_bindings_module: "drover_sdk::policy_rule",
    });
    crate::error_helpers!(super::drover::plugin::types);
    crate::log_helpers!(super::drover::plugin::log);
}

/// Constructors for `plugin-error`, so plugin code reads `PluginError::invalid("…")`.
#[doc(hidden)]
#[macro_export]
macro_rules! error_helpers {
    ($types:path) => {
        mod error_impl {
            use $types::{ErrorCode, PluginError};
            impl PluginError {
                pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
                    PluginError { code, message: message.into() }
                }
                /// The input could not be parsed.
                pub fn malformed(message: impl Into<String>) -> Self {
                    Self::new(ErrorCode::Malformed, message)
                }
                /// A field is missing or has a bad value.
                pub fn invalid(message: impl Into<String>) -> Self {
                    Self::new(ErrorCode::Invalid, message)
                }
                /// The operation code is not known to this type.
                pub fn unknown_operation(code: &str) -> Self {
                    Self::new(ErrorCode::UnknownOperation, format!("unknown operation code `{code}`"))
                }
                /// Valid, but not supported by this plugin.
                pub fn unsupported(message: impl Into<String>) -> Self {
                    Self::new(ErrorCode::Unsupported, message)
                }
                /// The device is refused.
                pub fn rejected(message: impl Into<String>) -> Self {
                    Self::new(ErrorCode::Rejected, message)
                }
            }
        }
    };
}

/// `log::info("…")` and friends over the `log` import (capability `log`).
#[doc(hidden)]
#[macro_export]
macro_rules! log_helpers {
    ($log:path) => {
        /// Log through the host (needs the `log` capability in plugin.toml).
        pub mod logging {
            use $log::{Level, emit};
            pub fn debug(message: &str) {
                emit(Level::Debug, message)
            }
            pub fn info(message: &str) {
                emit(Level::Info, message)
            }
            pub fn warn(message: &str) {
                emit(Level::Warn, message)
            }
            pub fn error(message: &str) {
                emit(Level::Error, message)
            }
        }
    };
}

/// Embed `plugin.toml` of the invoking crate as the [`MANIFEST_SECTION`] custom section.
#[doc(hidden)]
#[macro_export]
macro_rules! embed_manifest {
    () => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = "drover-manifest")]
        #[used]
        static __DROVER_MANIFEST: [u8; include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/plugin.toml")).len()] =
            *include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/plugin.toml"));
    };
}

/// Export a `device-type` plugin: `drover_sdk::export_device_type!(MyType);`
#[macro_export]
macro_rules! export_device_type {
    ($ty:ident) => {
        $crate::embed_manifest!();
        $crate::device_type::__export_device_type!($ty with_types_in $crate::device_type);
    };
}

/// Export a `device-type-enrolling` plugin: `drover_sdk::export_device_type_enrolling!(MyType);`
#[macro_export]
macro_rules! export_device_type_enrolling {
    ($ty:ident) => {
        $crate::embed_manifest!();
        $crate::device_type_enrolling::__export_device_type_enrolling!($ty with_types_in $crate::device_type_enrolling);
    };
}

/// Export a `transport` plugin: `drover_sdk::export_transport!(MyTransport);`
#[macro_export]
macro_rules! export_transport {
    ($ty:ident) => {
        $crate::embed_manifest!();
        $crate::transport::__export_transport!($ty with_types_in $crate::transport);
    };
}

/// Export a `policy-rule` plugin: `drover_sdk::export_policy_rule!(MyRule);`
#[macro_export]
macro_rules! export_policy_rule {
    ($ty:ident) => {
        $crate::embed_manifest!();
        $crate::policy_rule::__export_policy_rule!($ty with_types_in $crate::policy_rule);
    };
}
