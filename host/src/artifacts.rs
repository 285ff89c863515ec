//! Artifacts: firmware and application images that rollouts send (docs/rollouts.md).
//!
//! The bytes live in an [`ArtifactStorage`], content-addressed by SHA-256; the database
//! holds what Drover knows of each (name, version, device types, models, size, digest,
//! who signed it). The default storage is a directory under the data directory; the
//! trait is the seam where an object store (S3, GCS) replaces it when replicas do not
//! share a disk: it would hand out its own pre-signed URLs instead of a local file.
//!
//! A device downloads an image with a per-device, expiring grant: a random token in the
//! URL it is sent, whose hash the database keeps with the device, the artifact and the
//! expiry. The URL is unguessable, says nothing about the device, stops working when it
//! expires, and dies with the device or the artifact.

use crate::core::Core;
use crate::error::{Error, Result};
use crate::store::{ArtifactRow, NewArtifact};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Largest image accepted (a phone OS image fits; an ESP8266 slot is 1 MiB).
pub const MAX_ARTIFACT: u64 = 2 << 30;

/// Where the bytes of artifacts are kept.
pub trait ArtifactStorage: Send + Sync {
    /// A directory on the same file system as the storage, for uploads in progress.
    fn staging(&self) -> &Path;
    /// Keep the finished upload at `staged` as the bytes of `sha256` (a rename).
    fn keep(&self, staged: &Path, sha256: &str) -> std::io::Result<()>;
    /// The local file holding the bytes of `sha256`.
    fn file(&self, sha256: &str) -> PathBuf;
    /// Forget the bytes of `sha256`.
    fn remove(&self, sha256: &str) -> std::io::Result<()>;
}

/// The default storage: `{data dir}/artifacts/{sha256}`.
pub struct DirStorage {
    root: PathBuf,
    staging: PathBuf,
}

impl DirStorage {
    pub fn open(data_dir: &Path) -> std::io::Result<DirStorage> {
        let root = data_dir.join("artifacts");
        let staging = root.join("staging");
        crate::files::private_dir(&root)?;
        crate::files::private_dir(&staging)?;
        Ok(DirStorage { root, staging })
    }
}

impl ArtifactStorage for DirStorage {
    fn staging(&self) -> &Path {
        &self.staging
    }

    fn keep(&self, staged: &Path, sha256: &str) -> std::io::Result<()> {
        std::fs::rename(staged, self.file(sha256))
    }

    fn file(&self, sha256: &str) -> PathBuf {
        // The digest is 64 hex digits (checked by every caller): no path can be made of it.
        debug_assert!(sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()));
        self.root.join(sha256)
    }

    fn remove(&self, sha256: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.file(sha256)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// An upload as the admin described it; the bytes are already staged.
pub struct Upload {
    pub name: String,
    pub version: String,
    pub device_types: Vec<String>,
    pub models: Vec<String>,
    /// The digest the uploader expects; the upload is refused when the bytes differ.
    pub expected_sha256: Option<String>,
    /// Ed25519 signature over the bytes (raw or base64).
    pub signature: Option<Vec<u8>>,
    /// The staged file, its size and SHA-256 (computed while it was received).
    pub staged: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// The tenant whose it is (then named `TENANT/NAME`); `None`: the operators'.
    pub tenant: Option<String>,
}

/// Check an upload and keep it: name and version well formed, device types loaded and
/// able to update, the digest as expected, the signature from a registered publisher
/// key. The staged file is removed on refusal.
pub async fn add(core: &Core, up: Upload, actor: &str) -> Result<ArtifactRow> {
    let staged = up.staged.clone();
    let result = check_and_keep(core, up, actor).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&staged).await;
    }
    result
}

