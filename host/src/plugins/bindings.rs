//! Host-side bindings of the three worlds of `wit/`.
//!
//! The `device-type` bindings generate the shared interfaces (`types`, `log`, `config`,
//! `kv`); the other two worlds reuse them through `with`, so each host import is
//! implemented once (see `host_imports.rs`) whatever world a plugin exports.

pub mod device_type {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "drover:plugin/device-type",
        imports: { default: async },
        exports: { default: async },
    });
}

pub mod transport {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "drover:plugin/transport",
        imports: { default: async },
        exports: { default: async },
        with: {
            "drover:plugin/types": super::device_type::drover::plugin::types,
            "drover:plugin/log": super::device_type::drover::plugin::log,
            "drover:plugin/config": super::device_type::drover::plugin::config,
            "drover:plugin/kv": super::device_type::drover::plugin::kv,
        },
    });
}

pub mod policy_rule {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "drover:plugin/policy-rule",
        imports: { default: async },
        exports: { default: async },
        with: {
            "drover:plugin/types": super::device_type::drover::plugin::types,
            "drover:plugin/log": super::device_type::drover::plugin::log,
            "drover:plugin/config": super::device_type::drover::plugin::config,
            "drover:plugin/kv": super::device_type::drover::plugin::kv,
        },
    });
}

pub use device_type::drover::plugin::types;
