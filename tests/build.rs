//! Builds the purpose-built test plugins in tests/plugins/ for wasm32-wasip2.

use std::path::PathBuf;

const PLUGINS: &[&str] = &[
    "drover-test-testbed",
    "drover-test-fs-reader",
    "drover-test-net-dialer",
    "drover-test-wrong-world",
    "drover-test-old-contract",
    "drover-test-rule-trap",
    "drover-test-reach",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    drover_sdk_build::rerun_if_changed(&[
        manifest_dir.join("plugins"),
        workspace.join("wit"),
        workspace.join("sdk/src"),
    ]);
    let built = drover_sdk_build::build_components(&workspace, PLUGINS);
    let mut code = String::new();
    for (package, path) in built {
        let name = package.trim_start_matches("drover-test-").replace('-', "_").to_uppercase();
        code.push_str(&format!("pub const {name}: &str = {:?};\n", path.display().to_string()));
    }
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("components.rs"), code).unwrap();
}
