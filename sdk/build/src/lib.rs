//! Build plugin crates into WebAssembly components from a `build.rs`, in the style of
//! wasmtime's test-programs artifacts crate.
//!
//! The nested `cargo build --target wasm32-wasip2` uses its own target directory
//! (`<workspace>/target/wasm`), so it never waits on the lock of the outer build, and
//! every build script that calls it shares one set of compiled wasm dependencies.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target plugins are built for; it produces a component directly.
pub const TARGET: &str = "wasm32-wasip2";

/// The cargo profile plugins are built with (defined in the workspace `Cargo.toml`).
pub const PROFILE: &str = "plugin";

/// Build `packages` (cargo package names) of the workspace at `workspace` for
/// wasm32-wasip2 and return each package's component path, in the order given.
///
/// Panics with a message saying what to do when the target is not installed or the
/// build fails: this runs in build scripts, where a panic is the error report.
pub fn build_components(workspace: &Path, packages: &[&str]) -> Vec<(String, PathBuf)> {
    check_target_installed();
    let target_dir = workspace.join("target").join("wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .arg("build")
        .arg("--target")
        .arg(TARGET)
        .arg("--profile")
        .arg(PROFILE)
        .env("CARGO_TARGET_DIR", &target_dir)
        // The outer build's flags are for the host target; they must not leak in.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PRIMARY_PACKAGE")
        // Under `cargo clippy` the outer build sets clippy as the workspace wrapper; the
        // plugins are linted by the outer run already, natively.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env_remove("CLIPPY_CONF_DIR");
    for p in packages {
        cmd.arg("-p").arg(p);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("could not run cargo to build plugins: {e}"));
    assert!(status.success(), "building plugins {packages:?} for {TARGET} failed (see the cargo output above)");
    let out = target_dir.join(TARGET).join(PROFILE);
    packages
        .iter()
        .map(|p| {
            let path = out.join(format!("{}.wasm", p.replace('-', "_")));
            assert!(path.exists(), "plugin {p} built but {} is missing", path.display());
            (p.to_string(), path)
        })
        .collect()
}

/// Tell cargo to rerun the calling build script when anything a plugin is built from changes.
pub fn rerun_if_changed(paths: &[PathBuf]) {
    for p in paths {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

fn check_target_installed() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(root) = sysroot {
        let lib = root.join("lib").join("rustlib").join(TARGET);
        if !lib.exists() {
            panic!(
                "the Rust target {TARGET} is not installed, and Drover's plugins are built for it.\n\
                 Install it with:\n\n    rustup target add {TARGET}\n"
            );
        }
    }
}
