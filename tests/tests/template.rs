//! The plugin template builds into a component that loads and answers, so it cannot rot.

use drover::plugins::types::{Channel, HttpMethod, HttpRequest};
use drover::plugins::{Capability, LoadOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn render(dir: &Path, name: &str, sdk: &Path) {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml.template")).unwrap();
    std::fs::remove_file(dir.join("Cargo.toml.template")).unwrap();
    // Outside this repository the SDK comes from crates.io; here, from the checkout.
    let manifest = manifest.replace(
        r#"drover-sdk = { version = "0.1", features = ["device-type"] }"#,
        &format!(r#"drover-sdk = {{ path = {:?}, features = ["device-type"] }}"#, sdk.display().to_string()),
    );
    let manifest = manifest.replace("{{name}}", name);
    std::fs::write(dir.join("Cargo.toml"), format!("{manifest}\n[workspace]\n")).unwrap();
    for file in ["plugin.toml", "src/lib.rs", "README.md"] {
        let p = dir.join(file);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"));
        std::fs::write(p, text).unwrap();
    }
}

#[tokio::test]
async fn the_template_builds_loads_and_answers() {
    let workspace = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let dir = workspace.join("target/template-check/acme-tracker");
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&workspace.join("sdk/template"), &dir);
    render(&dir, "acme-tracker", &workspace.join("sdk"));
    // The workspace's lock file pins the same dependency versions CI already fetched.
    std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let target = workspace.join("target/wasm");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "the template did not build");
    let bytes = std::fs::read(target.join("wasm32-wasip2/release/acme_tracker.wasm")).unwrap();

    let options = LoadOptions { grants: [Capability::Log].into(), ..Default::default() };
    let plugin = drover_tests::runtime().load(&bytes, options).await.unwrap();
    assert_eq!(plugin.manifest.name, "acme-tracker");
    plugin.validate("REBOOT", None).await.unwrap();
    let chan = Channel::Http(HttpRequest {
        method: HttpMethod::Post,
        path: "enroll".into(),
        query: String::new(),
        content_type: None,
        headers: vec![],
    });
    let e = plugin.enroll(chan, br#"{"id": "tracker-7"}"#.to_vec()).await.unwrap();
    assert_eq!(e.device_id, "tracker-7");
}