async fn check_and_keep(core: &Core, up: Upload, actor: &str) -> Result<ArtifactRow> {
    let storage = core.artifacts.clone();
    for (field, value, max) in [("name", &up.name, 128), ("version", &up.version, 32)] {
        if value.trim().is_empty() || value.chars().count() > max || value.chars().any(|c| c.is_control() || c == '/') {
            return Err(Error::invalid("invalid", format!("`{field}` must be 1 to {max} characters, without `/`")));
        }
    }
    if up.device_types.is_empty() {
        return Err(Error::invalid("invalid", "`device_types` names no device type"));
    }
    for t in &up.device_types {
        let plugin = core.registry.device_type(t).ok_or_else(|| {
            Error::invalid("unknown_device_type", format!("no plugin is loaded for device type `{t}`"))
        })?;
        let updates = plugin.device_type_info().is_some_and(|i| i.operations.iter().any(|o| o.code == UPDATE_CODE));
        if !updates {
            return Err(Error::invalid(
                "unsupported",
                format!("device type `{t}` cannot take updates: its plugin declares no `{UPDATE_CODE}`"),
            ));
        }
    }
    if let Some(want) = &up.expected_sha256
        && !want.eq_ignore_ascii_case(&up.sha256)
    {
        return Err(Error::invalid(
            "sha256_mismatch",
            format!(
                "the upload's SHA-256 is {}, not the `sha256` given ({want}): the file is not the one meant",
                up.sha256
            ),
        ));
    }
    let signed_by = match &up.signature {
        None => None,
        Some(sig) => {
            let sig = crate::plugins::signing::parse_signature(sig)
                .map_err(|e| Error::invalid("bad_signature", format!("`signature`: {e}")))?;
            let keys: Vec<_> = core
                .store
                .publisher_keys()
                .await?
                .into_iter()
                .filter_map(|k| crate::plugins::signing::parse_public_key(&k.public_key).ok().map(|v| (k.key_id, v)))
                .collect();
            if keys.is_empty() {
                return Err(Error::invalid(
                    "bad_signature",
                    "the upload is signed but no publisher key is registered (POST /api/v1/plugins/keys)",
                ));
            }
            let bytes =
                tokio::fs::read(&up.staged).await.map_err(|e| Error::internal(format!("staged upload: {e}")))?;
            let id = tokio::task::spawn_blocking(move || {
                crate::plugins::signing::verify(&keys, &bytes, &sig).map(str::to_string)
            })
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
            Some(id.ok_or_else(|| {
                Error::invalid(
                    "bad_signature",
                    "the signature is not valid for these bytes under any registered publisher key",
                )
            })?)
        }
    };
    if let Some(t) = &up.tenant {
        crate::tenants::check_storage(&core.store, t, up.size, core.tenant_storage).await?;
    }
    let (staged, sha) = (up.staged.clone(), up.sha256.clone());
    tokio::task::spawn_blocking(move || storage.keep(&staged, &sha))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| Error::internal(format!("cannot keep the artifact: {e}")))?;
    // A tenant's artifact is named `TENANT/NAME` (the name given holds no `/`), so tenants
    // never collide on, or learn of, each other's names.
    let name = crate::tenants::qualified(up.tenant.as_deref(), &up.name);
    let row = core
        .store
        .add_artifact(&NewArtifact {
            name: &name,
            version: &up.version,
            device_types: &up.device_types,
            models: &up.models,
            size: up.size as i64,
            sha256: &up.sha256,
            signed_by: signed_by.as_deref(),
            created_by: actor,
            tenant: up.tenant.as_deref(),
        })
        .await;
    let row = match row {
        Ok(r) => r,
        Err(e) => {
            // Another artifact may hold the same bytes: they stay for it.
            if !core.store.artifact_bytes_shared(&up.sha256).await.unwrap_or(true) {
                let _ = core.artifacts.remove(&up.sha256);
            }
            return Err(e.into());
        }
    };
    let data = serde_json::json!({"name": row.name, "version": row.version, "size": row.size, "sha256": row.sha256,
                                  "signed_by": row.signed_by});
    core.store.append_event(&event(&row, "added", data, actor)).await?;
    Ok(row)
}

/// An artifact's event (`artifact.*`); a tenant's artifact's is the tenant's too.
fn event(a: &ArtifactRow, what: &str, data: serde_json::Value, actor: &str) -> crate::store::NewEvent {
    crate::store::NewEvent {
        tenant: a.tenant.clone(),
        ..crate::rollouts::event(&format!("artifact.{what}"), format!("artifact/{}/{}", a.name, a.version), data, actor)
    }
}

/// Delete an artifact (and its bytes, unless another artifact has the same), refused
/// while a rollout that is not over uses it.
pub async fn remove(core: &Core, a: &ArtifactRow, actor: &str) -> Result<()> {
    let (name, version) = (&a.name, &a.version);
    core.store.delete_artifact(a.id).await.map_err(|e| match e {
        crate::store::StoreError::Refused(why) => {
            Error::conflict("in_use", format!("artifact {name} {version}: {why}"))
        }
        other => other.into(),
    })?;
    if !core.store.artifact_bytes_shared(&a.sha256).await? {
        core.artifacts.remove(&a.sha256).map_err(|e| Error::internal(format!("cannot remove the bytes: {e}")))?;
    }
    core.store.append_event(&event(a, "removed", serde_json::json!({"name": name, "version": version}), actor)).await?;
    Ok(())
}

/// The operation code that updates a device from an artifact; a device type takes part
/// in rollouts when its plugin declares it (docs/plugin-contract.md).
pub const UPDATE_CODE: &str = "FIRMWARE_UPDATE";
/// The code that sends a device back to an older image; declared where the device type
/// can go back.
pub const ROLLBACK_CODE: &str = "FIRMWARE_ROLLBACK";

/// A new download grant: the token for the URL, and the hash the database keeps.
pub fn new_grant() -> (String, String) {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS random source works");
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let hash = grant_hash(&token);
    (token, hash)
}

pub fn grant_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The payload of an update from `artifact` whose download URL carries `token`: the
/// standard form every plugin declaring `FIRMWARE_UPDATE` takes.
pub fn update_payload(public_url: &str, artifact: &ArtifactRow, token: &str) -> String {
    serde_json::json!({
        "url": format!("{}/download/{token}", public_url.trim_end_matches('/')),
        "sha256": artifact.sha256,
        "size": artifact.size,
        "version": artifact.version,
    })
    .to_string()
}
