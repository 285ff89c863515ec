//! Secrets at rest, and secrets in what Drover prints.
//!
//! **At rest.** What an admin sets for a plugin can hold credentials: provider access
//! tokens and webhook secrets among its config values, a TLS client identity's private
//! key, a Google service account's private key. The store seals them (AES-256-GCM, a fresh
//! 96-bit nonce per value, the plugin name and field as associated data, so a sealed value
//! cannot be moved to another plugin or field) with a key kept **outside the database**: a
//! key file (`--secret-key-file`, default `DATA_DIR/secret.key`, made on first start with
//! mode 0600) or `DROVER_SECRET_KEY` (64 hex digits). A copy of the database alone (a
//! backup, a replica's disk, a dump) does not give the secrets away.
//!
//! A sealed value reads `drv1:KEYID:BASE64`, where `KEYID` is the first 8 hex digits of the
//! key's SHA-256: a value sealed with a key the server does not have is named as such
//! rather than read as garbage. Values written before sealing existed are read as they are
//! and sealed at the next start.
//!
//! **Rotation.** Start with the new key as the key and the old one in
//! `--previous-secret-key-file`: values sealed with the old key are read with it and sealed
//! again with the new one at start. Then the old key can go. Every replica of one database
//! needs the same key (give each the same file or variable).
//!
//! **In print.** [`redact_url`] takes the password out of a database or broker URL before
//! it is logged or put in an error.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use std::path::Path;

const PREFIX: &str = "drv1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "a secret in the database was sealed with key {0}, which this server does not have: give it that key (--secret-key-file, DROVER_SECRET_KEY) or the previous one (--previous-secret-key-file)"
    )]
    UnknownKey(String),
    #[error("a sealed secret in the database is damaged or was moved from another place ({0})")]
    Damaged(String),
    #[error("secret key {where_}: {why}")]
    Key { where_: String, why: String },
}

struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Key {
        let id = hex::encode(Sha256::digest(bytes))[..8].to_string();
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"));
        Key { id, key }
    }
}

/// Seals and opens secrets. Without a key (tests that build a store by hand) values pass
/// through unchanged.
#[derive(Default)]
pub struct Sealer {
    current: Option<Key>,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("key", &self.current.as_ref().map(|k| &k.id)).finish()
    }
}

fn parse_hex_key(text: &str, where_: &str) -> Result<[u8; 32], SecretError> {
    let bad = |why: &str| SecretError::Key { where_: where_.into(), why: why.into() };
    let raw = hex::decode(text.trim()).map_err(|_| bad("expected 64 hex digits"))?;
    raw.try_into().map_err(|_| bad("expected 64 hex digits (32 bytes)"))
}

/// Read a key file, or make one (mode 0600) when `create` and it does not exist.
fn key_file(path: &Path, create: bool) -> Result<[u8; 32], SecretError> {
    let where_ = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_hex_key(&text, &where_),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| SecretError::Key { where_: where_.clone(), why: e.to_string() })?;
            crate::files::write_private(path, format!("{}\n", hex::encode(bytes)).as_bytes())
                .map_err(|e| SecretError::Key { where_: where_.clone(), why: e.to_string() })?;
            tracing::info!(path = %where_, "secret key made: keep it with the database's backups, apart from them");
            Ok(bytes)
        }
        Err(e) => Err(SecretError::Key { where_, why: e.to_string() }),
    }
}

impl Sealer {
    /// The server's sealer: the key from `DROVER_SECRET_KEY` (hex) when set, else from
    /// `key_file` (made when missing); `previous` opens values sealed before a rotation.
    pub fn load(env_key: Option<&str>, key_file_path: &Path, previous: Option<&Path>) -> Result<Sealer, SecretError> {
        let current = match env_key {
            Some(hex) => parse_hex_key(hex, "DROVER_SECRET_KEY")?,
            None => key_file(key_file_path, true)?,
        };
        let previous = match previous {
            Some(p) => vec![Key::new(&key_file(p, false)?)],
            None => vec![],
        };
        Ok(Sealer { current: Some(Key::new(&current)), previous })
    }

    /// A sealer with `key` (tests).
    pub fn with_key(key: [u8; 32]) -> Sealer {
        Sealer { current: Some(Key::new(&key)), previous: vec![] }
    }

