//! The host side of the plugin imports `log`, `config` and `kv`: one implementation for
//! every world (the bindings share these interfaces).
//!
//! A call reaches them only when the component imports them, and it can import them only
//! when the capability was requested and granted (`capability.rs`), so no grant check is
//! repeated here.

use super::bindings::device_type::drover::plugin::{config, kv, log, types};
use super::runtime::CallState;

/// Longest log line kept; the rest is cut, so a plugin cannot flood the host log.
pub const MAX_LOG_LINE: usize = 4096;
/// Log lines per call; later lines are dropped and counted.
pub const MAX_LOG_LINES_PER_CALL: u32 = 64;

impl types::Host for CallState {}

impl log::Host for CallState {
    async fn emit(&mut self, level: log::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let (plugin, version) = (self.plugin.name.as_str(), self.plugin.version.as_str());
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", plugin, version, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", plugin, version, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin, version, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin, version, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin, version, "{message}"),
        }
    }
}

impl config::Host for CallState {
    async fn get(&mut self, key: String) -> Option<String> {
        if let Some(config) = &self.config {
            return config.get(&key).cloned();
        }
        self.plugin.config.read().unwrap_or_else(|p| p.into_inner()).get(&key).cloned()
    }
}

/// Trappable (`bindings.rs`): when the database fails the call traps with
/// [`HostUnavailable`](super::context::HostUnavailable), which the runtime does not count
/// against the plugin, rather than answer "no such key" for a value that exists.
impl kv::Host for CallState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.plugin.kv.get(&key).await?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        Ok(self.plugin.kv.set(key, value).await?)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        Ok(self.plugin.kv.delete(&key).await?)
    }
}
