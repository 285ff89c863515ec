//! Webhooks (issue 24), on SQLite and PostgreSQL, against a real receiver on loopback:
//! signed in the Standard Webhooks form (checked by Python's hmac, not Drover's code),
//! delivered at least once and in order across a receiver that fails, times out and
//! recovers, and across a Drover restart; disabled after repeated failures, with an event
//! saying so; redelivered on request; and never sent to a private address unless allowed.

use drover_tests::provider::{Provider, Received};
use drover_tests::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// A Standard Webhooks secret (24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn policy(config: &mut drover::config::Config) {
    config.webhooks = drover::webhooks::Policy {
        allow_private: true,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        failure_limit: 4,
        timeout: Duration::from_millis(800),
    };
}

async fn subscribe(server: &TestServer, body: Value) -> Value {
    let r = server.admin(Method::POST, "/api/v1/webhooks").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

async fn get(server: &TestServer, path: &str) -> Value {
    let r = server.admin(Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

/// Every request's signature checked by Python's `hmac` over `id.timestamp.body`.
fn verify_with_python(requests: &[Received]) {
    let dir = tempfile::tempdir().unwrap();
    let mut listing = String::new();
    for (i, r) in requests.iter().enumerate() {
        let path = dir.path().join(format!("{i}.body"));
        std::fs::write(&path, &r.body).unwrap();
        listing.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            path.display(),
            r.header("webhook-id").unwrap(),
            r.header("webhook-timestamp").unwrap(),
            r.header("webhook-signature").unwrap()
        ));
    }
    std::fs::write(dir.path().join("list"), listing).unwrap();
    let script = r#"
import base64, hashlib, hmac, sys
key = base64.b64decode(sys.argv[1].split("_", 1)[1])
for line in open(sys.argv[2]):
    path, msg_id, ts, sigs = line.rstrip("\n").split("\t")
    body = open(path, "rb").read()
    want = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    assert any(s.split(",", 1)[1] == want for s in sigs.split()), (msg_id, sigs, want)
print("verified", sum(1 for _ in open(sys.argv[2])))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, SECRET, dir.path().join("list").to_str().unwrap()])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("verified {}", requests.len()));
}

