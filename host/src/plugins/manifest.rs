//! The plugin manifest: who a plugin is and what it asks for.
//!
//! It travels inside the component as the custom section `drover-manifest` (TOML text,
//! put there by `drover_sdk::export_*!` from the crate's `plugin.toml`), so one `.wasm`
//! file is the whole plugin and a signature over the file covers the manifest too.
//! Custom sections of the component's core modules are found as well, which is where a
//! Rust `#[link_section]` puts it.

use super::capability::Capability;
use serde::{Deserialize, Serialize};
use wasmparser::{Parser, Payload};

/// Name of the custom section holding the manifest (the SDK writes the same name).
pub const SECTION: &str = "drover-manifest";

pub use super::contract::{CONTRACT, contract_compatible};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    DeviceType,
    Transport,
    PolicyRule,
}

impl Kind {
    /// The WIT world a plugin of this kind exports.
    pub fn world(self) -> &'static str {
        match self {
            Kind::DeviceType => "drover:plugin/device-type",
            Kind::Transport => "drover:plugin/transport",
            Kind::PolicyRule => "drover:plugin/policy-rule",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::DeviceType => "device-type",
            Kind::Transport => "transport",
            Kind::PolicyRule => "policy-rule",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name: lowercase letters, digits and `-`; a device type's name is its type.
    pub name: String,
    /// Semantic version of the plugin.
    pub version: String,
    pub kind: Kind,
    /// The `drover:plugin` contract version it was built against, e.g. `0.1`.
    pub contract: String,
    /// Who publishes it; uploads are checked against this publisher's key.
    pub publisher: String,
    #[serde(default)]
    pub description: String,
    /// Host capabilities it asks for. An admin grants them; imports needing a capability
    /// that is not both requested and granted make the load fail.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// For transports: the hosts its provider requests may go to.
    #[serde(default)]
    pub outbound_hosts: Vec<String>,
    /// Config keys whose values are secrets (access tokens, passwords): the admin API
    /// never shows them back. (Keys whose names look secret are masked as well.)
    #[serde(default)]
    pub secret_config: Vec<String>,
    /// For device types: where, under the type's agent URL, a device starts enrolling —
    /// the link an enrollment token's QR code carries (`…/agent/v1/{type}/{path}?token=…`).
    /// `enroll` (the default) or a step below it, e.g. `enroll/profile` for an Apple
    /// enrollment profile.
    #[serde(default)]
    pub enrollment_path: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error(
        "the component has no `{SECTION}` custom section: build it with drover-sdk's export macro and a plugin.toml"
    )]
    Missing,
    #[error("the component has more than one `{SECTION}` section")]
    Duplicate,
    #[error("the component is not valid WebAssembly: {0}")]
    NotWasm(String),
    #[error("the manifest is not valid: {0}")]
    Invalid(String),
    #[error(
        "the plugin was built against contract drover:plugin@{found}, which this host (drover:plugin@{CONTRACT}) cannot run: rebuild it with a compatible drover-sdk"
    )]
    IncompatibleContract { found: String },
}

impl Manifest {
    /// Read and check the manifest embedded in component `bytes`.
    pub fn from_component(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let mut found: Option<&[u8]> = None;
        for payload in Parser::new(0).parse_all(bytes) {
            let payload = payload.map_err(|e| ManifestError::NotWasm(e.to_string()))?;
            if let Payload::CustomSection(c) = payload
                && c.name() == SECTION
            {
                if found.is_some() {
                    return Err(ManifestError::Duplicate);
                }
                found = Some(c.data());
            }
        }
        let text = std::str::from_utf8(found.ok_or(ManifestError::Missing)?)
            .map_err(|_| ManifestError::Invalid("not UTF-8 text".into()))?;
        Self::parse(text)
    }

    /// `component` with manifest `text` added as its `drover-manifest` custom section:
    /// how a component built by another language's toolchain (componentize-py, jco)
    /// becomes a plugin. The text is checked first; a component that already carries a
    /// manifest is refused (replacing one would hide what was signed before).
    pub fn embed(component: &[u8], text: &str) -> Result<Vec<u8>, ManifestError> {
        Self::parse(text)?;
        match Self::from_component(component) {
            Err(ManifestError::Missing) => {}
            Err(e @ ManifestError::NotWasm(_)) => return Err(e),
            _ => return Err(ManifestError::Duplicate),
        }
        // A custom section (id 0) may stand anywhere in a component: append one.
        fn leb128(mut n: usize, out: &mut Vec<u8>) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                out.push(if n == 0 { byte } else { byte | 0x80 });
                if n == 0 {
                    return;
                }
            }
        }
        let mut content = Vec::new();
        leb128(SECTION.len(), &mut content);
        content.extend_from_slice(SECTION.as_bytes());
        content.extend_from_slice(text.as_bytes());
        let mut out = component.to_vec();
        out.push(0);
        leb128(content.len(), &mut out);
        out.extend_from_slice(&content);
        Ok(out)
    }

    /// Parse and check manifest TOML.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Invalid(e.message().to_string()))?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ManifestError> {
        let invalid = |s: String| Err(ManifestError::Invalid(s));
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return invalid(format!("name `{}`: use 1-64 lowercase letters, digits and -", self.name));
        }
        if semver::Version::parse(&self.version).is_err() {
            return invalid(format!("version `{}` is not a semantic version like 1.2.3", self.version));
        }
        if self.publisher.trim().is_empty() {
            return invalid("publisher is empty".into());
        }
        if !contract_compatible(&self.contract) {
            return Err(ManifestError::IncompatibleContract { found: self.contract.clone() });
        }
        if let Some(p) = &self.enrollment_path {
            let ok = (p == "enroll" || p.starts_with("enroll/"))
                && p.len() <= 128
                && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b));
            if !ok {
                return invalid(format!(
                    "enrollment_path `{p}`: `enroll` or a step below it (`enroll/…`), of lowercase letters, digits, \
                     `-`, `_`, `.` and `/`"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "android"
version = "0.1.0"
kind = "device-type"
contract = "0.1"
publisher = "drover"
capabilities = ["log", "kv"]
"#;

    #[test]
    fn parses_and_checks() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.kind, Kind::DeviceType);
        assert_eq!(m.capabilities, vec![Capability::Log, Capability::Kv]);
        let e = Manifest::parse(&GOOD.replace("0.1\"", "0.2\"")).unwrap_err();
        assert!(matches!(e, ManifestError::IncompatibleContract { .. }));
        let e = Manifest::parse(&GOOD.replace("\"android\"", "\"Android!\"")).unwrap_err();
        assert!(e.to_string().contains("Android!"));
        let e = Manifest::parse(&GOOD.replace("\"kv\"", "\"teleport\"")).unwrap_err();
        assert!(e.to_string().contains("teleport"), "{e}");
    }

    #[test]
    fn enrollment_paths_stay_under_enroll() {
        let with = |p: &str| Manifest::parse(&format!("{GOOD}enrollment_path = \"{p}\"\n"));
        assert_eq!(with("enroll/profile").unwrap().enrollment_path.as_deref(), Some("enroll/profile"));
        assert!(with("enroll").is_ok());
        for bad in ["mdm", "enrollment", "enroll/../mdm", "enroll//x", "enroll/?x=1", "/enroll", "enroll/Profile"] {
            assert!(with(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn contract_versions() {
        assert!(contract_compatible("0.1"));
        assert!(contract_compatible("0.1.7"));
        assert!(!contract_compatible("0.2.0"));
        assert!(!contract_compatible("1.0"));
        assert!(!contract_compatible("x"));
    }
}
