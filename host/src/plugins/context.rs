//! The call context: what every call of one plugin shares (its identity, config values
//! and kv store). Made by the runtime when it loads a version, read by the host imports
//! during a call; apart from both so neither imports the other for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// A plugin's config values.
pub type PluginConfig = std::sync::RwLock<BTreeMap<String, String>>;

/// A plugin's key-value store (the `kv` capability), with a quota. In the database
/// (`store/kv.rs`) when the runtime serves a server, so that every version of a plugin and
/// every replica see the same values and they survive a restart; in memory for a runtime
/// without a database (`drover plugin check`, the runtime's own tests).
pub enum KvStore {
    Memory(Mutex<HashMap<String, Vec<u8>>>),
    Database { store: crate::store::Store, plugin: String },
}

impl Default for KvStore {
    fn default() -> KvStore {
        KvStore::Memory(Mutex::default())
    }
}

/// Limits of a plugin's key-value store.
pub const KV_MAX_KEY: usize = 256;
pub const KV_MAX_VALUE: usize = 64 * 1024;
pub const KV_MAX_TOTAL: usize = 4 * 1024 * 1024;

/// What the host could not do for a call (its database failed): the call traps with it,
/// and the runtime answers "unavailable" without counting a fault against the plugin,
/// which did nothing wrong (`runtime.rs`).
#[derive(Debug, thiserror::Error)]
#[error("the host could not serve the plugin's {what}: {error}")]
pub struct HostUnavailable {
    pub what: &'static str,
    pub error: String,
}

impl HostUnavailable {
    fn kv(e: crate::store::StoreError) -> HostUnavailable {
        tracing::error!(target: "plugin", "plugin kv store: {e}");
        HostUnavailable { what: "key-value store", error: e.to_string() }
    }
}

/// Why `key` cannot be a kv key. A NUL is refused: PostgreSQL's text cannot hold one, and
/// the database's error would be taken for the host's failure instead of the plugin's.
fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() || key.len() > KV_MAX_KEY {
        Some(format!("kv key must be 1 to {KV_MAX_KEY} bytes"))
    } else if key.contains('\0') {
        Some("kv key must not contain NUL".into())
    } else {
        None
    }
}

impl KvStore {
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, HostUnavailable> {
        if key_problem(key).is_some() {
            return Ok(None); // never stored
        }
        match self {
            KvStore::Memory(map) => Ok(map.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()),
            KvStore::Database { store, plugin } => store.kv_get(plugin, key).await.map_err(HostUnavailable::kv),
        }
    }

    /// `Ok(Err(why))`: refused (the plugin's to handle); `Err`: the host failed.
    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<Result<(), String>, HostUnavailable> {
        if let Some(problem) = key_problem(&key) {
            return Ok(Err(problem));
        }
        if value.len() > KV_MAX_VALUE {
            return Ok(Err(format!("kv value of {} bytes is over the {KV_MAX_VALUE}-byte limit", value.len())));
        }
        let full = || format!("kv store is full ({KV_MAX_TOTAL} bytes per plugin)");
        match self {
            KvStore::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                let old = map.get(&key).map_or(0, |v| key.len() + v.len());
                let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
                if total - old + key.len() + value.len() > KV_MAX_TOTAL {
                    return Ok(Err(full()));
                }
                map.insert(key, value);
                Ok(Ok(()))
            }
            KvStore::Database { store, plugin } => {
                let stored = store.kv_set(plugin, &key, &value, KV_MAX_TOTAL).await.map_err(HostUnavailable::kv)?;
                Ok(if stored { Ok(()) } else { Err(full()) })
            }
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), HostUnavailable> {
        if key_problem(key).is_some() {
            return Ok(()); // never stored
        }
        match self {
            KvStore::Memory(map) => {
                map.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
                Ok(())
            }
            KvStore::Database { store, plugin } => store.kv_delete(plugin, key).await.map_err(HostUnavailable::kv),
        }
    }
}

/// What a plugin's calls share: its identity for logs, its config values, its kv store.
pub struct PluginContext {
    pub name: String,
    pub version: String,
    pub config: std::sync::Arc<PluginConfig>,
    pub kv: std::sync::Arc<KvStore>,
    /// What the `filesystem` and `network` grants let its calls reach (sandbox.rs).
    pub reach: super::sandbox::Reach,
    /// The engine calls are made on (kept here so a call needs only this context).
    pub engine: wasmtime::Engine,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kv_quota() {
        let kv = KvStore::default();
        kv.set("a".into(), vec![1; 10]).await.unwrap().unwrap();
        assert_eq!(kv.get("a").await.unwrap(), Some(vec![1; 10]));
        assert!(kv.set("b".into(), vec![0; KV_MAX_VALUE + 1]).await.unwrap().unwrap_err().contains("limit"));
        assert!(kv.set(String::new(), vec![]).await.unwrap().is_err());
        assert!(kv.set("a\0b".into(), vec![]).await.unwrap().unwrap_err().contains("NUL"));
        assert_eq!(kv.get("a\0b").await.unwrap(), None);
        for i in 0..(KV_MAX_TOTAL / KV_MAX_VALUE) - 1 {
            kv.set(format!("k{i}"), vec![0; KV_MAX_VALUE]).await.unwrap().unwrap();
        }
        assert!(kv.set("last".into(), vec![0; KV_MAX_VALUE]).await.unwrap().unwrap_err().contains("full"));
        // Overwriting an existing key counts only the difference.
        kv.set("k0".into(), vec![1; KV_MAX_VALUE]).await.unwrap().unwrap();
        kv.delete("k0").await.unwrap();
        assert_eq!(kv.get("k0").await.unwrap(), None);
    }
}
