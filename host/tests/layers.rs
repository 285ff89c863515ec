//! The layering of docs/architecture.md, checked from the code's own paths: every
//! `crate::…` a file names (in `use` lines and inline) is an import of that module.
//!
//! * No file of the domain, storage or plugin runtime names a front (`http`, `mqtt`,
//!   `coap`, `wakeup`) or the composition root (`server`).
//! * No front names another front.
//! * No import loop among the top-level modules passes through a front.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const FRONTS: &[&str] = &["http", "mqtt", "coap", "wakeup"];
const ROOT: &[&str] = &["server", "main"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `http/agent.rs` → `http`, `core.rs` → `core`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Top-level modules a file names: `crate::x`, and `use crate::{x, y::…}` groups.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Code only: comments may mention any module.
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.insert(name);
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let from = module_of(&src, &f);
        let text = std::fs::read_to_string(&f).unwrap();
        let to: Vec<String> = named(&text).into_iter().filter(|m| *m != from).collect();
        g.entry(from).or_default().extend(to);
    }
    g
}

#[test]
fn nothing_below_the_fronts_names_a_front() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, to) in &g {
        let from_front = FRONTS.contains(&from.as_str());
        if ROOT.contains(&from.as_str()) {
            continue;
        }
        for m in to {
            if ROOT.contains(&m.as_str()) || (FRONTS.contains(&m.as_str()) && (!from_front || m != from)) {
                wrong.push(format!("{from} names {m}"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken (docs/architecture.md): {wrong:#?}");
}

#[test]
fn no_import_loop_passes_through_a_front() {
    let g = graph();
    // A loop through a front F: F reaches something that reaches F back.
    fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, target: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for n in g.get(&m).into_iter().flatten() {
                if n == target {
                    return true;
                }
                if seen.insert(n.clone()) {
                    stack.push(n.clone());
                }
            }
        }
        false
    }
    for front in FRONTS.iter().chain(ROOT) {
        assert!(!reaches(&g, front, front), "an import loop passes through `{front}`");
    }
}

#[test]
fn the_check_sees_imports() {
    let n =
        named("use crate::core::Core;\nuse crate::{http, mqtt::Gate};\nlet x = crate::events::next(); // crate::coap");
    assert_eq!(n, ["core", "events", "http", "mqtt"].into_iter().map(String::from).collect());
}
