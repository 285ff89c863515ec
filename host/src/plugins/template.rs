//! `drover plugin new`: a plugin crate from the templates in `sdk/template/`, embedded in
//! the binary so an installed `drover` can generate one anywhere. The generated crate
//! builds to a component and passes its own native tests as generated
//! (`tests/tests/template.rs` proves it for each kind; `host/tests/author.rs` from an
//! empty directory with the binary alone).
//!
//! The binary carries the SDK too (`sdk/`: its Cargo.toml, sources and WIT) and writes it
//! next to the new plugin as a path dependency, with the dependency versions this Drover
//! was built and tested with (the workspace's Cargo.lock): a plugin builds with the crate
//! registry alone, with no Drover checkout and no published `drover-sdk`.

use super::manifest::Kind;
use std::path::{Path, PathBuf};

const README: &str = include_str!("../../../sdk/template/README.md");

/// What a plugin's repository keeps out: builds, and the private key README makes.
const GITIGNORE: &str = "/target\n*.wasm\n*.key\n";

/// Where the carried SDK goes inside a generated plugin.
pub const VENDORED_SDK: &str = "drover-sdk";

/// The SDK this binary carries: (path inside the SDK, text).
pub const SDK_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../sdk/Cargo.toml")),
    ("README.md", include_str!("../../../sdk/README.md")),
    ("src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
    ("wit/types.wit", include_str!("../../../sdk/wit/types.wit")),
    ("wit/worlds.wit", include_str!("../../../sdk/wit/worlds.wit")),
];

/// The dependency versions Drover is built and tested with; cargo drops what a plugin
/// does not use at its first build.
const LOCK: &str = include_str!("../../../Cargo.lock");

/// (path in the crate, text) of each kind's files.
fn files(kind: Kind) -> Vec<(&'static str, &'static str)> {
    match kind {
        Kind::DeviceType => vec![
            ("Cargo.toml", include_str!("../../../sdk/template/device-type/Cargo.toml.template")),
            ("plugin.toml", include_str!("../../../sdk/template/device-type/plugin.toml")),
            ("src/lib.rs", include_str!("../../../sdk/template/device-type/src/lib.rs")),
            ("README.md", README),
            (".gitignore", GITIGNORE),
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
            (".gitignore", GITIGNORE),
        ],
        Kind::PolicyRule => vec![
            ("Cargo.toml", include_str!("../../../sdk/template/policy-rule/Cargo.toml.template")),
            ("plugin.toml", include_str!("../../../sdk/template/policy-rule/plugin.toml")),
            ("src/lib.rs", include_str!("../../../sdk/template/policy-rule/src/lib.rs")),
            ("README.md", README),
            (".gitignore", GITIGNORE),
            ("fixtures/cases.toml", include_str!("../../../sdk/template/policy-rule/fixtures/cases.toml")),
            ("fixtures/charged.json", include_str!("../../../sdk/template/policy-rule/fixtures/charged.json")),
            ("fixtures/flat.json", include_str!("../../../sdk/template/policy-rule/fixtures/flat.json")),
        ],
    }
}

