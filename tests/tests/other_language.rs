//! A plugin written in another language: `examples/python-plugin` (componentize-py) is
//! built, given its manifest, run against its fixtures, then signed, installed on a real
//! server and used by a device. Needs componentize-py: `DROVER_COMPONENTIZE_PY` names it
//! (CI installs it), else it is looked up on PATH; without it the test says it skipped,
//! except in CI, where that is a failure.

use drover::plugins::{Capability, LoadOptions, Manifest};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

fn componentize_py() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DROVER_COMPONENTIZE_PY") {
        return Some(PathBuf::from(p));
    }
    let found = Command::new("componentize-py").arg("--version").output().is_ok_and(|o| o.status.success());
    found.then(|| PathBuf::from("componentize-py"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_device_type_builds_tests_installs_and_operates() {
    let Some(tool) = componentize_py() else {
        assert!(std::env::var_os("CI").is_none(), "CI must provide componentize-py (DROVER_COMPONENTIZE_PY)");
        eprintln!("other_language: componentize-py not found (set DROVER_COMPONENTIZE_PY): skipped");
        return;
    };
    let workspace = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let example = workspace.join("examples/python-plugin");
    let out_dir = workspace.join("target/python-plugin");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("py-tracker.wasm");
    let built = Command::new(&tool)
        .current_dir(&example)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-d", "../../wit", "-w", "device-type", "componentize", "--stub-wasi", "app", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(built.status.success(), "componentize-py failed: {}", String::from_utf8_lossy(&built.stderr));
    let manifest = std::fs::read_to_string(example.join("plugin.toml")).unwrap();
    let component = Manifest::embed(&std::fs::read(&out).unwrap(), &manifest).unwrap();
    // Embedding twice is refused: it would hide the manifest that was there.
    assert!(Manifest::embed(&component, &manifest).is_err());

    // Its recorded payloads, through the same sandbox and limits as the server.
    let grants = [Capability::Log, Capability::Config, Capability::Kv].into();
    let plugin = drover_tests::runtime().load(&component, LoadOptions { grants, ..Default::default() }).await.unwrap();
    let outcomes = drover::plugins::fixtures::run(&plugin, &example.join("fixtures")).await.unwrap();
    assert!(outcomes.iter().all(|o| o.passed), "{outcomes:?}");

    // Signed, installed, used by a device.
    let server = drover_tests::TestServer::start(drover_tests::Backend::Sqlite).await;
    server.install_signed("py-tracker", "you", &["log", "config", "kv"], &component).await;

    let r = server
        .http
        .post(server.url("/agent/v1/py-tracker/enroll"))
        .body(r#"{"id": "py-1", "model": "T-1000"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let add = |payload: Value| {
        server
            .admin(Method::POST, "/api/v1/operations")
            .json(&json!({"code": "SET_INTERVAL", "payload": payload, "targets": {"devices": [{"type": "py-tracker", "id": "py-1"}]}}))
            .send()
    };
    // The Python plugin validates the payload: its message reaches the admin.
    let r = add(json!({"seconds": 5})).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("seconds must be an integer >= 10"));
    let r = add(json!({"seconds": 60})).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let poll =
        |body: String| server.http.put(server.url("/agent/v1/py-tracker/poll")).bearer_auth(&token).body(body).send();
    let ops: Vec<Value> = poll("[]".into()).await.unwrap().json().await.unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["code"], "SET_INTERVAL");
    let id = ops[0]["id"].as_i64().unwrap();
    let r = poll(json!([{"id": id, "status": "COMPLETED", "response": {"applied": 60}}]).to_string()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let op: Value =
        server.admin(Method::GET, &format!("/api/v1/operations/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(op["state"], "COMPLETED", "{op}");
    // A malformed report is refused and changes nothing.
    let r = poll("[{\"id\": ".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    server.stop().await;
}
