//! The compiled-artifact cache.
//!
//! Compiling a component with Cranelift takes tens of milliseconds (seconds in a debug
//! host); deserializing the host's own precompiled bytes takes well under one. Artifacts
//! are keyed by the component's sha256 *and* the engine's compatibility hash (wasmtime
//! version, target, tunables), so a different host build never reads another's files.
//!
//! `Component::deserialize` trusts its input completely, so this directory holds
//! only what `Engine::precompile_component` produced here: files are written under a
//! temporary name and renamed into place, the directory is private (0700), and a file
//! that fails to load is removed and recompiled rather than retried.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained, for logs and load figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheOutcome {
    /// Found compiled on disk.
    Hit,
    /// Compiled now and written to the cache.
    Compiled,
    /// Compiled now; no cache configured.
    Uncached,
}

pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

/// The sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ArtifactCache {
    /// A cache in `dir` (created, mode 0700) for artifacts of `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<ArtifactCache> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        // DefaultHasher::new() uses fixed keys: the same engine gives the same key in
        // every run of the same binary, which is all the key needs.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(ArtifactCache { dir: dir.to_path_buf(), engine_key: format!("{:016x}", h.finish()) })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// Load the component with hash `sha256` from the cache, or compile `bytes` and store it.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.path(sha256);
        // Read into memory rather than `deserialize_file`: a mapped file that anything
        // truncates later would take the host down with SIGBUS. Reading costs a fraction
        // of a millisecond for a plugin-sized artifact.
        if let Ok(compiled) = std::fs::read(&path) {
            // SAFETY: files in this directory are written only by `store` below from
            // `Engine::precompile_component` output, and keyed by this engine's
            // compatibility hash; wasmtime checks the header and version as well.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "dropping unreadable compiled artifact");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(e) = self.store(&path, &compiled) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache compiled plugin");
        }
        // SAFETY: `compiled` was produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, compiled)?;
        std::fs::rename(&tmp, path)
    }
}
