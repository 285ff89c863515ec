//! Credentials and roles: admin tokens (viewer < operator < admin) and per-device
//! access tokens. Every token is 32 random bytes shown once and stored as SHA-256.
//! (How a request presents them is the HTTP front's: `http/extract.rs`.)

use crate::store::Store;
use sha2::{Digest, Sha256};
use std::path::Path;

/// What an admin token may do. Ordered: each role can do what the ones before it can.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also add and cancel operations, tag and group devices.
    Operator,
    /// Also enroll and remove devices, manage tokens and plugins.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Admin].into_iter().find(|r| r.as_str() == s)
    }
}

/// A new random token with a readable prefix (`drv_admin_…`, `drv_dev_…`) and its hash.
pub fn new_token(prefix: &str) -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    let token = format!("drv_{prefix}_{}", hex::encode(bytes));
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Make sure a bootstrap admin token exists: `DROVER_ADMIN_TOKEN` when set, else the
/// one in `<data-dir>/admin-token` (created with mode 0600 on first start).
pub async fn bootstrap_admin(store: &Store, data_dir: &Path, from_env: Option<String>) -> anyhow::Result<()> {
    let token = match from_env.filter(|t| !t.trim().is_empty()) {
        Some(t) => {
            tracing::info!("bootstrap admin token taken from DROVER_ADMIN_TOKEN");
            t.trim().to_string()
        }
        None => {
            let path = data_dir.join("admin-token");
            match std::fs::read_to_string(&path) {
                Ok(t) => t.trim().to_string(),
                Err(_) => {
                    let (t, _) = new_token("admin");
                    crate::files::write_private(&path, format!("{t}\n").as_bytes())?;
                    tracing::info!(path = %path.display(), "generated the bootstrap admin token");
                    t
                }
            }
        }
    };
    let hash = hash_token(&token);
    if store.admin_for_token(&hash).await?.is_some() {
        // Live already.
    } else if store.admin_token_known(&hash).await? {
        // An admin revoked it (or it expired): a restart must not bring it back.
        tracing::warn!("the bootstrap admin token was revoked; it stays revoked (use another admin token)");
    } else {
        // New (first start, or DROVER_ADMIN_TOKEN changed): it replaces the previous one.
        store.replace_admin_token(&hash, "bootstrap", Role::Admin.as_str()).await?;
    }
    tracing::info!(path = %data_dir.join("admin-token").display(), "admin API token ready");
    Ok(())
}
