//! The call context: what every call of one plugin shares (its identity, config values
//! and kv store). Made by the runtime when it loads a version, read by the host imports
//! during a call; apart from both so neither imports the other for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// A plugin's config values.
pub type PluginConfig = std::sync::RwLock<BTreeMap<String, String>>;

/// Per-plugin key-value store with a quota. Kept in memory by the runtime; it outlives
/// plugin versions (all versions of a plugin share it).
#[derive(Default)]
pub struct KvStore {
    map: Mutex<HashMap<String, Vec<u8>>>,
}

/// Limits of a plugin's key-value store.
pub const KV_MAX_KEY: usize = 256;
pub const KV_MAX_VALUE: usize = 64 * 1024;
pub const KV_MAX_TOTAL: usize = 4 * 1024 * 1024;

impl KvStore {
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    pub fn set(&self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.is_empty() || key.len() > KV_MAX_KEY {
            return Err(format!("kv key must be 1 to {KV_MAX_KEY} bytes"));
        }
        if value.len() > KV_MAX_VALUE {
            return Err(format!("kv value of {} bytes is over the {KV_MAX_VALUE}-byte limit", value.len()));
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let old = map.get(&key).map_or(0, |v| key.len() + v.len());
        let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total - old + key.len() + value.len() > KV_MAX_TOTAL {
            return Err(format!("kv store is full ({KV_MAX_TOTAL} bytes per plugin)"));
        }
        map.insert(key, value);
        Ok(())
    }

    pub fn delete(&self, key: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// What a plugin's calls share: its identity for logs, its config values, its kv store.
pub struct PluginContext {
    pub name: String,
    pub version: String,
    pub config: std::sync::Arc<PluginConfig>,
    pub kv: std::sync::Arc<KvStore>,
    /// The engine calls are made on (kept here so a call needs only this context).
    pub engine: wasmtime::Engine,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_quota() {
        let kv = KvStore::default();
        kv.set("a".into(), vec![1; 10]).unwrap();
        assert_eq!(kv.get("a"), Some(vec![1; 10]));
        assert!(kv.set("b".into(), vec![0; KV_MAX_VALUE + 1]).unwrap_err().contains("limit"));
        assert!(kv.set(String::new(), vec![]).is_err());
        for i in 0..(KV_MAX_TOTAL / KV_MAX_VALUE) - 1 {
            kv.set(format!("k{i}"), vec![0; KV_MAX_VALUE]).unwrap();
        }
        assert!(kv.set("last".into(), vec![0; KV_MAX_VALUE]).unwrap_err().contains("full"));
        // Overwriting an existing key counts only the difference.
        kv.set("k0".into(), vec![1; KV_MAX_VALUE]).unwrap();
        kv.delete("k0");
        assert_eq!(kv.get("k0"), None);
    }
}
