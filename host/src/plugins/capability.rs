//! Capabilities: the host imports a plugin may use, and how a component's imports map
//! onto them. The grant check lives here and nowhere else.
//!
//! Every WASI interface a Rust guest pulls in by default (`wasi:io`, `wasi:cli`) is
//! inert in a plugin's store: no environment, no arguments, stdin empty, stdout and
//! stderr go to the host log, `exit` ends only the call. Everything that reaches outside
//! the sandbox needs a capability that the manifest requests and an admin grants.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `drover:plugin/log`.
    Log,
    /// `drover:plugin/config`: values an admin set for the plugin.
    Config,
    /// `drover:plugin/kv`: the plugin's private key-value store.
    Kv,
    /// `wasi:clocks`: wall clock and monotonic clock.
    Clock,
    /// `wasi:random`: random bytes.
    Random,
    /// `wasi:filesystem`: a directory of its own (never granted by default).
    Filesystem,
    /// `wasi:sockets`: network sockets (never granted: the host does network I/O).
    Network,
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Capability::Log => "log",
            Capability::Config => "config",
            Capability::Kv => "kv",
            Capability::Clock => "clock",
            Capability::Random => "random",
            Capability::Filesystem => "filesystem",
            Capability::Network => "network",
        })
    }
}

/// The capabilities an admin granted a plugin.
pub type Grants = BTreeSet<Capability>;

/// What an import of a component needs.
#[derive(Debug, PartialEq, Eq)]
pub enum ImportNeed {
    /// Types only, or inert WASI: always available.
    Nothing,
    Capability(Capability),
    /// An interface of another `drover:plugin` version: the contract does not match.
    OtherContract(String),
    /// Something this host does not provide at all.
    Unknown,
}

/// Classify one import name, e.g. `wasi:clocks/wall-clock@0.2.3`, `drover:plugin/kv@0.1.0`.
pub fn classify_import(name: &str) -> ImportNeed {
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    if let Some(iface) = path.strip_prefix("drover:plugin/") {
        if !super::contract::contract_compatible(version) {
            return ImportNeed::OtherContract(version.to_string());
        }
        return match iface {
            "types" | "transport-types" | "policy-types" => ImportNeed::Nothing,
            "log" => ImportNeed::Capability(Capability::Log),
            "config" => ImportNeed::Capability(Capability::Config),
            "kv" => ImportNeed::Capability(Capability::Kv),
            _ => ImportNeed::Unknown,
        };
    }
    let Some((pkg, iface)) = path.split_once('/') else {
        return ImportNeed::Unknown;
    };
    if !version.starts_with("0.2.") {
        // Only WASI 0.2 (preview 2) is linked.
        return ImportNeed::Unknown;
    }
    match pkg {
        "wasi:io" => ImportNeed::Nothing,
        "wasi:cli" => match iface {
            "environment" | "exit" | "stdin" | "stdout" | "stderr" | "terminal-input" | "terminal-output"
            | "terminal-stdin" | "terminal-stdout" | "terminal-stderr" => ImportNeed::Nothing,
            _ => ImportNeed::Unknown,
        },
        "wasi:clocks" => ImportNeed::Capability(Capability::Clock),
        "wasi:random" => ImportNeed::Capability(Capability::Random),
        "wasi:filesystem" => ImportNeed::Capability(Capability::Filesystem),
        "wasi:sockets" => ImportNeed::Capability(Capability::Network),
        _ => ImportNeed::Unknown,
    }
}

/// Why a component's imports were refused. Each names the import and the capability.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GrantError {
    #[error(
        "imports `{import}`, which needs capability `{capability}`; the manifest does not request it (add it to `capabilities` in plugin.toml)"
    )]
    NotRequested { import: String, capability: Capability },
    #[error(
        "imports `{import}`, which needs capability `{capability}`, and that capability is not granted to this plugin"
    )]
    NotGranted { import: String, capability: Capability },
    #[error(
        "imports `{import}` from contract drover:plugin@{version}; this host speaks drover:plugin@{}",
        super::contract::CONTRACT
    )]
    OtherContract { import: String, version: String },
    #[error("imports `{import}`, which Drover does not provide to plugins")]
    Unknown { import: String },
}

/// Check every import against what the manifest requested and what was granted.
pub fn check_imports<'a>(
    imports: impl IntoIterator<Item = &'a str>,
    requested: &[Capability],
    granted: &Grants,
) -> Result<(), GrantError> {
    for import in imports {
        match classify_import(import) {
            ImportNeed::Nothing => {}
            ImportNeed::Capability(capability) => {
                let import = import.to_string();
                if !requested.contains(&capability) {
                    return Err(GrantError::NotRequested { import, capability });
                }
                if !granted.contains(&capability) {
                    return Err(GrantError::NotGranted { import, capability });
                }
            }
            ImportNeed::OtherContract(version) => {
                return Err(GrantError::OtherContract { import: import.to_string(), version });
            }
            ImportNeed::Unknown => return Err(GrantError::Unknown { import: import.to_string() }),
        }
    }
    Ok(())
}

/// The names a component imports, read from its top-level import section without
/// compiling it, so a refused plugin costs no compile time.
pub fn component_imports(bytes: &[u8]) -> Result<Vec<String>, String> {
    use wasmparser::{Parser, Payload};
    let mut names = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            // Nested modules and components have their own imports, satisfied inside the
            // component; only the outermost ones reach the host.
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let import = import.map_err(|e| e.to_string())?;
                    // Type imports (a world's `use` of contract types) carry no behaviour.
                    if !matches!(import.ty, wasmparser::ComponentTypeRef::Type(_)) {
                        names.push(import.name.name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_imports() {
        assert_eq!(classify_import("wasi:io/streams@0.2.4"), ImportNeed::Nothing);
        assert_eq!(classify_import("wasi:cli/stderr@0.2.0"), ImportNeed::Nothing);
        assert_eq!(classify_import("wasi:clocks/wall-clock@0.2.3"), ImportNeed::Capability(Capability::Clock));
        assert_eq!(classify_import("wasi:filesystem/preopens@0.2.3"), ImportNeed::Capability(Capability::Filesystem));
        assert_eq!(classify_import("wasi:sockets/tcp@0.2.0"), ImportNeed::Capability(Capability::Network));
        assert_eq!(classify_import("drover:plugin/kv@0.1.0"), ImportNeed::Capability(Capability::Kv));
        assert_eq!(classify_import("drover:plugin/kv@0.2.0"), ImportNeed::OtherContract("0.2.0".into()));
        assert_eq!(classify_import("wasi:http/outgoing-handler@0.2.0"), ImportNeed::Unknown);
        assert_eq!(classify_import("wasi:clocks/wall-clock@0.3.0"), ImportNeed::Unknown);
    }

    #[test]
    fn grants_must_be_requested_and_granted() {
        let granted: Grants = [Capability::Log].into();
        assert!(check_imports(["drover:plugin/log@0.1.0"], &[Capability::Log], &granted).is_ok());
        let e = check_imports(["drover:plugin/kv@0.1.0"], &[Capability::Log], &granted).unwrap_err();
        assert!(e.to_string().contains("`kv`") && e.to_string().contains("does not request"), "{e}");
        let e = check_imports(["wasi:filesystem/types@0.2.3"], &[Capability::Filesystem], &granted).unwrap_err();
        assert!(e.to_string().contains("`filesystem`") && e.to_string().contains("not granted"), "{e}");
    }
}
