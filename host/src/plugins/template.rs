//! `drover plugin new`: a plugin crate from the templates in `sdk/template/`, embedded in
//! the binary so an installed `drover` can generate one anywhere. The generated crate
//! builds to a component and passes its own native tests as generated
//! (`tests/tests/template.rs` proves it for each kind).

use super::manifest::Kind;
use std::path::{Path, PathBuf};

const README: &str = include_str!("../../../sdk/template/README.md");

/// (path in the crate, text) of each kind's files.
fn files(kind: Kind) -> Vec<(&'static str, &'static str)> {
    match kind {
        Kind::DeviceType => vec![
            ("Cargo.toml", include_str!("../../../sdk/template/device-type/Cargo.toml.template")),
            ("plugin.toml", include_str!("../../../sdk/template/device-type/plugin.toml")),
            ("src/lib.rs", include_str!("../../../sdk/template/device-type/src/lib.rs")),
            ("README.md", README),
            ("fixtures/cases.toml", include_str!("../../../sdk/template/device-type/fixtures/cases.toml")),
            ("fixtures/enroll.json", include_str!("../../../sdk/template/device-type/fixtures/enroll.json")),
            ("fixtures/results.json", include_str!("../../../sdk/template/device-type/fixtures/results.json")),
            ("fixtures/malformed.json", include_str!("../../../sdk/template/device-type/fixtures/malformed.json")),
        ],
        Kind::Transport => vec![
            ("Cargo.toml", include_str!("../../../sdk/template/transport/Cargo.toml.template")),
            ("plugin.toml", include_str!("../../../sdk/template/transport/plugin.toml")),
            ("src/lib.rs", include_str!("../../../sdk/template/transport/src/lib.rs")),
            ("README.md", README),
        ],
        Kind::PolicyRule => vec![
            ("Cargo.toml", include_str!("../../../sdk/template/policy-rule/Cargo.toml.template")),
            ("plugin.toml", include_str!("../../../sdk/template/policy-rule/plugin.toml")),
            ("src/lib.rs", include_str!("../../../sdk/template/policy-rule/src/lib.rs")),
            ("README.md", README),
        ],
    }
}

/// Where the generated crate takes `drover-sdk` from.
#[derive(Debug, Clone)]
pub enum Sdk {
    /// crates.io, version 0.1.
    Registry,
    /// A checkout's `sdk/` directory (developing Drover, or before the SDK is published).
    Path(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("plugin name `{0}`: use 1-64 lowercase letters, digits and -, starting with a letter")]
    Name(String),
    #[error("{0} exists and is not empty: choose another --dir")]
    Exists(PathBuf),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Write a new `kind` plugin crate named `name` into `dir`. Returns the files written.
pub fn generate(name: &str, kind: Kind, dir: &Path, sdk: &Sdk) -> Result<Vec<PathBuf>, TemplateError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(TemplateError::Name(name.into()));
    }
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(TemplateError::Exists(dir.into()));
    }
    let feature = kind.to_string();
    let sdk_line = match sdk {
        Sdk::Registry => format!(r#"drover-sdk = {{ version = "0.1", features = ["{feature}"] }}"#),
        Sdk::Path(p) => format!(r#"drover-sdk = {{ path = {:?}, features = ["{feature}"] }}"#, p.display().to_string()),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{kind}}", &feature)
            .replace("{{sdk}}", &sdk_line)
    };
    let mut written = Vec::new();
    for (path, text) in files(kind) {
        let mut text = fill(text);
        if path == "Cargo.toml" {
            // A crate of its own, even when generated inside another workspace.
            text.push_str("\n[workspace]\n");
        }
        let target = dir.join(path);
        let write = |t: &Path| -> std::io::Result<()> {
            if let Some(parent) = t.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(t, &text)
        };
        write(&target).map_err(|source| TemplateError::Write { path: target.clone(), source })?;
        written.push(target);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_placeholder_and_refuses_bad_names() {
        for kind in [Kind::DeviceType, Kind::Transport, Kind::PolicyRule] {
            let dir = tempfile::tempdir().unwrap();
            let files = generate("acme-unit", kind, dir.path(), &Sdk::Registry).unwrap();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
            }
            let manifest = std::fs::read_to_string(dir.path().join("plugin.toml")).unwrap();
            assert!(manifest.contains(&format!("kind = \"{kind}\"")));
            assert!(matches!(generate("acme-unit", kind, dir.path(), &Sdk::Registry), Err(TemplateError::Exists(_))));
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(generate("Acme", Kind::DeviceType, dir.path(), &Sdk::Registry), Err(TemplateError::Name(_))));
        assert!(matches!(generate("-x", Kind::DeviceType, dir.path(), &Sdk::Registry), Err(TemplateError::Name(_))));
    }
}