/// Where the generated crate takes `drover-sdk` from.
#[derive(Debug, Clone)]
pub enum Sdk {
    /// The SDK this binary carries, written into the plugin's `drover-sdk/` directory.
    Carried,
    /// A checkout's `sdk/` directory (developing Drover itself).
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

/// A name a plugin may have, into a directory that is new or empty.
fn check(name: &str, dir: &Path) -> Result<(), TemplateError> {
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
    Ok(())
}

/// Write `files` (path inside `dir`, text) into `dir`. Returns the paths written.
fn write_all(dir: &Path, files: Vec<(String, String)>) -> Result<Vec<PathBuf>, TemplateError> {
    let mut written = Vec::new();
    for (path, text) in files {
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

/// A language other than Rust that a device type may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// `app.py`, built with componentize-py.
    Python,
    /// `app.js`, built with jco (componentize-js), pinned by `package.json`.
    JavaScript,
}

/// Write a new device type in `lang` named `name` into `dir` (built by `drover plugin
/// build` with the language's toolchain), with the contract's WIT this binary carries and
/// the fixtures of the Rust device-type template (the same protocol). Returns the files
/// written.
pub fn generate_in(lang: Lang, name: &str, dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    check(name, dir)?;
    let own: Vec<(&str, &str)> = match lang {
        Lang::Python => vec![
            ("app.py", include_str!("../../../sdk/template/python/app.py")),
            ("plugin.toml", include_str!("../../../sdk/template/python/plugin.toml")),
            ("README.md", include_str!("../../../sdk/template/python/README.md")),
            (".gitignore", "*.wasm\n*.key\n__pycache__/\n.venv/\n"),
        ],
        Lang::JavaScript => vec![
            ("app.js", include_str!("../../../sdk/template/javascript/app.js")),
            ("plugin.toml", include_str!("../../../sdk/template/javascript/plugin.toml")),
            ("README.md", include_str!("../../../sdk/template/javascript/README.md")),
            ("package.json", include_str!("../../../sdk/template/javascript/package.json")),
            ("package-lock.json", include_str!("../../../sdk/template/javascript/package-lock.json")),
            (".gitignore", "*.wasm\n*.key\nnode_modules/\n"),
        ],
    };
    let fixtures = [
        ("fixtures/cases.toml", include_str!("../../../sdk/template/device-type/fixtures/cases.toml")),
        ("fixtures/enroll.json", include_str!("../../../sdk/template/device-type/fixtures/enroll.json")),
        ("fixtures/results.json", include_str!("../../../sdk/template/device-type/fixtures/results.json")),
        ("fixtures/malformed.json", include_str!("../../../sdk/template/device-type/fixtures/malformed.json")),
    ];
    let mut files: Vec<(String, String)> = own
        .into_iter()
        .chain(fixtures)
        .map(|(path, text)| (path.to_string(), text.replace("{{name}}", name)))
        .collect();
    files.extend(SDK_FILES.iter().filter(|(p, _)| p.starts_with("wit/")).map(|(p, t)| (p.to_string(), t.to_string())));
    write_all(dir, files)
}

/// Write a new `kind` plugin crate named `name` into `dir`. Returns the files written.
pub fn generate(name: &str, kind: Kind, dir: &Path, sdk: &Sdk) -> Result<Vec<PathBuf>, TemplateError> {
    check(name, dir)?;
    let feature = kind.to_string();
    let version = env!("CARGO_PKG_VERSION");
    let sdk_line = match sdk {
        Sdk::Carried => format!(
            "# The SDK that drover {version} carries (`drover plugin new` wrote it here). Once drover-sdk\n\
             # is on crates.io, this line can read: drover-sdk = {{ version = \"{version}\", features = [\"{feature}\"] }}\n\
             drover-sdk = {{ path = \"{VENDORED_SDK}\", features = [\"{feature}\"] }}"
        ),
        Sdk::Path(p) => format!(r#"drover-sdk = {{ path = {:?}, features = ["{feature}"] }}"#, p.display().to_string()),
    };
    // A device type has recorded payloads to test against; a rule, parameters and device
    // contexts.
    let (test_line, test_note) = match kind {
        Kind::DeviceType => (
            "drover plugin test {{name}}.wasm\n",
            "* `drover plugin test` runs the component on the recorded device payloads in\n  \
             `fixtures/` (`cases.toml` says what each must give), with no server.\n",
        ),
        Kind::PolicyRule => (
            "drover plugin test {{name}}.wasm\n",
            "* `drover plugin test` runs the component on the parameters and device contexts in\n  \
             `fixtures/` (`cases.toml` says what each must give), with no server.\n",
        ),
        _ => ("", ""),
    };
    // An admin grants what the manifest asks for, before the first install.
    let asked: Vec<String> = files(kind)
        .iter()
        .find(|(path, _)| *path == "plugin.toml")
        .and_then(|(_, text)| super::Manifest::parse(&text.replace("{{name}}", name)).ok())
        .map(|m| m.capabilities.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    let (grant_line, grant_note) = if asked.is_empty() {
        (String::new(), String::new())
    } else {
        (
            format!("drover plugin grant {name} {}\n", asked.join(" ")),
            format!(
                "* `grant` gives the plugin what `plugin.toml` asks for ({}); an admin decides, once\n  \
                 per server, before the first install.\n",
                asked.join(", ")
            ),
        )
    };
    let fill = |text: &str| {
        text.replace("{{test}}", test_line)
            .replace("{{grant}}", &grant_line)
            .replace("{{grant_note}}", &grant_note)
            .replace("{{test_note}}", test_note)
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{kind}}", &feature)
            .replace("{{sdk}}", &sdk_line)
    };
    let mut files: Vec<(String, String)> = files(kind)
        .into_iter()
        .map(|(path, text)| {
            let mut text = fill(text);
            if path == "Cargo.toml" {
                // A crate of its own, even when generated inside another workspace.
                text.push_str("\n[workspace]\n");
            }
            (path.to_string(), text)
        })
        .collect();
    if let Sdk::Carried = sdk {
        files.extend(SDK_FILES.iter().map(|(path, text)| (format!("{VENDORED_SDK}/{path}"), text.to_string())));
        files.push(("Cargo.lock".into(), LOCK.into()));
    }
    write_all(dir, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One source of truth for the contract: the SDK's WIT is the repository's `wit/`.
    #[test]
    fn the_carried_sdk_is_the_workspace_one() {
        for name in ["types.wit", "worlds.wit"] {
            let root = std::fs::read_to_string(format!("{}/../wit/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let sdk = SDK_FILES.iter().find(|(p, _)| *p == format!("wit/{name}")).unwrap().1;
            assert_eq!(root, sdk, "sdk/wit/{name} differs from wit/{name}: copy wit/ to sdk/wit/");
        }
        // sdk/Cargo.toml is written out in full (it must build outside the workspace):
        // its version and wit-bindgen must stay the workspace's.
        let workspace: toml::Table =
            toml::from_str(&std::fs::read_to_string(format!("{}/../Cargo.toml", env!("CARGO_MANIFEST_DIR"))).unwrap())
                .unwrap();
        let sdk: toml::Table = toml::from_str(SDK_FILES[0].1).unwrap();
        assert_eq!(sdk["package"]["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(sdk["package"]["version"], workspace["workspace"]["package"]["version"]);
        assert_eq!(sdk["package"]["edition"], workspace["workspace"]["package"]["edition"]);
        assert_eq!(sdk["dependencies"]["wit-bindgen"], workspace["workspace"]["dependencies"]["wit-bindgen"]);
    }

    #[test]
    fn fills_every_placeholder_and_refuses_bad_names() {
        for kind in [Kind::DeviceType, Kind::Transport, Kind::PolicyRule] {
            let dir = tempfile::tempdir().unwrap();
            let files = generate("acme-unit", kind, dir.path(), &Sdk::Carried).unwrap();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
            }
            let manifest = std::fs::read_to_string(dir.path().join("plugin.toml")).unwrap();
            assert!(manifest.contains(&format!("kind = \"{kind}\"")));
            assert!(matches!(generate("acme-unit", kind, dir.path(), &Sdk::Carried), Err(TemplateError::Exists(_))));
        }
        let dir = tempfile::tempdir().unwrap();
        for f in generate_in(Lang::Python, "acme-py", dir.path()).unwrap() {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
        }
        assert!(std::fs::read_to_string(dir.path().join("app.py")).unwrap().contains(r#"name="acme-py""#));
        let dir = tempfile::tempdir().unwrap();
        for f in generate_in(Lang::JavaScript, "acme-js", dir.path()).unwrap() {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
        }
        assert!(std::fs::read_to_string(dir.path().join("app.js")).unwrap().contains(r#"name: "acme-js""#));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(generate("Acme", Kind::DeviceType, dir.path(), &Sdk::Carried), Err(TemplateError::Name(_))));
        assert!(matches!(generate("-x", Kind::DeviceType, dir.path(), &Sdk::Carried), Err(TemplateError::Name(_))));
    }
}
