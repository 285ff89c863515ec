//! The plugin platform end to end, over HTTP on a real server: signed, unsigned and
//! tampered uploads; versions side by side, manual and automatic rollback; grants; the
//! breaker; persistence across restart; a hot swap under concurrent device traffic with
//! zero failed requests. Components are the real first-party Android plugin and the
//! testbed plugin, re-versioned in place (`with_version`) as a rebuild would be.

use drover::plugins::catalog::FaultPolicy;
use drover::plugins::signing;
use drover_tests::{TestServer, component, components, e2e, e2e_with, unique, with_version};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../plugins/android/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A publisher key pair, registered on the server for `publisher`.
struct Publisher {
    private: String,
    key_id: String,
}

async fn publisher(server: &TestServer, name: &str) -> Publisher {
    let (private, public) = signing::generate().unwrap();
    let r = server
        .admin(Method::POST, "/api/v1/publisher-keys")
        .json(&json!({"publisher": name, "public_key": public}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let key_id = r.json::<Value>().await.unwrap()["key_id"].as_str().unwrap().to_string();
    Publisher { private, key_id }
}

impl Publisher {
    fn sign(&self, component: &[u8]) -> Vec<u8> {
        signing::encode_signature(&signing::sign(&self.private, component).unwrap()).into_bytes()
    }
}

async fn upload(server: &TestServer, component: &[u8], signature: Option<Vec<u8>>) -> (StatusCode, Value) {
    let mut form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(component.to_vec()).file_name("plugin.wasm"));
    if let Some(s) = signature {
        form = form.part("signature", reqwest::multipart::Part::bytes(s));
    }
    let r = server.admin(Method::POST, "/api/v1/plugins").multipart(form).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn put_grants(server: &TestServer, plugin: &str, capabilities: Value) -> reqwest::Response {
    let path = format!("/api/v1/plugins/{plugin}/grants");
    server.admin(Method::PUT, &path).json(&json!({ "capabilities": capabilities })).send().await.unwrap()
}

async fn post(server: &TestServer, path: &str) -> (StatusCode, Value) {
    let r = server.admin(Method::POST, path).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn get(server: &TestServer, path: &str) -> Value {
    let r = server.admin(Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "GET {path}");
    r.json().await.unwrap()
}

fn android() -> Vec<u8> {
    drover_tests::android().to_vec()
}

/// Enroll an Android device; returns (id, credential).
async fn enroll(server: &TestServer) -> (String, String) {
    let id = unique("dev");
    let body = fixture("enroll.json").replace("354956090214718", &id);
    let r = server.http.post(server.url("/agent/v1/android/enroll")).body(body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    (id, r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string())
}

async fn poll(server: &TestServer, id: &str, token: &str) -> reqwest::Response {
    server.poll_android(id, token, "[]").await
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn error_message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or("").to_string()
}

async fn signatures(server: &TestServer) {
    let v011 = with_version(&android(), "0.1.1");

    // Unsigned, while unsigned uploads are not allowed.
    let (status, v) = upload(server, &v011, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error_code(&v), "unsigned_plugin");
    assert!(error_message(&v).contains("publisher `drover`"), "{v}");

    // Signed, but no key is registered for its publisher.
    let stranger = publisher(server, "acme").await;
    let (status, v) = upload(server, &v011, Some(stranger.sign(&v011))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&v), "bad_signature");
    assert!(error_message(&v).contains("no key is registered for its publisher `drover`"), "{v}");

    // Signed by the publisher's registered key: serving, the first-party version kept.
    let drover = publisher(server, "drover").await;
    let (status, v) = upload(server, &v011, Some(drover.sign(&v011))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["plugin"]["version"], "0.1.1");
    assert_eq!(v["plugin"]["previous_version"], "0.1.0");
    assert_eq!(v["signed_by"], drover.key_id.as_str());
    assert!(v["upload_to_serving_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        get(server, "/healthz").await["plugins"].as_array().unwrap().iter().filter(|p| *p == "android@0.1.1").count(),
        1
    );

    // The same upload again changes nothing.
    let (status, v) = upload(server, &v011, Some(drover.sign(&v011))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["unchanged"], true);

    // Tampered: changed after signing (here its version; any byte would do).
    let v012 = with_version(&android(), "0.1.2");
    let signature = drover.sign(&v012);
    let tampered = with_version(&v012, "0.1.3");
    let (status, v) = upload(server, &tampered, Some(signature.clone())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&v), "bad_signature");
    assert!(error_message(&v).contains("does not match"), "{v}");
    // A signature that is not one at all.
    let (status, v) = upload(server, &v012, Some(b"not a signature".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&v).contains("64 bytes"), "{v}");
    // Signed by the other publisher's key: not valid for publisher drover.
    let (status, v) = upload(server, &v012, Some(stranger.sign(&v012))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&v), "bad_signature");
    assert_eq!(
        get(server, "/api/v1/plugins/android").await["plugin"]["version"],
        "0.1.1",
        "nothing refused was published"
    );

    // Not a component at all.
    let (status, v) = upload(server, b"\0asm garbage", Some(drover.sign(b"\0asm garbage"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&v), "invalid_plugin");

    // Versions are immutable: 0.1.1 with other content is refused.
    let other = {
        // Same version text, other bytes: the testbed would have another name, so take
        // android 0.1.1 and change a byte of its description instead.
        let mut b = v011.clone();
        let at = b.windows(7).position(|w| w == b"Android").expect("description mentions Android");
        b[at] = b'a';
        b
    };
    let (status, v) = upload(server, &other, Some(drover.sign(&other))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(error_message(&v).contains("immutable"), "{v}");

    // A name keeps its kind: a transport named `android` does not replace the device type.
    let webhook = drover::plugins::first_party::PLUGINS.iter().find(|(n, _)| *n == "webhook").unwrap().1;
    let impostor = drover_tests::with_name(webhook, "android");
    let (status, v) = upload(server, &impostor, Some(drover.sign(&impostor))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(error_message(&v).contains("a name keeps its kind"), "{v}");
    assert_eq!(get(server, "/api/v1/plugins/android").await["plugin"]["kind"], "device-type");

    // An admin allows unsigned uploads: taken, recorded as unsigned.
    let r = server
        .admin(Method::PUT, "/api/v1/settings")
        .json(&json!({"allow_unsigned_plugins": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, v) = upload(server, &v012, None).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["signed_by"], Value::Null);
    // A bad signature is still refused: it is evidence of tampering.
    let v013 = with_version(&android(), "0.1.3");
    let (status, _) = upload(server, &v013, Some(drover.sign(&v012))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Devices are served by what was published.
    let (id, token) = enroll(server).await;
    assert_eq!(poll(server, &id, &token).await.status(), StatusCode::OK);
    let detail = get(server, "/api/v1/plugins/android").await;
    let uploaded: Vec<_> = detail["components"].as_array().unwrap().iter().map(|c| c["version"].clone()).collect();
    assert_eq!(uploaded, [json!("0.1.2"), json!("0.1.1")]);

    // A viewer cannot upload.
    let viewer = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({"name": "v", "role": "viewer"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let form = reqwest::multipart::Form::new().part("component", reqwest::multipart::Part::bytes(v013.clone()));
    let r = server.http.post(server.url("/api/v1/plugins")).bearer_auth(viewer).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
e2e!(signed_unsigned_and_tampered_uploads, super::signatures);

/// A signature made by openssl (a third-party implementation) with a key openssl made.
async fn openssl_signature(server: &TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let file = dir.path().join("p.wasm");
    let sig = dir.path().join("p.sig");
    let v = with_version(&android(), "0.1.4");
    std::fs::write(&file, &v).unwrap();
    let ok = |c: &mut std::process::Command| assert!(c.status().expect("openssl runs").success());
    ok(std::process::Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&key));
    let public = std::process::Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).output().unwrap();
    ok(std::process::Command::new("openssl")
        .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
        .arg(&key)
        .arg("-in")
        .arg(&file)
        .arg("-out")
        .arg(&sig));
    let r = server
        .admin(Method::POST, "/api/v1/publisher-keys")
        .json(&json!({"publisher": "drover", "public_key": String::from_utf8(public.stdout).unwrap()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (status, body) = upload(server, &v, Some(std::fs::read(&sig).unwrap())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
e2e!(openssl_signed_upload, super::openssl_signature);

async fn rollback_and_restart(server: TestServer) {
    let drover = publisher(&server, "drover").await;
    // An admin's grant change comes first: the first-party version must still be recorded
    // when the first upload replaces it, so rollback can return to it.
    let r = put_grants(&server, "android", json!([])).await;
    assert_eq!(r.status(), StatusCode::OK);
    for v in ["0.1.1", "0.1.2"] {
        let c = with_version(&android(), v);
        let (status, body) = upload(&server, &c, Some(drover.sign(&c))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let p = get(&server, "/api/v1/plugins/android").await["plugin"].clone();
    assert_eq!(p["loaded_versions"], json!(["0.1.0", "0.1.1", "0.1.2"]));

    let (status, v) = post(&server, "/api/v1/plugins/android/rollback").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["version"], "0.1.1");
    assert_eq!(v["previous_version"], "0.1.0");
    let (id, token) = enroll(&server).await;
    assert_eq!(poll(&server, &id, &token).await.status(), StatusCode::OK);

    // What an admin did survives a restart: 0.1.1 serves, 0.1.0 behind it.
    let server = server.restart().await;
    let p = get(&server, "/api/v1/plugins/android").await;
    assert_eq!(p["plugin"]["version"], "0.1.1");
    assert_eq!(p["plugin"]["loaded_versions"], json!(["0.1.0", "0.1.1"]));
    let kinds: Vec<_> =
        p["history"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["rollback", "install", "install", "install", "regrant"]);
    assert_eq!(p["history"][3]["actor"], "first-party");
    assert_eq!(poll(&server, &id, &token).await.status(), StatusCode::OK);

    let (status, v) = post(&server, "/api/v1/plugins/android/rollback").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["version"], "0.1.0");
    let (status, v) = post(&server, "/api/v1/plugins/android/rollback").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_message(&v).contains("no earlier version"), "{v}");
    let (status, _) = post(&server, "/api/v1/plugins/nosuch/rollback").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

mod rollback_survives_restart {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let server = drover_tests::TestServer::start(drover_tests::Backend::Sqlite).await;
        super::rollback_and_restart(server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(backend) = drover_tests::Backend::postgres() else { return };
        let server = drover_tests::TestServer::start(backend).await;
        super::rollback_and_restart(server).await;
    }
}

async fn grants(server: &TestServer) {
    let testbed = component(components::TESTBED);
    let tests = publisher(server, "drover-tests").await;
    // Nothing granted yet: refused, naming the import and the capability.
    let (status, v) = upload(server, &testbed, Some(tests.sign(&testbed))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(error_code(&v), "plugin_refused");
    assert!(error_message(&v).contains("capability `"), "{v}");
    assert!(server.state.registry.get("testbed").is_none());

    // Grants may be given before the plugin exists.
    let r = put_grants(server, "testbed", json!(["log", "kv"])).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (status, v) = upload(server, &testbed, Some(tests.sign(&testbed))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "config is still not granted: {v}");
    assert!(error_message(&v).contains("`config`"), "{v}");

    let r = put_grants(server, "testbed", json!(["log", "kv", "config"])).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (status, v) = upload(server, &testbed, Some(tests.sign(&testbed))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["plugin"]["capabilities_granted"], json!(["log", "config", "kv"]));

    // Taking back what it imports is refused, and changes nothing.
    let r = put_grants(server, "testbed", json!(["log"])).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let g = get(server, "/api/v1/plugins/testbed/grants").await;
    assert_eq!(g["capabilities"], json!(["log", "config", "kv"]));
    // Granting more (clock) reloads it with the new set.
    let r = put_grants(server, "testbed", json!(["log", "kv", "config", "clock"])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        get(server, "/api/v1/plugins/testbed").await["plugin"]["capabilities_granted"],
        json!(["log", "config", "kv", "clock"])
    );
    let r = put_grants(server, "testbed", json!(["sockets"])).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("unknown capability `sockets`"));
}
e2e!(grants_decide_what_links, super::grants);

/// Ten versions published while devices poll as fast as they can: not one request fails.
async fn hot_swap(server: &TestServer) {
    let drover = publisher(server, "drover").await;
    let mut devices = Vec::new();
    for _ in 0..8 {
        devices.push(enroll(server).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut pollers = Vec::new();
    for (id, token) in devices {
        let (http, url) =
            (server.http.clone(), server.url(&format!("/agent/v1/android/devices/{id}/pending-operations")));
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        pollers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = http.put(&url).bearer_auth(&token).body("[]").send().await;
                match r {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("failed poll: {} {}", r.status(), r.text().await.unwrap_or_default());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("failed poll: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let versions = ["0.1.1", "0.1.2", "0.1.3", "0.1.4", "0.1.5", "0.1.6", "0.1.7", "0.1.8", "0.1.9", "0.2.0"];
    for v in versions {
        let before = ok.load(Ordering::Relaxed);
        let c = with_version(&android(), v);
        let (status, body) = upload(server, &c, Some(drover.sign(&c))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        // Let some polls land on each version.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ok.load(Ordering::Relaxed) < before + 20 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (status, _) = post(server, "/api/v1/plugins/android/rollback").await;
    assert_eq!(status, StatusCode::OK);
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        p.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during swaps");
    assert!(ok.load(Ordering::Relaxed) >= 200, "polls ran during the swaps: {}", ok.load(Ordering::Relaxed));
    let p = get(server, "/api/v1/plugins/android").await["plugin"].clone();
    assert_eq!(p["version"], "0.1.9");
    // Five versions stay loaded side by side: 0.1.5 … 0.1.9 after the rollback.
    assert_eq!(p["loaded_versions"], json!(["0.1.5", "0.1.6", "0.1.7", "0.1.8", "0.1.9"]), "{p}");
}
e2e!(hot_swap_under_load_fails_nothing, super::hot_swap);

fn quick_breaker(c: &mut drover::config::Config) {
    c.fault_policy = FaultPolicy {
        window: Duration::from_secs(30),
        rate: 0.3,
        min_faults: 3,
        min_sources: 3,
        probation: Duration::from_secs(600),
    };
}

async fn testbed_device(server: &TestServer) -> (String, String) {
    let id = unique("tb");
    let r = server.http.post(server.url("/agent/v1/testbed/enroll")).body(id.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    (id.clone(), r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string())
}

async fn testbed_call(server: &TestServer, id: &str, token: &str, body: &str) -> StatusCode {
    server
        .http
        .put(server.url(&format!("/agent/v1/testbed/devices/{id}/pending-operations")))
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

/// Wait (bounded) until plugin `name` reports `field == want`.
async fn wait_plugin(server: &TestServer, name: &str, field: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = get(server, &format!("/api/v1/plugins/{name}")).await;
        if p["plugin"][field] == want {
            return p;
        }
        assert!(Instant::now() < deadline, "{name}.{field} never became {want}: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn breaker(server: &TestServer) {
    let tests = publisher(server, "drover-tests").await;
    let r = put_grants(server, "testbed", json!(["log", "kv", "config"])).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v1 = component(components::TESTBED);
    let v2 = with_version(&v1, "0.2.0");
    for c in [&v1, &v2] {
        let (status, body) = upload(server, c, Some(tests.sign(c))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // Faults count against a version only when several devices' input causes them.
    let mut devices = Vec::new();
    for _ in 0..4 {
        devices.push(testbed_device(server).await);
    }
    let (id, token) = devices[0].clone();
    // An operation queued for the device: it must survive everything below.
    let r = server
        .admin(Method::POST, "/api/v1/operations")
        .json(&json!({"code": "ECHO", "targets": {"devices": [{"type": "testbed", "id": id}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let activity = r.json::<Value>().await.unwrap()["activity"]["id"].as_i64().unwrap();

    // The new version faults (the devices' messages make it trap): rolled back to 0.1.0.
    // Each device's faulting request is refused with a 422 naming the fault.
    for (id, token) in &devices {
        assert_eq!(testbed_call(server, id, token, "trap").await, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let p = wait_plugin(server, "testbed", "version", "0.1.0").await;
    assert_eq!(p["history"][0]["kind"], "auto-rollback", "{p}");
    assert_eq!(p["history"][0]["actor"], "breaker");
    assert!(p["history"][0]["reason"].as_str().unwrap().contains("faults from 4 devices"), "{p}");

    // 0.1.0 faults too, with nothing before it: suspended.
    for (id, token) in &devices {
        testbed_call(server, id, token, "trap").await;
    }
    let p = wait_plugin(server, "testbed", "state", "suspended").await;
    assert!(p["plugin"]["suspended_reason"].as_str().unwrap().contains("faults from"), "{p}");
    assert_eq!(testbed_call(server, &id, &token, "hello").await, StatusCode::SERVICE_UNAVAILABLE);

    // Nothing was lost: the operation is still queued.
    let ops = get(server, &format!("/api/v1/operations?activity={activity}")).await;
    assert_eq!(ops["items"][0]["state"], "PENDING", "{ops}");

    // An admin re-enables it: served again.
    let (status, v) = post(server, "/api/v1/plugins/testbed/enable").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "active");
    assert_eq!(testbed_call(server, &id, &token, "hello").await, StatusCode::OK);
    // Its faults from before are forgiven: the breaker's next looks do not suspend it again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(server, "/api/v1/plugins/testbed").await["plugin"]["state"], "active");

    // Suspended by an admin by hand, and enabled again.
    let (status, v) = post(server, "/api/v1/plugins/testbed/suspend").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["state"], "suspended");
    assert_eq!(testbed_call(server, &id, &token, "hello").await, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = post(server, "/api/v1/plugins/testbed/enable").await;
    assert_eq!(status, StatusCode::OK);
}
e2e_with!(breaker_rolls_back_then_suspends, super::quick_breaker, super::breaker);

/// One source cannot suspend a device type for everyone (issue 21, item 3). A device whose
/// messages make the plugin fault, and unauthenticated enrollments that do, are refused
/// (422, then 429 with Retry-After once the sender is held) without counting against the
/// version: it stays active and keeps serving other devices and other senders.
async fn one_source_cannot_suspend_a_plugin(server: &TestServer) {
    let tests = publisher(server, "drover-tests").await;
    let r = put_grants(server, "testbed", json!(["log", "kv", "config"])).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v1 = component(components::TESTBED);
    let (status, body) = upload(server, &v1, Some(tests.sign(&v1))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (bad, bad_token) = testbed_device(server).await;
    let (good, good_token) = testbed_device(server).await;

    // One device, many faults: held after three, and the version is not judged by it.
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(testbed_call(server, &bad, &bad_token, "trap").await);
    }
    assert_eq!(&seen[..3], [StatusCode::UNPROCESSABLE_ENTITY; 3]);
    assert!(seen[3..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{seen:?}");
    let r = server
        .http
        .put(server.url(&format!("/agent/v1/testbed/devices/{bad}/pending-operations")))
        .bearer_auth(&bad_token)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // Unauthenticated enrollments that make the plugin trap, from another address (a
    // client bound to 127.0.0.2): refused and held, never counted against the version.
    let stranger = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let url = server.url("/agent/v1/testbed/enroll");
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(stranger.post(&url).body("trap").send().await.unwrap().status());
    }
    assert_eq!(&seen[..3], [StatusCode::UNPROCESSABLE_ENTITY; 3]);
    assert!(seen[3..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{seen:?}");

    // The breaker looks several times: the plugin stays active and serves everyone else.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let p = get(server, "/api/v1/plugins/testbed").await;
    assert_eq!(p["plugin"]["state"], "active", "{p}");
    assert_eq!(testbed_call(server, &good, &good_token, "hello").await, StatusCode::OK);
    let (id, _) = testbed_device(server).await;
    assert!(!id.is_empty());
    let stats = &p["plugin"]["stats"];
    assert_eq!((stats["faults"].as_u64(), stats["charged_faults"].as_u64()), (Some(6), Some(3)), "{p}");
    assert_eq!(stats["held"].as_u64(), Some(35), "{p}");
}
e2e_with!(one_source_cannot_suspend_a_plugin, super::quick_breaker, super::one_source_cannot_suspend_a_plugin);

async fn keys_api(server: &TestServer) {
    let p = publisher(server, "acme").await;
    let keys = get(server, "/api/v1/publisher-keys").await;
    assert_eq!(keys["items"][0]["key_id"], p.key_id.as_str());
    let r = server
        .admin(Method::POST, "/api/v1/publisher-keys")
        .json(&json!({"publisher": "acme", "public_key": "not a key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("public_key"));
    let r = server.admin(Method::DELETE, &format!("/api/v1/publisher-keys/{}", p.key_id)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = server.admin(Method::DELETE, &format!("/api/v1/publisher-keys/{}", p.key_id)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
e2e!(publisher_keys, super::keys_api);

/// `/metrics`: per plugin version calls, faults, a call-duration histogram, serving and
/// suspended; delivery counts by channel; in OpenMetrics text; a viewer token is needed.
async fn metrics(server: &TestServer) {
    let (id, token) = enroll(server).await;
    for _ in 0..3 {
        assert_eq!(poll(server, &id, &token).await.status(), StatusCode::OK);
    }
    server.add_operation("android", &id, "DEVICE_RING", None).await;
    assert_eq!(poll(server, &id, &token).await.status(), StatusCode::OK);
    let malformed = server.poll_android(&id, &token, "{not json").await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let r = server.http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = server.admin(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or_else(|| panic!("no `{prefix}` in:\n{text}"))
    };
    let labels = r#"{plugin="android",version="0.1.0"}"#;
    // Enroll (1) + 3 polls × decode and encode (6) + the load-time describe (1), at least.
    assert!(value(&format!("drover_plugin_calls_total{labels}")) >= 8.0, "{text}");
    assert_eq!(value(&format!("drover_plugin_faults_total{labels}")), 0.0);
    let count = value(&format!("drover_plugin_call_duration_seconds_count{labels}"));
    assert_eq!(count, value(&format!("drover_plugin_calls_total{labels}")));
    assert!(
        text.contains(r#"drover_plugin_call_duration_seconds_bucket{le="+Inf",plugin="android",version="0.1.0"}"#)
            || text
                .contains(r#"drover_plugin_call_duration_seconds_bucket{plugin="android",version="0.1.0",le="+Inf"}"#),
        "{text}"
    );
    assert_eq!(value(&format!("drover_plugin_serving{labels}")), 1.0);
    assert_eq!(value(&format!("drover_plugin_suspended{labels}")), 0.0);
    assert!(text.contains(r#"drover_plugin_calls_total{plugin="fcm",version="0.1.0"}"#), "{text}");
    // Delivery: five polls, one of them malformed; one operation sent.
    assert_eq!(value(r#"drover_device_messages_total{channel="http"}"#), 5.0);
    assert_eq!(value(r#"drover_device_messages_refused_total{channel="http"}"#), 1.0);
    assert_eq!(value(r#"drover_operations_sent_total{channel="http"}"#), 1.0);
    assert_eq!(value(r#"drover_operations_sent_total{channel="mqtt"}"#), 0.0);
    assert_eq!(value("drover_push_online_devices"), 0.0);
    assert!(text.contains("# TYPE drover_wakeup_attempts counter"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");
}
e2e!(prometheus_metrics, super::metrics);

/// Two replicas on one database: what an admin does on one, the other serves within its
/// next sync (every second), with no restart.
async fn replicas(a: &TestServer) {
    let b = a.replica().await;
    catalog_follows(a, &b).await;
    b.stop().await;
}
e2e!(another_replica_follows_the_catalog, super::replicas);

/// An upload on replica `a` is served by `b`, and a rollback on `b` by `a` (bounded waits).
async fn catalog_follows(a: &TestServer, b: &TestServer) {
    let drover = publisher(a, "drover").await;
    let v = with_version(&android(), "0.1.1");
    let (status, body) = upload(a, &v, Some(drover.sign(&v))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.state.registry.get("android").map(|p| p.manifest.version.clone()).as_deref() != Some("0.1.1") {
        assert!(Instant::now() < deadline, "replica b never served android 0.1.1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And back: a rollback on b reaches a.
    let (status, _) = post(b, "/api/v1/plugins/android/rollback").await;
    assert_eq!(status, StatusCode::OK);
    while a.state.registry.get("android").map(|p| p.manifest.version.clone()).as_deref() != Some("0.1.0") {
        assert!(Instant::now() < deadline, "replica a never followed the rollback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send `body` to the testbed plugin as device `id` on `server`; what it reported back.
async fn testbed_says(server: &TestServer, id: &str, token: &str, body: &str, key: &str) -> Value {
    let r = server
        .http
        .put(server.url(&format!("/agent/v1/testbed/devices/{id}/x")))
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    server.device("testbed", id).await["metadata"][key].clone()
}

/// A plugin's key-value store is in the database: a value one replica's plugin stored is
/// read by the other replica's, and by a server started afresh on the same database (in
/// memory, each process had its own, and a restart lost it). The quota holds there too.
async fn kv_store_in_the_database(a: &TestServer) {
    a.install_signed("testbed", "drover-tests", &["log", "kv", "config"], &component(components::TESTBED)).await;
    let id = unique("kv");
    let r = a.http.post(a.url("/agent/v1/testbed/enroll")).body(id.clone()).send().await.unwrap();
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    assert_eq!(testbed_says(a, &id, &token, "kvget:colour", "colour").await, "<unset>");
    assert_eq!(testbed_says(a, &id, &token, "kv:colour=teal", "colour").await, "teal");
    let b = a.replica().await;
    assert_eq!(testbed_says(&b, &id, &token, "kvget:colour", "colour").await, "teal", "the other replica reads it");
    assert_eq!(testbed_says(&b, &id, &token, "kv:colour=ochre", "colour").await, "ochre");
    b.stop().await;
    let c = a.replica().await;
    assert_eq!(testbed_says(&c, &id, &token, "kvget:colour", "colour").await, "ochre", "a new process reads it");
    c.stop().await;
    assert_eq!(testbed_says(a, &id, &token, "kvget:colour", "colour").await, "ochre");

    // The quota counts keys and values already stored; overwriting counts the difference.
    let store = &a.state.store;
    assert!(store.kv_set("quota-test", "a", &[0; 100], 150).await.unwrap());
    assert!(!store.kv_set("quota-test", "b", &[0; 100], 150).await.unwrap(), "over the quota");
    assert_eq!(store.kv_get("quota-test", "b").await.unwrap(), None);
    assert!(store.kv_set("quota-test", "a", &[1; 140], 150).await.unwrap());
    assert_eq!(store.kv_get("quota-test", "a").await.unwrap(), Some(vec![1; 140]));
    store.kv_delete("quota-test", "a").await.unwrap();
    assert!(store.kv_set("quota-test", "b", &[0; 100], 150).await.unwrap());
}
e2e!(kv_store_in_the_database, super::kv_store_in_the_database);

/// What the `reach` plugin reports for `body`, sent as device `id`.
async fn reach_says(server: &TestServer, id: &str, token: &str, body: &str) -> String {
    let r = server
        .http
        .put(server.url(&format!("/agent/v1/reach/devices/{id}/x")))
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{body}: {}", r.text().await.unwrap());
    server.device("reach", id).await["metadata"]["result"].as_str().unwrap_or_default().to_string()
}

async fn put_hosts(server: &TestServer, hosts: Value) {
    let r = server
        .admin(Method::PUT, "/api/v1/plugins/reach/settings")
        .json(&json!({ "granted_hosts": hosts }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

/// The `filesystem` and `network` grants, by what a plugin granted them can really do
/// (sandbox.rs): read the files an admin put in its directory, seen as `/files`, and
/// nothing else, and write nowhere; connect to the hosts its settings grant, only while
/// granted, and never listen. Before, both grants linked the imports and gave nothing:
/// the reads and the granted connection below failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_and_network_grants() {
    let server = TestServer::start(drover_tests::Backend::Sqlite).await;
    server
        .install_signed("reach", "drover-tests", &["filesystem", "network", "clock"], &component(components::REACH))
        .await;
    let files = server.data.path().join("plugin-files").join("reach");
    assert!(files.is_dir(), "the grant made the plugin's directory");
    std::fs::write(files.join("models.csv"), "model,name\nSM-G991B,Galaxy S21\n").unwrap();
    let id = unique("reach");
    let r = server.http.post(server.url("/agent/v1/reach/enroll")).body(id.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    macro_rules! says {
        ($body:expr) => {
            reach_says(&server, &id, &token, $body)
        };
    }

    // Files: the admin's, read-only; nothing above or beside the directory.
    assert_eq!(says!("read:/files/models.csv").await, "model,name\nSM-G991B,Galaxy S21\n");
    assert_eq!(says!("list:/files").await, "models.csv");
    for escape in ["read:/files/../../admin-token", "read:/admin-token", "read:/etc/passwd", "list:/"] {
        let got = says!(escape).await;
        assert!(got.starts_with("error:"), "{escape}: {got}");
        assert!(!got.contains("root:"), "{escape}: {got}");
    }
    let got = says!("write:/files/models.csv").await;
    assert!(got.starts_with("error: write"), "{got}");
    let got = says!("write:/files/new.txt").await;
    assert!(got.starts_with("error: write"), "{got}");
    assert!(!files.join("new.txt").exists());
    assert_eq!(std::fs::read_to_string(files.join("models.csv")).unwrap(), "model,name\nSM-G991B,Galaxy S21\n");

    // Network: a peer on loopback that answers `pong` and counts who reached it.
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = peer.local_addr().unwrap().port();
    let reached = Arc::new(AtomicU64::new(0));
    let counter = reached.clone();
    let serving = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..20 {
            let Ok((mut s, _)) = peer.accept().await else { return };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"pong\n").await;
        }
    });
    let dial = format!("dial:127.0.0.1:{port}");
    let got = says!(&dial).await;
    assert!(got.contains("access-denied"), "no host granted yet: {got}");
    put_hosts(&server, json!(["127.0.0.1"])).await;
    assert_eq!(says!(&dial).await, "pong");
    assert_eq!(reached.load(Ordering::Relaxed), 1);
    for serve in ["listen", "bind:18999"] {
        let got = says!(serve).await;
        assert!(got.starts_with("error:") && got.contains("access-denied"), "{serve}: {got}");
    }
    put_hosts(&server, json!([])).await;
    let got = says!(&dial).await;
    assert!(got.contains("access-denied"), "the grant was taken back: {got}");
    assert_eq!(reached.load(Ordering::Relaxed), 1, "refused connections never reached the peer");
    serving.abort();
    server.stop().await;
}

/// Replicas on PostgreSQL are told of each other's changes at once (LISTEN/NOTIFY,
/// `store/changes.rs`), not at their next read: here both read only every hour, so
/// without being told replica b would never serve the upload made on a, a would never
/// follow b's rollback, and b would not apply settings put on a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_told_of_changes_at_once() {
    let Some(backend) = drover_tests::Backend::postgres() else { return };
    let hourly = |c: &mut drover::config::Config| c.follow_interval = Duration::from_secs(3600);
    let a = TestServer::start_with(backend, hourly).await;
    let b = a.replica_with(hourly).await;
    catalog_follows(&a, &b).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = a
        .admin(Method::PUT, "/api/v1/plugins/android/settings")
        .json(&json!({ "config": { "fleet_name": "north" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    while b.state.settings.get("android").config.get("fleet_name").map(String::as_str) != Some("north") {
        assert!(Instant::now() < deadline, "replica b was not told of the settings");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.stop().await;
    a.stop().await;
}

/// The poison path (issue 30): an operation the plugin cannot encode ends in ERROR at
/// once (retrying would fail the same way), with the plugin's message as its response,
/// and the queue moves on: the operation behind it goes out in the same poll.
async fn unencodable_operation(server: &TestServer) {
    server.install_signed("testbed", "drover-tests", &["log", "kv", "config"], &component(components::TESTBED)).await;
    let (id, token) = testbed_device(server).await;
    let poison = server.add_operation("testbed", &id, "ECHO", Some(json!("unencodable"))).await;
    let fine = server.add_operation("testbed", &id, "CAMERA", Some(json!("hello"))).await;
    let r = server
        .http
        .put(server.url(&format!("/agent/v1/testbed/devices/{id}/pending-operations")))
        .bearer_auth(&token)
        .body("poll")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "CAMERA", "the next operation went out");
    let op = server.operation(poison).await;
    assert_eq!(op["state"], "ERROR", "{op}");
    assert!(op.to_string().contains("testbed cannot encode"), "the plugin's message is the response: {op}");
    let last = op["transitions"].as_array().unwrap().last().unwrap().clone();
    let moved = (last["from_state"].as_str(), last["to_state"].as_str(), last["actor"].as_str());
    assert_eq!(moved, (Some("PENDING"), Some("ERROR"), Some("delivery:poll")), "{op}");
    assert_eq!(server.operation(fine).await["state"], "IN_PROGRESS");
    // Nothing more to send: the poison is not offered again.
    let r = server
        .http
        .put(server.url(&format!("/agent/v1/testbed/devices/{id}/pending-operations")))
        .bearer_auth(&token)
        .body("poll")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "");
}
e2e!(an_unencodable_operation_ends_at_once, super::unencodable_operation);
