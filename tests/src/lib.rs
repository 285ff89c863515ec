//! Helpers for Drover's end-to-end tests: the compiled test plugins, a runtime shared by
//! the tests of one binary (so each component compiles once), and a real server on a
//! free loopback port.

use drover::plugins::{Limits, Runtime};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Paths of the compiled test plugins (tests/plugins/*), built by build.rs.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// The bytes of a compiled test plugin.
pub fn component(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The first-party Android plugin, as embedded in the server.
pub fn android() -> &'static [u8] {
    drover::plugins::first_party::PLUGINS
        .iter()
        .find(|(n, _)| *n == "android")
        .map(|(_, b)| *b)
        .expect("android is a first-party plugin")
}

/// Compiled artifacts shared by every test binary and run, so components compile once.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-cache/compiled"))
}

/// One runtime with default limits for all tests of a binary.
pub fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME.get_or_init(|| Arc::new(Runtime::new(Limits::default(), Some(cache_dir())).expect("runtime"))).clone()
}
