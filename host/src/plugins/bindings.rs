//! Host-side bindings of the worlds of `wit/`.
//!
//! The `device-type` bindings generate the shared interfaces (`types`, `log`, `config`,
//! `kv`); the other two worlds reuse them through `with`, so each host import is
//! implemented once (see `host_imports.rs`) whatever world a plugin exports.

pub mod device_type {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "drover:plugin/device-type",
        // kv reads and writes the database, which can fail: the call then traps
        // (`host_imports.rs`).
        imports: { "drover:plugin/kv": async | trappable, default: async },
        exports: { default: async },
    });

    impl<T: Send + 'static> DeviceTypePre<T> {
        /// [`DeviceTypePre::instantiate_async`] without its second type check. The
        /// generated `instantiate_async` type-checks all five exports again at every
        /// instantiation (`DeviceTypeIndices::load`), though `DeviceTypePre::new` checked
        /// each one against this component's instance type at load, and every instance of
        /// a component has that type: the world's exports use no resources, the only
        /// types that differ between instances. Device-type calls instantiate afresh for
        /// every call, two per poll, and the repeated check was ~3% of a poll's server CPU
        /// (docs/BENCHMARKS.md).
        pub async fn instantiate_checked_at_load(
            &self,
            mut store: impl wasmtime::AsContextMut<Data = T>,
        ) -> wasmtime::Result<DeviceType> {
            let instance = self.instance_pre.instantiate_async(&mut store).await?;
            let indices = &self.indices;
            let mut export = |index: &wasmtime::component::ComponentExportIndex, name: &str| {
                instance.get_func(&mut store, index).ok_or_else(|| wasmtime::format_err!("no export `{name}`"))
            };
            Ok(DeviceType {
                describe: export(&indices.describe, "describe")?,
                validate: export(&indices.validate, "validate")?,
                enroll: export(&indices.enroll, "enroll")?,
                encode: export(&indices.encode, "encode")?,
                decode: export(&indices.decode, "decode")?,
            })
        }
    }
}

/// `device-type-enrolling`: `device-type` and the two exports of an enrollment exchange.
/// A device type's component is loaded as `device-type`; when it also exports these, the
/// host keeps their pre-instantiation too (`runtime.rs`).
pub mod device_type_enrolling {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "drover:plugin/device-type-enrolling",
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
