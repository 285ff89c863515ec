//! `drover plugin new` for each kind: the generated crate passes its own native tests,
//! builds into a component, loads and answers; the device type is then signed, installed
//! on a server and operates a device. So the templates cannot rot.

use drover::plugins::template::{Sdk, generate};
use drover::plugins::types::{Channel, HttpMethod, HttpRequest};
use drover::plugins::{Capability, Described, Kind, LoadOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn cargo(dir: &Path, args: &[&str], target_dir: &Path) {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`cargo {}` failed in {}:\n{}\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generate `name` of `kind`, run its tests natively, build its component; the bytes.
fn generated(name: &str, kind: Kind) -> Vec<u8> {
    let workspace = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let dir = workspace.join("target/template-check").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    generate(name, kind, &dir, &Sdk::Path(workspace.join("sdk").canonicalize().unwrap())).unwrap();
    // The workspace's lock file pins the same dependency versions CI already fetched.
    std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    // Shared target directories: dependencies compile once for all kinds (and the wasm
    // side shares the first-party plugins' build).
    cargo(&dir, &["test", "--quiet"], &workspace.join("target/template-native"));
    let target = workspace.join("target/wasm");
    cargo(&dir, &["build", "--release", "--target", "wasm32-wasip2"], &target);
    std::fs::read(target.join(format!("wasm32-wasip2/release/{}.wasm", name.replace('-', "_")))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_generates_tests_builds_loads_and_answers() {
    // Device type.
    let bytes = generated("acme-tracker", Kind::DeviceType);
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
    let e = plugin.enroll(drover::plugins::Source::Admin, chan, br#"{"id": "tracker-7"}"#.to_vec()).await.unwrap();
    assert_eq!(e.device_id, "tracker-7");
    // Its recorded payloads pass `drover plugin test` as generated.
    let fixtures =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/template-check/acme-tracker/fixtures"));
    let outcomes = drover::plugins::fixtures::run(&plugin, &fixtures).await.unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes.iter().all(|o| o.passed), "{outcomes:?}");
    operate(&bytes).await;

    // Transport: builds the provider request from the admin's setting.
    let bytes = generated("acme-push", Kind::Transport);
    let options = LoadOptions { grants: [Capability::Config].into(), ..Default::default() };
    let runtime = drover_tests::runtime();
    runtime.set_config("acme-push", [("api_key".to_string(), "k-1".to_string())].into());
    let plugin = runtime.load(&bytes, options).await.unwrap();
    assert_eq!(plugin.manifest.outbound_hosts, ["push.example.com"]);
    let request = plugin
        .build_request(
            drover::plugins::bindings::transport::drover::plugin::transport_types::PushMessage {
                device_type: "acme-tracker".into(),
                device_id: "tracker-7".into(),
                token: drover::plugins::types::PushToken {
                    transport: "acme-push".into(),
                    token: "t".into(),
                    extra: vec![],
                },
                payload: None,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(request.url, "https://push.example.com/v1/wake");

    // Policy rule: loads as its world; describe (the smoke test) names it.
    let bytes = generated("acme-battery", Kind::PolicyRule);
    let plugin = drover_tests::runtime().load(&bytes, LoadOptions::default()).await.unwrap();
    match &plugin.described {
        Described::PolicyRule(i) => assert_eq!(i.name, "acme-battery"),
        _ => panic!("not a policy rule"),
    }
}

/// The generated device type, signed and installed on a real server, serves a device:
/// enroll, an operation, a poll that delivers it, a result that completes it.
async fn operate(component: &[u8]) {
    use reqwest::{Method, StatusCode};
    use serde_json::{Value, json};
    let server = drover_tests::TestServer::start(drover_tests::Backend::Sqlite).await;
    // The template's manifest says `publisher = "you"` and asks for `log`.
    server.install_signed("acme-tracker", "you", &["log"], component).await;

    let r = server
        .http
        .post(server.url("/agent/v1/acme-tracker/enroll"))
        .body(r#"{"id": "tracker-7"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let r = server
        .admin(Method::POST, "/api/v1/operations")
        .json(&json!({"code": "REBOOT", "targets": {"devices": [{"type": "acme-tracker", "id": "tracker-7"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let poll =
        |body: String| server.http.put(server.url("/agent/v1/acme-tracker/poll")).bearer_auth(&token).body(body).send();
    let ops: Vec<Value> = poll("[]".into()).await.unwrap().json().await.unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["code"], "REBOOT");
    let id = ops[0]["id"].as_i64().unwrap();
    let r = poll(json!([{"id": id, "status": "COMPLETED"}]).to_string()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let op: Value =
        server.admin(Method::GET, &format!("/api/v1/operations/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(op["state"], "COMPLETED", "{op}");
    server.stop().await;
}
