//! Plugin signatures: Ed25519 over the component's bytes (the manifest is inside them, so
//! it is covered too). Keys are PKCS#8 (private) and SubjectPublicKeyInfo (public) PEM,
//! the formats `openssl genpkey -algorithm ed25519` writes, so a publisher can sign with
//! openssl as well as with `drover plugin sign`:
//!
//! ```sh
//! openssl pkeyutl -sign -rawin -inkey acme.key -in plugin.wasm -out plugin.wasm.sig
//! ```
//!
//! A signature file is the 64 raw bytes (as openssl writes) or their base64 text (as
//! `drover plugin sign` writes, easier to paste into JSON or a form).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, spki::der::pem};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("not an Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`): {0}")]
    PrivateKey(String),
    #[error(
        "not an Ed25519 public key: expected SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`) or 32 bytes in base64: {0}"
    )]
    PublicKey(String),
    #[error("not an Ed25519 signature: expected 64 bytes, raw or base64 ({0})")]
    Signature(String),
    #[error("could not make a key: {0}")]
    Generate(String),
}

/// A new key pair: (private PKCS#8 PEM, public SPKI PEM).
pub fn generate() -> Result<(String, String), SigningError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SigningError::Generate(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let private = key.to_pkcs8_pem(pem::LineEnding::LF).map_err(|e| SigningError::Generate(e.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(pem::LineEnding::LF)
        .map_err(|e| SigningError::Generate(e.to_string()))?;
    Ok((private.to_string(), public))
}

/// Sign `component` with a PKCS#8 PEM private key; the 64 signature bytes.
pub fn sign(private_pem: &str, component: &[u8]) -> Result<[u8; 64], SigningError> {
    let key = SigningKey::from_pkcs8_pem(private_pem.trim()).map_err(|e| SigningError::PrivateKey(e.to_string()))?;
    Ok(key.sign(component).to_bytes())
}

/// The public key of a PKCS#8 PEM private key, as SPKI PEM.
pub fn public_of(private_pem: &str) -> Result<String, SigningError> {
    let key = SigningKey::from_pkcs8_pem(private_pem.trim()).map_err(|e| SigningError::PrivateKey(e.to_string()))?;
    key.verifying_key().to_public_key_pem(pem::LineEnding::LF).map_err(|e| SigningError::PrivateKey(e.to_string()))
}

/// Base64 text of a signature, for a `.sig` file or a form field.
pub fn encode_signature(signature: &[u8; 64]) -> String {
    BASE64.encode(signature)
}

/// A signature from a file or a form field: 64 raw bytes, or their base64 text.
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, SigningError> {
    if bytes.len() == 64 {
        return Ok(Signature::from_bytes(bytes.try_into().expect("64 bytes")));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| SigningError::Signature(format!("{} bytes", bytes.len())))?;
    let raw = BASE64.decode(text.trim()).map_err(|e| SigningError::Signature(format!("base64: {e}")))?;
    let raw: [u8; 64] =
        raw.as_slice().try_into().map_err(|_| SigningError::Signature(format!("{} bytes after base64", raw.len())))?;
    Ok(Signature::from_bytes(&raw))
}

/// A public key as an admin registers it: SPKI PEM, or the 32 raw bytes in base64.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, SigningError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text).map_err(|e| SigningError::PublicKey(e.to_string()));
    }
    let raw = BASE64.decode(text).map_err(|e| SigningError::PublicKey(format!("base64: {e}")))?;
    let raw: [u8; 32] =
        raw.as_slice().try_into().map_err(|_| SigningError::PublicKey(format!("{} bytes, not 32", raw.len())))?;
    VerifyingKey::from_bytes(&raw).map_err(|e| SigningError::PublicKey(e.to_string()))
}

/// The key in the canonical form Drover stores (SPKI PEM).
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(pem::LineEnding::LF).expect("an Ed25519 public key always encodes")
}

/// A short, stable name for a key: the first 16 hex digits of the SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Which of `keys` (id, key) signed `component`, if any. Strict verification: no
/// malleable or small-order signatures.
pub fn verify<'a>(keys: &'a [(String, VerifyingKey)], component: &[u8], signature: &Signature) -> Option<&'a str> {
    keys.iter().find(|(_, k)| k.verify_strict(component, signature).is_ok()).map(|(id, _)| id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_tamper() {
        let (private, public) = generate().unwrap();
        let key = parse_public_key(&public).unwrap();
        let keys = vec![(key_id(&key), key)];
        let sig = sign(&private, b"component bytes").unwrap();
        let parsed = parse_signature(encode_signature(&sig).as_bytes()).unwrap();
        assert_eq!(verify(&keys, b"component bytes", &parsed), Some(keys[0].0.as_str()));
        assert_eq!(verify(&keys, b"component bytez", &parsed), None);
        assert_eq!(parse_signature(&sig).unwrap(), parsed);
        assert_eq!(public_of(&private).unwrap(), public);
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        assert!(parse_signature(b"abc").unwrap_err().to_string().contains("64 bytes"));
        assert!(parse_public_key("nope").unwrap_err().to_string().contains("public key"));
        assert!(sign("-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----", b"x").is_err());
    }
}