/// The `(webhook-id, device id)` of each request that carried a device event.
fn devices(requests: &[Received]) -> Vec<(String, String)> {
    requests
        .iter()
        .map(|r| {
            let body = r.json();
            (r.header("webhook-id").unwrap().to_string(), body["data"]["data"]["id"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Wait (bounded) until `f` holds for the subscription `name`.
async fn until(server: &TestServer, name: &str, f: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let w = get(server, &format!("/api/v1/webhooks/{name}")).await;
        if f(&w) {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("webhook {name} never got there: {}", get(server, &format!("/api/v1/webhooks/{name}")).await);
}

async fn delivery(backend: Backend) {
    let server = TestServer::start_with(backend, policy).await;
    // Fails twice, then accepts.
    let receiver = Provider::start(vec![(500, vec![], "down"), (503, vec![], "busy")]).await;
    let created = subscribe(
        &server,
        json!({ "name": "crm", "url": format!("{}/hooks/drover", receiver.base), "types": ["device.enrolled"],
                "secret": SECRET }),
    )
    .await;
    assert_eq!(created["secret"], SECRET);
    assert_eq!(created["enabled"], true);
    // The secret is in that answer only.
    let listed = get(&server, "/api/v1/webhooks").await;
    assert!(!listed.to_string().contains(SECRET), "{listed}");

    for id in ["wh-1", "wh-2", "wh-3"] {
        server.enroll_android(id).await;
    }
    let got = receiver.wait_for(5).await;
    // Two failures of the first, then the three in order: nothing skipped or reordered.
    let seen = devices(&got);
    let ids: Vec<&str> = seen.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(ids, ["wh-1", "wh-1", "wh-1", "wh-2", "wh-3"]);
    assert_eq!(seen[0].0, seen[2].0, "a retry carries the same webhook-id");
    assert!(got.iter().all(|r| r.method == "POST" && r.uri == "/hooks/drover"));
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let body = got[2].json();
    assert_eq!(body["type"], "device.enrolled");
    assert_eq!(body["data"]["target"], "device/android/wh-1");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    let log = get(&server, "/api/v1/webhooks/crm/deliveries").await;
    let attempts: Vec<(i64, Option<i64>)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["attempt"].as_i64().unwrap(), d["status"].as_i64()))
        .collect();
    assert_eq!(attempts[..3], [(1, Some(500)), (2, Some(503)), (3, Some(200))]);

    // A receiver that stops answering in time: the event waits, then goes through.
    receiver.slow(Duration::from_millis(1500));
    server.enroll_android("wh-4").await;
    until(&server, "crm", |w| w["failures"].as_i64().unwrap() >= 1).await;
    receiver.slow(Duration::ZERO);
    until(&server, "crm", |w| w["failures"] == 0).await;
    let got = receiver.received();
    assert_eq!(devices(&got).last().unwrap().1, "wh-4");
    assert!(devices(&got[5..]).iter().all(|(_, d)| d == "wh-4"), "only wh-4 was retried");
    let log = get(&server, "/api/v1/webhooks/crm/deliveries").await;
    assert!(
        log["items"].as_array().unwrap().iter().any(|d| d["error"].as_str().is_some_and(|e| e.contains("no answer")))
    );

    // Across a restart: an event not yet delivered is delivered by the new process.
    let before = receiver.received().len();
    receiver.slow(Duration::from_millis(1500));
    server.enroll_android("wh-5").await;
    until(&server, "crm", |w| w["failures"].as_i64().unwrap() >= 1).await;
    let server = server.restart().await;
    receiver.slow(Duration::ZERO);
    let got = receiver.wait_for(before + 2).await;
    let after: Vec<String> = devices(&got[before..]).into_iter().map(|(_, d)| d).collect();
    assert!(after.iter().all(|d| d == "wh-5") && after.len() >= 2, "{after:?}");
    until(&server, "crm", |w| w["failures"] == 0).await;

    // Every request, retries included, verifies with an independent HMAC.
    verify_with_python(&receiver.received());

    // Redelivery on request: everything after a point, again, in order.
    let start = got[0].json()["data"]["seq"].as_i64().unwrap() - 1;
    let n = receiver.received().len();
    let r = server
        .admin(Method::POST, "/api/v1/webhooks/crm/redeliver")
        .json(&json!({ "after": start }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again = receiver.wait_for(n + 5).await;
    let ids: Vec<String> = devices(&again[n..]).into_iter().map(|(_, d)| d).collect();
    assert_eq!(ids, ["wh-1", "wh-2", "wh-3", "wh-4", "wh-5"]);

    // A receiver that never recovers: disabled after four failures in a row, with an event.
    let broken = Provider::start(vec![(500, vec![], ""); 20]).await;
    subscribe(&server, json!({ "name": "broken", "url": broken.base, "types": ["device."] })).await;
    server.enroll_android("wh-6").await;
    let w = until(&server, "broken", |w| w["enabled"] == false).await;
    assert_eq!(w["failures"], 4);
    assert!(w["disabled_reason"].as_str().unwrap().contains("4 failed deliveries"), "{w}");
    assert_eq!(broken.received().len(), 4);
    let events = get(&server, "/api/v1/events?type=webhook.").await;
    assert_eq!(events["items"][0]["target"], "webhook/broken");
    // Nothing more is sent while disabled; enabled again, it resumes with that event.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(broken.received().len(), 4);
    let r = server.admin(Method::POST, "/api/v1/webhooks/broken/enable").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let got = broken.wait_for(5).await;
    assert_eq!(got[4].json()["data"]["data"]["id"], "wh-6");

    // Group and tag filters: only the events about the group's devices, or the tagged ones.
    let r = server.admin(Method::POST, "/api/v1/groups").json(&json!({ "name": "lobby" })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = server
        .admin(Method::POST, "/api/v1/groups/lobby/members")
        .json(&json!({ "devices": [{ "type": "android", "id": "wh-1" }] }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = server
        .admin(Method::PUT, "/api/v1/devices/android/wh-2/tags")
        .json(&json!({ "tags": ["floor-2"] }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let lobby = Provider::start(vec![]).await;
    let floor = Provider::start(vec![]).await;
    subscribe(&server, json!({ "name": "lobby", "url": lobby.base, "types": ["operation."], "group": "lobby" })).await;
    subscribe(&server, json!({ "name": "floor", "url": floor.base, "types": ["operation."], "tag": "floor-2" })).await;
    let r = server
        .admin(Method::POST, "/api/v1/webhooks")
        .json(&json!({ "name": "nowhere", "url": lobby.base, "group": "no-such-group" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // One activity for three devices, cancelled: three operation events, one per device.
    let r = server
        .admin(Method::POST, "/api/v1/operations")
        .json(&json!({ "code": "DEVICE_RING", "targets": { "devices": [
            { "type": "android", "id": "wh-1" }, { "type": "android", "id": "wh-2" }, { "type": "android", "id": "wh-3" }
        ] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let activity = r.json::<Value>().await.unwrap()["activity"]["id"].as_i64().unwrap();
    let r = server.admin(Method::POST, &format!("/api/v1/activities/{activity}/cancel")).send().await.unwrap();
    assert!(r.status().is_success());
    let latest = server.state.store.latest_event().await.unwrap();
    for name in ["lobby", "floor"] {
        until(&server, name, |w| w["cursor"].as_i64().unwrap() >= latest).await;
    }
    let about = |p: &Provider| -> Vec<String> {
        p.received().iter().map(|r| r.json()["data"]["data"]["device_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(about(&lobby), ["wh-1"]);
    assert_eq!(about(&floor), ["wh-2"]);

    // Deleted: nothing more.
    let r = server.admin(Method::DELETE, "/api/v1/webhooks/broken").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = server.admin(Method::GET, "/api/v1/webhooks/broken").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_sqlite() {
    delivery(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    delivery(backend).await;
}

/// Without `--webhook-allow-private`, an admin token cannot make the server call into
/// its own network: an address literal is refused when subscribing, and a name that
/// resolves to loopback is refused at delivery (the receiver never hears of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_unless_allowed() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        policy(c);
        c.webhooks.allow_private = false;
    })
    .await;
    let receiver = Provider::start(vec![]).await;
    for url in [receiver.base.clone(), "http://169.254.169.254/latest/meta-data".into(), "http://[::1]:9/".into()] {
        let r = server
            .admin(Method::POST, "/api/v1/webhooks")
            .json(&json!({ "name": "x", "url": url }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("not a public address"), "{body}");
    }
    let port = receiver.base.rsplit(':').next().unwrap();
    subscribe(&server, json!({ "name": "sneaky", "url": format!("http://localhost:{port}/") })).await;
    server.enroll_android("wh-private").await;
    let w = until(&server, "sneaky", |w| w["failures"].as_i64().unwrap() >= 1).await;
    assert!(w["cursor"].as_i64().unwrap() < server.state.store.latest_event().await.unwrap());
    let log = get(&server, "/api/v1/webhooks/sneaky/deliveries").await;
    assert!(log["items"][0]["error"].as_str().unwrap().contains("non-public"), "{log}");
    assert!(receiver.received().is_empty());
    server.stop().await;
}
