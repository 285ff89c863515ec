//! Rollouts end to end (docs/rollouts.md): artifacts uploaded over multipart, checked
//! (digest, signature) and served with range requests to a device's own grant; ESP8266
//! fleets (rumqttc clients as boards that really download, verify and report) through
//! staged rollouts that advance, pause, abort on failures and roll back, and a restart in
//! the middle of a phase that loses nothing and sends nothing twice.

use drover_tests::{Backend, TestServer, e2e};
use reqwest::{Method, StatusCode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A firmware image: 96 KiB that differ per version.
fn image(version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 << 10);
    let mut x: u32 = version.bytes().fold(2166136261, |h, b| (h ^ u32::from(b)).wrapping_mul(16777619));
    while out.len() < 96 << 10 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

async fn upload(server: &TestServer, version: &str, extra: &[(&str, String)], bytes: Vec<u8>) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new()
        .text("name", "esp-fw")
        .text("version", version.to_string())
        .text("device_types", "esp8266");
    for (k, v) in extra {
        form = form.text(k.to_string(), v.clone());
    }
    let form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name("fw.bin"));
    server.admin(Method::POST, "/api/v1/artifacts").multipart(form).send().await.unwrap()
}

async fn uploaded(server: &TestServer, version: &str) -> Value {
    let r = upload(server, version, &[], image(version)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

/// How a simulated board behaves.
#[derive(Clone)]
struct Behaviour {
    /// Report every update as failed (after downloading it).
    fail: bool,
    /// Stop reporting once flashing (at 50%): a board that hangs.
    stall: bool,
    /// Connected to the broker; an offline board's operations stay queued.
    online: Arc<AtomicBool>,
}

/// An ESP8266 board: enrolls over HTTP, holds an MQTT session (reconnecting after a
/// server restart), and carries out `ota` commands as the firmware does: downloads the
/// image in two ranged requests (a resumed download), checks its SHA-256, reports
/// progress, then `done` with the new version, or `failed`.
struct Board {
    id: String,
    online: Arc<AtomicBool>,
    /// `ota` commands received.
    updates: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Board {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Board {
    async fn start(server: &TestServer, firmware: &str, fail: bool, online: bool) -> Board {
        Board::start_with(server, firmware, fail, online, false).await
    }

    async fn start_with(server: &TestServer, firmware: &str, fail: bool, online: bool, stall: bool) -> Board {
        static N: AtomicU32 = AtomicU32::new(0);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let chip = format!("{:08x}", t.wrapping_add(N.fetch_add(1, Ordering::Relaxed) << 20));
        let body = json!({"chip_id": chip, "model": "ESP-12F", "firmware": firmware});
        let r = server.http.post(server.url("/agent/v1/esp8266/enroll")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        let id = v["device_id"].as_str().unwrap().to_string();
        let token = v["access_token"].as_str().unwrap().to_string();
        let behaviour = Behaviour { fail, stall, online: Arc::new(AtomicBool::new(online)) };
        let updates = Arc::new(AtomicU32::new(0));
        let port = server.mqtt.expect("embedded broker").port();
        let task = tokio::spawn(run(id.clone(), token, port, behaviour.clone(), updates.clone()));
        Board { id, online: behaviour.online, updates, task }
    }
}

async fn run(id: String, token: String, port: u16, b: Behaviour, updates: Arc<AtomicU32>) {
    while !b.online.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut options = MqttOptions::new(id.clone(), "127.0.0.1", port);
    options.set_credentials(format!("esp8266/{id}"), token);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let http = reqwest::Client::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // A clean session: subscribe again after every (re)connection.
                let _ = client.try_subscribe(format!("drover/esp8266/{id}/cmd"), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let frame: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                for op in frame["ops"].as_array().cloned().unwrap_or_default() {
                    if op["op"] == "ota" {
                        updates.fetch_add(1, Ordering::Relaxed);
                        let (client, http, id, b) = (client.clone(), http.clone(), id.clone(), b.clone());
                        tokio::spawn(async move { ota(&client, &http, &id, &op, &b).await });
                    }
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn ota(client: &AsyncClient, http: &reqwest::Client, id: &str, op: &Value, b: &Behaviour) {
    let topic = format!("drover/esp8266/{id}/ota");
    let report = |v: Value| {
        let (client, topic) = (client.clone(), topic.clone());
        async move { client.publish(topic, QoS::AtLeastOnce, false, v.to_string()).await.unwrap() }
    };
    let (op_id, url, size) = (op["id"].clone(), op["url"].as_str().unwrap(), op["size"].as_u64().unwrap());
    // Two ranged requests, as a board resuming a broken download makes.
    let half = size / 2;
    let mut bytes = Vec::new();
    for range in [format!("bytes=0-{}", half - 1), format!("bytes={half}-")] {
        let r = http.get(url).header("Range", range).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{url}");
        bytes.extend_from_slice(&r.bytes().await.unwrap());
    }
    report(json!({"id": op_id, "state": "downloading", "progress": 100})).await;
    if sha(&bytes) != op["sha256"].as_str().unwrap() {
        report(json!({"id": op_id, "state": "failed", "error": "sha256 mismatch"})).await;
        return;
    }
    report(json!({"id": op_id, "state": "flashing", "progress": 50})).await;
    if b.stall {
        return;
    }
    if b.fail {
        report(json!({"id": op_id, "state": "failed", "error": "flash verify failed at 0x3000"})).await;
        return;
    }
    let version = op["version"].as_str().unwrap();
    report(json!({"id": op_id, "state": "done", "progress": 100, "version": version})).await;
}

async fn create(server: &TestServer, spec: Value) -> Value {
    let r = server.admin(Method::POST, "/api/v1/rollouts").json(&spec).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

/// An admin GET, as JSON.
async fn get(server: &TestServer, path: &str) -> Value {
    server.admin(Method::GET, path).send().await.unwrap().json().await.unwrap()
}

async fn rollout(server: &TestServer, name: &str) -> Value {
    get(server, &format!("/api/v1/rollouts/{name}")).await
}

async fn act(server: &TestServer, name: &str, action: &str) -> (StatusCode, Value) {
    let r = server.admin(Method::POST, &format!("/api/v1/rollouts/{name}/{action}")).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

/// Wait until the rollout satisfies `done`, and return it.
async fn until(server: &TestServer, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = rollout(server, name).await;
        if done(&r) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "rollout `{name}` never {what}: {r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(r: &Value, state: &str) -> i64 {
    r["counts"][state].as_i64().unwrap_or(0)
}

async fn firmware(server: &TestServer, id: &str) -> String {
    server.device("esp8266", id).await["metadata"]["firmware"].as_str().unwrap_or_default().to_string()
}

/// A board's FIRMWARE_UPDATE operations.
async fn updates_of(server: &TestServer, id: &str) -> Vec<Value> {
    let ops: Value = get(server, &format!("/api/v1/operations?device_type=esp8266&device_id={id}&limit=1000")).await;
    ops["items"].as_array().unwrap().iter().filter(|o| o["code"] == "FIRMWARE_UPDATE").cloned().collect()
}

async fn events(server: &TestServer, prefix: &str) -> Vec<Value> {
    let v: Value = get(server, &format!("/api/v1/events?type={prefix}&limit=1000")).await;
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Upload checks and the download endpoint: digest and signature refused when wrong,
/// a grant opens its artifact with Range requests and nothing else.
async fn artifacts(server: &TestServer) {
    let bytes = image("3.0.0");
    // A digest that is not the file's: refused, nothing kept.
    let r = upload(server, "3.0.0", &[("sha256", sha(b"something else"))], bytes.clone()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "sha256_mismatch");
    // A signature by a key nobody registered, then a tampered image under a good key.
    let (private, public) = drover::plugins::signing::generate().unwrap();
    let sig = drover::plugins::signing::encode_signature(&drover::plugins::signing::sign(&private, &bytes).unwrap());
    let r = upload(server, "3.0.0", &[("signature", sig.clone())], bytes.clone()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = server
        .admin(Method::POST, "/api/v1/publisher-keys")
        .json(&json!({"publisher": "acme", "public_key": public}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let mut tampered = bytes.clone();
    tampered[1000] ^= 1;
    let r = upload(server, "3.0.0", &[("signature", sig.clone())], tampered).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "bad_signature", "{e}");
    // The real thing: signed, digest given and right.
    let r = upload(server, "3.0.0", &[("signature", sig), ("sha256", sha(&bytes))], bytes.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["sha256"], sha(&bytes));
    assert_eq!(a["size"], bytes.len());
    assert!(a["signed_by"].is_string(), "{a}");
    assert_eq!(a["device_types"], json!(["esp8266"]));
    // The fields beside the file are small: a 9 KiB `name` is refused before anything else.
    let form = reqwest::multipart::Form::new()
        .text("name", "n".repeat(9 << 10))
        .part("file", reqwest::multipart::Part::bytes(vec![1, 2, 3]));
    let r = server.admin(Method::POST, "/api/v1/artifacts").multipart(form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("over 8 KiB"));
    // A second upload of the same name and version is a conflict; a type that cannot
    // take updates is refused.
    let r = upload(server, "3.0.0", &[], bytes.clone()).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let form = reqwest::multipart::Form::new()
        .text("name", "apk")
        .text("version", "1")
        .text("device_types", "android")
        .part("file", reqwest::multipart::Part::bytes(vec![1, 2, 3]));
    let r = server.admin(Method::POST, "/api/v1/artifacts").multipart(form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("FIRMWARE_UPDATE"));

    // A rollout to one board hands it a URL; the URL serves the image in ranges.
    let board = Board::start(server, "2.0.0", false, false).await;
    create(
        server,
        json!({"name": "dl", "artifact": {"name": "esp-fw", "version": "3.0.0"},
               "targets": {"devices": [{"type": "esp8266", "id": board.id}]}, "phases": [{"percent": 100}]}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let url = loop {
        if let Some(op) = updates_of(server, &board.id).await.first() {
            let id = op["id"].as_i64().unwrap();
            break server.state.store.operation_payload(id).await.unwrap().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no update operation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let payload: Value = serde_json::from_str(&url).unwrap();
    let url = payload["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}/download/", server.base)), "{url}");
    assert_eq!(payload["sha256"], sha(&bytes));
    let r = server.http.get(&url).header("Range", "bytes=1000-1999").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], format!("bytes 1000-1999/{}", bytes.len()));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[1000..2000]);
    let r = server.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[..]);
    let r = server.http.get(&url).header("Range", format!("bytes={}-", bytes.len() + 10)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Another token, a truncated one, or the admin path: nothing.
    let forged = format!("{}/download/{}", server.base, "A".repeat(43));
    assert_eq!(server.http.get(&forged).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(server.http.get(&url[..url.len() - 1]).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    // The artifact a live rollout uses cannot be deleted; the grant dies with expiry.
    let r = server.admin(Method::DELETE, "/api/v1/artifacts/esp-fw/3.0.0").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("rollout `dl`"));
    server.sql("UPDATE artifact_grants SET expires_at = 1").await;
    assert_eq!(server.http.get(&url).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    // A rollout that is not over cannot be deleted; once it is, it goes, and then the
    // artifact and its bytes.
    let r = server.admin(Method::DELETE, "/api/v1/rollouts/dl").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let (status, _) = act(server, "dl", "cancel").await;
    assert_eq!(status, StatusCode::OK);
    until(server, "dl", "over", |r| r["done_at"].is_i64()).await;
    let r = server.admin(Method::DELETE, "/api/v1/artifacts/esp-fw/3.0.0").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT, "its finished rollout still names it");
    let r = server.admin(Method::DELETE, "/api/v1/rollouts/dl").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = server.admin(Method::DELETE, "/api/v1/artifacts/esp-fw/3.0.0").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(!server.data.path().join("artifacts").join(sha(&bytes)).exists(), "its bytes are gone");
    let r = server.admin(Method::GET, "/api/v1/artifacts/esp-fw/3.0.0").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

e2e!(artifact_checks_and_downloads, super::artifacts);

/// Ten boards, one already at the target: three phases that advance on their own; every
/// updated board downloads, verifies and runs the new version; the one at it is skipped.
async fn three_phases(server: &TestServer) {
    uploaded(server, "2.0.0").await;
    let mut boards = Vec::new();
    for i in 0..10 {
        boards.push(Board::start(server, if i == 0 { "2.0.0" } else { "1.0.0" }, false, true).await);
    }
    let tag = drover_tests::unique("fleet");
    for b in &boards {
        let r = server
            .admin(Method::PUT, &format!("/api/v1/devices/esp8266/{}/tags", b.id))
            .json(&json!({"tags": [tag]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // Numbers the driver computes with are bounded when the rollout is created.
    let huge = json!({"name": "fw-x", "artifact": {"name": "esp-fw", "version": "2.0.0"}, "targets": {"tags": [tag]},
                      "phases": [{"percent": 100, "soak_secs": u64::MAX}]});
    let r = server.admin(Method::POST, "/api/v1/rollouts").json(&huge).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("soak_secs"));
    let created = create(
        server,
        json!({"name": "fw-2", "artifact": {"name": "esp-fw", "version": "2.0.0"}, "targets": {"tags": [tag]},
               "phases": [{"count": 1}, {"percent": 50}, {"percent": 100}]}),
    )
    .await;
    assert_eq!(created["phase_counts"][0]["waiting"], 1, "{created}");
    assert_eq!(created["left_out"], 0);
    let done = until(server, "fw-2", "finished", |r| r["state"] == "finished" && r["done_at"].is_i64()).await;
    assert_eq!(count(&done, "succeeded"), 9, "{done:#}");
    assert_eq!(count(&done, "skipped"), 1, "{done:#}");
    assert_eq!(done["phase"], 3);
    for b in &boards {
        assert_eq!(firmware(server, &b.id).await, "2.0.0");
        // One update each, none for the board that had it.
        let expected = u32::from(b.id != boards[0].id);
        assert_eq!(b.updates.load(Ordering::Relaxed), expected, "{}", b.id);
    }
    let skipped: Value = get(server, "/api/v1/rollouts/fw-2/devices?state=skipped").await;
    let lowest = get(server, &format!("/api/v1/rollouts/fw-2/devices?phase={}", i64::MIN)).await;
    assert_eq!(lowest["items"], json!([]));
    assert_eq!(skipped["items"][0]["id"], boards[0].id);
    let kinds: Vec<String> =
        events(server, "rollout.").await.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["rollout.created", "rollout.phase_started", "rollout.phase_started", "rollout.finished"]);
}

e2e!(three_phase_rollout, super::three_phases);

/// A manual first phase holds until advanced; a paused rollout starts nobody, and
/// resumes where it was.
async fn pause_and_resume(server: &TestServer) {
    uploaded(server, "2.0.0").await;
    let mut boards = Vec::new();
    let mut devices = Vec::new();
    for _ in 0..4 {
        let b = Board::start(server, "1.0.0", false, true).await;
        devices.push(json!({"type": "esp8266", "id": b.id}));
        boards.push(b);
    }
    create(
        server,
        json!({"name": "held", "artifact": {"name": "esp-fw", "version": "2.0.0"}, "targets": {"devices": devices},
               "phases": [{"count": 2, "manual": true}, {"percent": 100}]}),
    )
    .await;
    let r = until(server, "held", "finished its manual phase", |r| r["phase_counts"][0]["succeeded"] == 2).await;
    assert_eq!(r["phase"], 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rollout(server, "held").await["phase"], 1, "a manual phase waits for an admin");
    let (status, r) = act(server, "held", "pause").await;
    assert_eq!((status, r["state"].as_str()), (StatusCode::OK, Some("paused")));
    let (status, _) = act(server, "held", "pause").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, r) = act(server, "held", "advance").await;
    assert_eq!((status, r["phase"].as_i64()), (StatusCode::OK, Some(2)), "{r}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = rollout(server, "held").await;
    assert_eq!(count(&r, "waiting"), 2, "paused: nobody starts: {r:#}");
    let metrics = server.admin(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"drover_rollouts{state="paused"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"drover_rollout_devices{rollout="held",state="waiting"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"drover_rollout_devices{rollout="held",state="succeeded"} 2"#), "{metrics}");
    let (status, _) = act(server, "held", "resume").await;
    assert_eq!(status, StatusCode::OK);
    let r = until(server, "held", "finished", |r| r["state"] == "finished").await;
    assert_eq!(count(&r, "succeeded"), 4);
    let kinds: Vec<String> =
        events(server, "rollout.").await.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        kinds,
        ["rollout.created", "rollout.paused", "rollout.phase_started", "rollout.resumed", "rollout.finished"]
    );
}

e2e!(pause_resume_and_manual_phase, super::pause_and_resume);

/// Boards that fail their update cross the abort threshold: the rollout aborts, the
/// updates still queued (offline boards) are cancelled, and the boards that updated are
/// sent back to the version they had, which they run again.
async fn abort_and_roll_back(server: &TestServer) {
    uploaded(server, "1.0.0").await;
    uploaded(server, "2.0.0").await;
    let canary_group = drover_tests::unique("canary");
    let r = server.admin(Method::POST, "/api/v1/groups").json(&json!({"name": canary_group})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut boards = Vec::new();
    // Two good canaries, then three good, three failing and two offline boards.
    for (fail, online) in [(false, true); 5].into_iter().chain([(true, true); 3]).chain([(false, false); 2]) {
        boards.push(Board::start(server, "1.0.0", fail, online).await);
    }
    let keys: Vec<Value> = boards[..2].iter().map(|b| json!({"type": "esp8266", "id": b.id})).collect();
    let r = server
        .admin(Method::POST, &format!("/api/v1/groups/{canary_group}/members"))
        .json(&json!({"devices": keys}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let devices: Vec<Value> = boards.iter().map(|b| json!({"type": "esp8266", "id": b.id})).collect();
    create(
        server,
        json!({"name": "bad-fw", "artifact": {"name": "esp-fw", "version": "2.0.0"}, "targets": {"devices": devices},
               "phases": [{"group": canary_group}, {"percent": 100}],
               "abort": {"failure_ratio": 0.2, "min_finished": 4}, "auto_rollback": true}),
    )
    .await;
    let r = until(server, "bad-fw", "rolled back", |r| r["rollback"] == "done" && r["done_at"].is_i64()).await;
    assert_eq!(r["state"], "aborted", "{r:#}");
    assert!(r["reason"].as_str().unwrap().contains("failed"), "{r:#}");
    assert_eq!(count(&r, "failed"), 3, "{r:#}");
    assert_eq!(count(&r, "cancelled"), 2, "the offline boards' updates were cancelled: {r:#}");
    assert_eq!(count(&r, "succeeded"), 0, "{r:#}");
    assert!(count(&r, "rolled_back") >= 2, "{r:#}");
    for b in &boards {
        assert_eq!(firmware(server, &b.id).await, "1.0.0", "{} runs its old version again", b.id);
    }
    // The offline boards come online: nothing reaches them.
    for b in &boards[8..] {
        b.online.store(true, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for b in &boards[8..] {
        assert_eq!(b.updates.load(Ordering::Relaxed), 0);
    }
    let failed: Value = get(server, "/api/v1/rollouts/bad-fw/devices?state=failed").await;
    assert_eq!(failed["items"][0]["reason"], "flash verify failed at 0x3000", "{failed}");
    let kinds: Vec<String> =
        events(server, "rollout.").await.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    for k in ["rollout.aborted", "rollout.rollback_started", "rollout.rolled_back"] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    let cancelled = events(server, "operations.cancelled").await;
    assert!(cancelled.iter().any(|e| e["target"] == "rollout/bad-fw" && e["data"]["count"] == 2), "{cancelled:?}");
    // Over: a rollback is not asked twice, and nothing can be resumed.
    assert_eq!(act(server, "bad-fw", "rollback").await.0, StatusCode::CONFLICT);
    assert_eq!(act(server, "bad-fw", "resume").await.0, StatusCode::CONFLICT);
}

e2e!(abort_cancels_and_rolls_back, super::abort_and_roll_back);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A restart in the middle of a phase: the phase waits on an offline board; the server
/// stops and starts on the same database; the board comes online and gets its update
/// once, the phase advances, and no board ever gets a second update.
async fn restart_mid_phase(backend: Backend) {
    let (http, mqtt) = (free_port(), free_port());
    let server = TestServer::start_with(backend, move |c| {
        c.http_addr = ([127, 0, 0, 1], http).into();
        c.mqtt_addr = ([127, 0, 0, 1], mqtt).into();
    })
    .await;
    uploaded(&server, "2.0.0").await;
    let mut boards = Vec::new();
    for i in 0..6 {
        boards.push(Board::start(&server, "1.0.0", false, i != 0).await);
    }
    let devices: Vec<Value> = boards.iter().map(|b| json!({"type": "esp8266", "id": b.id})).collect();
    let created = create(
        &server,
        json!({"name": "steady", "artifact": {"name": "esp-fw", "version": "2.0.0"}, "targets": {"devices": devices},
               "phases": [{"percent": 50}, {"percent": 100}]}),
    )
    .await;
    assert_eq!(created["phase_counts"][0]["waiting"], 3);
    // Is the offline board in the first phase? Then the phase waits for it.
    let first: Value = get(&server, "/api/v1/rollouts/steady/devices?phase=1").await;
    let first: Vec<&str> = first["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    let waits_for_offline = first.contains(&boards[0].id.as_str());
    let r = until(&server, "steady", "got its first phase going", |r| {
        r["phase_counts"][0]["succeeded"].as_i64().unwrap_or(0) == if waits_for_offline { 2 } else { 3 }
    })
    .await;
    let phase_before = r["phase"].as_i64().unwrap();
    let server = server.restart().await;
    boards[0].online.store(true, Ordering::Relaxed);
    let r = until(&server, "steady", "finished after the restart", |r| r["state"] == "finished").await;
    assert_eq!(count(&r, "succeeded"), 6, "{r:#}");
    assert!(phase_before <= 2);
    for b in &boards {
        assert_eq!(b.updates.load(Ordering::Relaxed), 1, "{} got exactly one update", b.id);
        assert_eq!(firmware(&server, &b.id).await, "2.0.0");
    }
    for b in &boards {
        assert_eq!(updates_of(&server, &b.id).await.len(), 1, "one operation for {}", b.id);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_a_phase_sqlite() {
    restart_mid_phase(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_a_phase_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    restart_mid_phase(backend).await;
}

/// An LwM2M device for rollouts, over real UDP: registers, and runs a firmware update by
/// Package URI as the strict client of lwm2m.rs does, on its own: the written URI is
/// fetched over HTTP, then states 1 and 2 are notified (Drover executes Update), then 3,
/// then idle with Update Result 1.
mod lwm2m_device {
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::net::UdpSocket;

    pub struct Device {
        socket: UdpSocket,
        server: SocketAddr,
        mid: u16,
        /// Requests that arrived while waiting for an ACK.
        queued: std::collections::VecDeque<Packet>,
        uri: Vec<u8>,
        pub downloaded: usize,
    }

    fn packet(t: MessageType, code: MessageClass, mid: u16, token: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(t);
        p.header.message_id = mid;
        p.header.code = code;
        p.set_token(token.to_vec());
        p
    }

    fn path(p: &Packet) -> String {
        p.get_option(CoapOption::UriPath)
            .map(|l| l.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect::<Vec<_>>().join("/"))
            .unwrap_or_default()
    }

    impl Device {
        pub async fn register(server: SocketAddr, ep: &str) -> Device {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut d = Device { socket, server, mid: 1, queued: Default::default(), uri: Vec::new(), downloaded: 0 };
            let mut p = packet(MessageType::Confirmable, MessageClass::Request(RequestType::Post), 1, &[1]);
            p.add_option(CoapOption::UriPath, b"rd".to_vec());
            for q in [format!("ep={ep}"), "lt=300".into(), "lwm2m=1.1".into(), "b=U".into()] {
                p.add_option(CoapOption::UriQuery, q.into_bytes());
            }
            p.add_option(CoapOption::ContentFormat, vec![40]);
            p.payload = b"</1/0>,</3/0>,</5/0>".to_vec();
            let ack = d.exchange(p).await;
            assert_eq!(ack.header.code, MessageClass::Response(ResponseType::Created));
            d
        }

        async fn receive(&self) -> Packet {
            let mut buf = vec![0u8; 4096];
            let (n, _) = tokio::time::timeout(super::WAIT, self.socket.recv_from(&mut buf))
                .await
                .expect("a CoAP message in time")
                .unwrap();
            Packet::from_bytes(&buf[..n]).unwrap()
        }

        async fn exchange(&mut self, p: Packet) -> Packet {
            self.socket.send_to(&p.to_bytes().unwrap(), self.server).await.unwrap();
            loop {
                let got = self.receive().await;
                if got.header.get_type() == MessageType::Acknowledgement && got.header.message_id == p.header.message_id
                {
                    return got;
                }
                if matches!(got.header.code, MessageClass::Request(_)) {
                    self.queued.push_back(got);
                }
            }
        }

        async fn answer(&self, req: &Packet, code: ResponseType, observe: Option<u8>, payload: Vec<u8>) {
            let mut p = packet(
                MessageType::Acknowledgement,
                MessageClass::Response(code),
                req.header.message_id,
                req.get_token(),
            );
            if let Some(o) = observe {
                p.add_option(CoapOption::Observe, vec![o]);
                p.add_option(CoapOption::ContentFormat, 11542u16.to_be_bytes().to_vec());
            }
            p.payload = payload;
            self.socket.send_to(&p.to_bytes().unwrap(), self.server).await.unwrap();
        }

        fn firmware(&self, state: u8, result: u8) -> Vec<u8> {
            let mut v = vec![0xC8, 1, self.uri.len() as u8];
            v.extend_from_slice(&self.uri);
            v.extend_from_slice(&[0xC1, 3, state, 0xC1, 5, result]);
            v
        }

        async fn notify(&mut self, token: &[u8], seq: u8, state: u8, result: u8) {
            self.mid += 1;
            let mut p =
                packet(MessageType::Confirmable, MessageClass::Response(ResponseType::Content), self.mid, token);
            p.add_option(CoapOption::Observe, vec![seq]);
            p.add_option(CoapOption::ContentFormat, 11542u16.to_be_bytes().to_vec());
            p.payload = self.firmware(state, result);
            self.exchange(p).await;
        }

        /// Carry out one firmware update, start to end.
        pub async fn update_once(&mut self) {
            let mut token = Vec::new();
            loop {
                let req = match self.queued.pop_front() {
                    Some(r) => r,
                    None => {
                        let p = self.receive().await;
                        if !matches!(p.header.code, MessageClass::Request(_)) {
                            continue;
                        }
                        p
                    }
                };
                match (req.header.code, path(&req).as_str()) {
                    (MessageClass::Request(RequestType::Put), "5/0/1") => {
                        self.uri = req.payload.clone();
                        self.answer(&req, ResponseType::Changed, None, vec![]).await;
                    }
                    (MessageClass::Request(RequestType::Get), "5/0") => {
                        token = req.get_token().to_vec();
                        self.answer(&req, ResponseType::Content, Some(1), self.firmware(0, 0)).await;
                        self.notify(&token, 2, 1, 0).await;
                        let url = String::from_utf8(self.uri.clone()).unwrap();
                        let r = reqwest::get(&url).await.unwrap();
                        assert_eq!(r.status(), reqwest::StatusCode::OK, "{url}");
                        self.downloaded = r.bytes().await.unwrap().len();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        self.notify(&token, 3, 2, 0).await;
                    }
                    (MessageClass::Request(RequestType::Post), "5/0/2") => {
                        self.answer(&req, ResponseType::Changed, None, vec![]).await;
                        self.notify(&token, 4, 3, 0).await;
                        // Notifications are handled as they come (issue 30): let "updating"
                        // land before "idle, success".
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        self.notify(&token, 5, 0, 1).await;
                        return;
                    }
                    _ => self.answer(&req, ResponseType::NotFound, None, vec![]).await,
                }
            }
        }
    }
}

/// LwM2M devices through a three-phase rollout that advances on its own: each is sent
/// its own download link as the Package URI, fetches it, and ends with Update Result 1.
async fn lwm2m_phases(server: &TestServer) {
    let form = reqwest::multipart::Form::new()
        .text("name", "lwm2m-fw")
        .text("version", "2.1.0")
        .text("device_types", "lwm2m")
        .part("file", reqwest::multipart::Part::bytes(image("lwm2m-2.1.0")));
    let r = server.admin(Method::POST, "/api/v1/artifacts").multipart(form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let mut devices = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let ep = format!("urn:dev:rollout:{}:{i}", std::process::id());
        let mut d = lwm2m_device::Device::register(server.coap, &ep).await;
        devices.push(json!({"type": "lwm2m", "id": ep}));
        tasks.push(tokio::spawn(async move {
            d.update_once().await;
            d.downloaded
        }));
    }
    create(
        server,
        json!({"name": "lwm2m-2.1", "artifact": {"name": "lwm2m-fw", "version": "2.1.0"},
               "targets": {"devices": devices}, "phases": [{"count": 1}, {"percent": 50}, {"percent": 100}]}),
    )
    .await;
    let r = until(server, "lwm2m-2.1", "finished", |r| r["state"] == "finished").await;
    assert_eq!(count(&r, "succeeded"), 4, "{r:#}");
    for t in tasks {
        assert_eq!(t.await.unwrap(), 96 << 10, "each device fetched the whole image");
    }
    let kinds: Vec<String> =
        events(server, "rollout.").await.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["rollout.created", "rollout.phase_started", "rollout.phase_started", "rollout.finished"]);
}

e2e!(lwm2m_three_phase_rollout, super::lwm2m_phases);

/// Two replicas on one database both run the driver; one holds the rollout's lease at a
/// time, and every board gets its update exactly once.
///
/// The boards are on `server`'s embedded broker, which only `server` pushes to (one replica
/// per embedded broker, docs/deploy.md), so `server` must be the one driving: the replica
/// starts once `server` holds the lease, and tries to take it every tick from then on.
/// (Started first, the replica took the lease about as often as not, and its updates,
/// pushed to its own broker, reached no board.)
async fn two_replicas(server: &TestServer) {
    uploaded(server, "2.0.0").await;
    let mut boards = Vec::new();
    for _ in 0..8 {
        boards.push(Board::start(server, "1.0.0", false, true).await);
    }
    let devices: Vec<Value> = boards.iter().map(|b| json!({"type": "esp8266", "id": b.id})).collect();
    create(
        server,
        json!({"name": "shared", "artifact": {"name": "esp-fw", "version": "2.0.0"}, "targets": {"devices": devices},
               "phases": [{"count": 2}, {"percent": 50}, {"percent": 100}]}),
    )
    .await;
    until(server, "shared", "started by server", |r| count(r, "waiting") < 8).await;
    let replica = server.replica().await;
    let r = until(server, "shared", "finished", |r| r["state"] == "finished").await;
    assert_eq!(count(&r, "succeeded"), 8, "{r:#}");
    for b in &boards {
        assert_eq!(b.updates.load(Ordering::Relaxed), 1, "{} got exactly one update", b.id);
        assert_eq!(updates_of(server, &b.id).await.len(), 1);
    }
    replica.stop().await;
}

e2e!(one_replica_drives_at_a_time, super::two_replicas);

/// Per-device progress as the plugin decoded it, and the per-device timeout: a board that
/// hangs while flashing shows `installing` at 50%, then times out; its operation is
/// cancelled, and a timeout counts as a failure.
async fn progress_and_timeout(server: &TestServer) {
    uploaded(server, "2.0.0").await;
    let board = Board::start_with(server, "1.0.0", false, true, true).await;
    create(
        server,
        json!({"name": "hang", "artifact": {"name": "esp-fw", "version": "2.0.0"},
               "targets": {"devices": [{"type": "esp8266", "id": board.id}]}, "phases": [{"percent": 100}],
               "device_timeout_secs": 4, "abort": {"failure_ratio": 1.0, "min_finished": 1}}),
    )
    .await;
    let device = |server: &TestServer| {
        let url = "/api/v1/rollouts/hang/devices";
        let r = server.admin(Method::GET, url).send();
        async move { r.await.unwrap().json::<Value>().await.unwrap()["items"][0].clone() }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = device(server).await;
        if d["state"] == "installing" {
            assert_eq!(d["progress"], 50, "{d}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never installing: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = until(server, "hang", "aborted on the timeout", |r| r["state"] == "aborted").await;
    assert_eq!(count(&r, "timed_out"), 1, "{r:#}");
    let d = device(server).await;
    assert!(d["reason"].as_str().unwrap().contains("not finished after 4 s"), "{d}");
    let op = d["operation"].as_i64().unwrap();
    assert_eq!(server.operation(op).await["state"], "CANCELLED");
}

e2e!(progress_and_device_timeout, super::progress_and_timeout);
