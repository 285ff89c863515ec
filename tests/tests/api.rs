//! The admin API's contract: the OpenAPI document is generated from the handlers, every
//! documented operation is served (and guarded), and every schema it references exists.

use drover_tests::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;

/// Every `$ref` under `v`.
fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.insert(r.clone());
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_served_api() {
    let server = TestServer::start(Backend::Sqlite).await;
    // Public: clients and generators fetch it without a token.
    let r = server.http.get(server.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    let paths = doc["paths"].as_object().unwrap();
    let listed: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    for must in [
        "/api/v1/devices",
        "/api/v1/devices/{device_type}/{device_id}",
        "/api/v1/devices/{device_type}/{device_id}/tags",
        "/api/v1/devices/{device_type}/{device_id}/revoke-credentials",
        "/api/v1/devices/import",
        "/api/v1/groups",
        "/api/v1/groups/{name}",
        "/api/v1/groups/{name}/members",
        "/api/v1/operations",
        "/api/v1/operations/{id}",
        "/api/v1/operations/{id}/cancel",
        "/api/v1/activities",
        "/api/v1/activities/{id}",
        "/api/v1/activities/{id}/cancel",
        "/api/v1/plugins",
        "/api/v1/admin-tokens",
        "/api/v1/enrollment-tokens",
    ] {
        assert!(listed.contains(must), "{must} is not in the document: {listed:?}");
    }

    // Every documented operation exists (not 404/405) and wants a token.
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let Ok(method) = Method::from_bytes(method.to_uppercase().as_bytes()) else { continue };
            let concrete = path
                .replace("{device_type}", "android")
                .replace("{device_id}", "x")
                .replace("{name}", "g")
                .replace("{id}", "1");
            let r = server.http.request(method.clone(), server.url(&concrete)).send().await.unwrap();
            if path == "/api/v1/login" {
                // The one way in without a token: documented as needing none.
                assert_eq!(op["security"], serde_json::json!([{}]), "login documents a token");
                assert_eq!(r.status(), StatusCode::BAD_REQUEST, "an empty login");
                continue;
            }
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
            assert!(
                op["responses"].get("200").or(op["responses"].get("201")).or(op["responses"].get("204")).is_some(),
                "{method} {path} documents no success"
            );
            assert!(op["responses"].get("401").is_some(), "{method} {path} documents no 401");
            operations += 1;
        }
    }
    assert!(operations >= 20, "only {operations} operations documented");

    // Every referenced schema is defined.
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for r in &all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "{r} is referenced but not defined");
    }
    for must in ["Device", "DeviceQuery", "OperationRow", "TransitionRow", "ErrorBody", "AddOperation"] {
        assert!(schemas.contains_key(must), "schema {must} missing");
    }
    server.stop().await;
}
