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

/// Every problem with a component's imports, found in one pass, and what fixes them: so
/// an author learns everything a build lacks at the first try, not one capability a try.
#[derive(Debug, PartialEq)]
pub struct ImportProblems {
    /// The plugin's name, for the grant command in the fix.
    pub plugin: String,
    pub problems: Vec<GrantError>,
}

impl ImportProblems {
    /// What fixes every problem, one sentence each.
    pub fn fixes(&self) -> Vec<String> {
        let mut to_request = BTreeSet::new();
        let mut to_grant = BTreeSet::new();
        let mut wasi = false;
        let mut other = false;
        for p in &self.problems {
            match p {
                GrantError::NotRequested { import, capability } => {
                    to_request.insert(*capability);
                    wasi |= import.starts_with("wasi:");
                }
                GrantError::NotGranted { capability, .. } => {
                    to_grant.insert(*capability);
                }
                GrantError::OtherContract { .. } => other = true,
                GrantError::Unknown { import } => wasi |= import.starts_with("wasi:"),
            }
        }
        let list =
            |set: &BTreeSet<Capability>, sep: &str| set.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(sep);
        let mut fixes = Vec::new();
        if !to_request.is_empty() {
            fixes.push(format!(
                "add {} to `capabilities` in plugin.toml (and have an admin grant {})",
                to_request.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "),
                if to_request.len() == 1 { "it" } else { "them" }
            ));
        }
        if !to_grant.is_empty() {
            fixes.push(format!(
                "an admin grants {}: `drover plugin grant {} {}` (PUT /api/v1/plugins/{}/grants)",
                list(&to_grant, ", "),
                self.plugin,
                list(&to_grant, " "),
                self.plugin
            ));
        }
        if wasi {
            fixes.push(
                "if these WASI imports come from a language runtime rather than your code (componentize-py \
                 imports clocks, random, filesystem and sockets for Python's), build without them: \
                 `componentize-py … componentize --stub-wasi`"
                    .into(),
            );
        }
        if other {
            fixes.push(format!(
                "build against the contract this host speaks, drover:plugin@{} (the WIT `drover plugin new` writes)",
                super::contract::CONTRACT
            ));
        }
        fixes
    }
}

impl std::fmt::Display for ImportProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{one}")?,
            many => {
                write!(f, "{} problems with its imports:", many.len())?;
                for (i, p) in many.iter().enumerate() {
                    write!(f, " ({}) {p};", i + 1)?;
                }
            }
        }
        let fixes = self.fixes();
        if !fixes.is_empty() {
            write!(f, ". To fix: {}", fixes.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ImportProblems {}

/// Check every import against what the manifest requested and what was granted; every
/// problem at once.
pub fn check_imports<'a>(
    plugin: &str,
    imports: impl IntoIterator<Item = &'a str>,
    requested: &[Capability],
    granted: &Grants,
) -> Result<(), ImportProblems> {
    let mut problems = Vec::new();
    for import in imports {
        match classify_import(import) {
            ImportNeed::Nothing => {}
            ImportNeed::Capability(capability) => {
                let import = import.to_string();
                if !requested.contains(&capability) {
                    problems.push(GrantError::NotRequested { import, capability });
                } else if !granted.contains(&capability) {
                    problems.push(GrantError::NotGranted { import, capability });
                }
            }
            ImportNeed::OtherContract(version) => {
                problems.push(GrantError::OtherContract { import: import.to_string(), version });
            }
            ImportNeed::Unknown => problems.push(GrantError::Unknown { import: import.to_string() }),
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(ImportProblems { plugin: plugin.to_string(), problems }) }
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
        assert!(check_imports("p", ["drover:plugin/log@0.1.0"], &[Capability::Log], &granted).is_ok());
        let e = check_imports("p", ["drover:plugin/kv@0.1.0"], &[Capability::Log], &granted).unwrap_err();
        assert!(e.to_string().contains("`kv`") && e.to_string().contains("does not request"), "{e}");
        let e = check_imports("p", ["wasi:filesystem/types@0.2.3"], &[Capability::Filesystem], &granted).unwrap_err();
        assert!(e.to_string().contains("`filesystem`") && e.to_string().contains("not granted"), "{e}");
    }

    /// A componentize-py build without --stub-wasi: every missing capability named at
    /// once, with the fixes (it took seven tries when each try named one).
    #[test]
    fn every_problem_is_named_at_once_with_its_fix() {
        let imports = [
            "drover:plugin/types@0.1.0",
            "wasi:clocks/wall-clock@0.2.0",
            "wasi:clocks/monotonic-clock@0.2.0",
            "wasi:random/random@0.2.0",
            "wasi:filesystem/preopens@0.2.0",
            "wasi:sockets/tcp@0.2.0",
            "drover:plugin/config@0.1.0",
            "wasi:http/types@0.2.0",
        ];
        let e = check_imports("acme-py", imports, &[Capability::Config], &Grants::new()).unwrap_err();
        assert_eq!(e.problems.len(), 7, "{e}");
        let text = e.to_string();
        assert!(text.starts_with("7 problems with its imports: (1) imports `wasi:clocks/wall-clock@0.2.0`"), "{text}");
        for needed in ["`clock`", "`random`", "`filesystem`", "`network`", "`config`", "wasi:http/types"] {
            assert!(text.contains(needed), "{needed}: {text}");
        }
        assert!(
            text.contains(r#"add "clock", "random", "filesystem", "network" to `capabilities` in plugin.toml"#),
            "{text}"
        );
        assert!(text.contains("`drover plugin grant acme-py config`"), "{text}");
        assert!(text.contains("--stub-wasi"), "{text}");
    }
}
