//! Builds the first-party plugins for wasm32-wasip2 and embeds them in the binary, so
//! `cargo run -- serve` and `cargo test` need nothing else.

use std::path::PathBuf;

/// (device type / plugin name, cargo package) of every first-party plugin.
const FIRST_PARTY: &[(&str, &str)] = &[
    ("android", "drover-plugin-android"),
    ("esp8266", "drover-plugin-esp8266"),
    ("ios", "drover-plugin-ios"),
    ("windows", "drover-plugin-windows"),
    ("lwm2m", "drover-plugin-lwm2m"),
    ("fcm", "drover-plugin-fcm"),
    ("apns", "drover-plugin-apns"),
    ("wns", "drover-plugin-wns"),
    ("webhook", "drover-plugin-webhook"),
    ("version-range", "drover-plugin-version-range"),
    ("telemetry-threshold", "drover-plugin-telemetry-threshold"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let mut watched = vec![
        workspace.join("wit"),
        workspace.join("sdk/src"),
        workspace.join("sdk/wit"),
        workspace.join("sdk/Cargo.toml"),
    ];
    for (name, _) in FIRST_PARTY {
        watched.push(workspace.join("plugins").join(name));
    }
    drover_sdk_build::rerun_if_changed(&watched);
    // `sqlx::migrate!` embeds the migrations at compile time, but cargo does not know it
    // reads them: without this a new migration file alone would not rebuild the host.
    drover_sdk_build::rerun_if_changed(&[manifest_dir.join("migrations")]);

    let packages: Vec<&str> = FIRST_PARTY.iter().map(|(_, p)| *p).collect();
    let built = drover_sdk_build::build_components(&workspace, &packages);
    let mut code = String::from(
        "/// (name, component bytes) of each first-party plugin.\npub static PLUGINS: &[(&str, &[u8])] = &[\n",
    );
    for ((name, _), (_, path)) in FIRST_PARTY.iter().zip(&built) {
        code.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("first_party.rs");
    std::fs::write(out, code).unwrap();
}