    /// Seal `plain`, bound to `place` (e.g. `fcm/config`).
    pub fn seal(&self, place: &str, plain: &str) -> String {
        let Some(k) = &self.current else { return plain.to_string() };
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source");
        let mut data = plain.as_bytes().to_vec();
        k.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(place.as_bytes()), &mut data)
            .expect("sealing fails only on absurd lengths");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        use base64::Engine;
        format!("{PREFIX}{}:{}", k.id, base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Open what [`Sealer::seal`] made for `place`; a value that was never sealed is
    /// returned as it is.
    pub fn open(&self, place: &str, stored: &str) -> Result<String, SecretError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_string()) };
        let (id, b64) = rest.split_once(':').ok_or_else(|| SecretError::Damaged(place.into()))?;
        let key = self
            .current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey(id.into()))?;
        use base64::Engine;
        let raw =
            base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| SecretError::Damaged(place.into()))?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Damaged(place.into()));
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Damaged(place.into()))?;
        let mut data = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(place.as_bytes()), &mut data)
            .map_err(|_| SecretError::Damaged(place.into()))?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Damaged(place.into()))
    }

    /// Whether `stored` is sealed with the current key (else it should be sealed again).
    pub fn is_current(&self, stored: &str) -> bool {
        match &self.current {
            None => true,
            Some(k) => stored.strip_prefix(PREFIX).and_then(|r| r.split_once(':')).is_some_and(|(id, _)| id == k.id),
        }
    }
}

/// `url` without the password of its user info, for logs and errors:
/// `postgres://drover:s3cret@db/drover` → `postgres://drover:***@db/drover`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let authority_end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end].rfind('@').map(|i| scheme_end + i) else {
        return url.to_string();
    };
    match url[scheme_end..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end], &url[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_place_and_with_their_key() {
        let s = Sealer::with_key([7; 32]);
        let sealed = s.seal("fcm/config", r#"{"access_token":"ya29.secret"}"#);
        assert!(sealed.starts_with("drv1:") && !sealed.contains("ya29"), "{sealed}");
        assert_eq!(s.open("fcm/config", &sealed).unwrap(), r#"{"access_token":"ya29.secret"}"#);
        assert_ne!(s.seal("fcm/config", "x"), s.seal("fcm/config", "x"), "a fresh nonce each time");
        assert!(matches!(s.open("apns/config", &sealed), Err(SecretError::Damaged(_))));
        // One character of the sealed data changed (to another one: never the same).
        let at = sealed.len() / 2;
        let flipped = if &sealed[at..=at] == "A" { "B" } else { "A" };
        let mut tampered = sealed.clone();
        tampered.replace_range(at..=at, flipped);
        assert_ne!(tampered, sealed);
        assert!(s.open("fcm/config", &tampered).is_err());
        let other = Sealer::with_key([8; 32]);
        assert!(matches!(other.open("fcm/config", &sealed), Err(SecretError::UnknownKey(_))));
        // Values from before sealing read as they are.
        assert_eq!(s.open("fcm/config", "{}").unwrap(), "{}");
        assert!(s.is_current(&sealed) && !s.is_current("{}") && !other.is_current(&sealed));
    }

    #[test]
    fn a_rotated_key_still_opens_what_the_previous_one_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let old_path = dir.path().join("old.key");
        let old = Sealer::load(None, &old_path, None).unwrap();
        let sealed = old.seal("wns/oauth", "client secret");
        let new = Sealer::load(Some(&"ab".repeat(32)), &dir.path().join("unused"), Some(&old_path)).unwrap();
        assert_eq!(new.open("wns/oauth", &sealed).unwrap(), "client secret");
        assert!(!new.is_current(&sealed));
        assert!(new.is_current(&new.seal("wns/oauth", "client secret")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&old_path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(Sealer::load(Some("nothex"), &old_path, None).is_err());
    }

    #[test]
    fn passwords_are_taken_out_of_urls() {
        assert_eq!(redact_url("postgres://drover:s3cret@db:5432/drover"), "postgres://drover:***@db:5432/drover");
        assert_eq!(redact_url("mqtt://svc:p@ss@broker:1883"), "mqtt://svc:***@broker:1883");
        assert_eq!(redact_url("postgres://drover@db/drover"), "postgres://drover@db/drover");
        assert_eq!(redact_url("sqlite://./drover-data/drover.db"), "sqlite://./drover-data/drover.db");
        assert_eq!(redact_url("postgres://db/x?user=a@b"), "postgres://db/x?user=a@b");
    }
}
