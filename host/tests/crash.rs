//! Kill -9 under load: `drover serve` (the real binary) is killed with SIGKILL several
//! times while admins add operations and devices poll and report, and started again on
//! the same data. Afterwards every operation the server acknowledged (201) is still there,
//! every one ends COMPLETED (or REPEATED, superseded while it waited in the queue), none is completed twice, and every recorded transition is one
//! the state machine allows. On SQLite, and on PostgreSQL when `DROVER_TEST_POSTGRES_URL`
//! is set.
//!
//! CI runs it small (`DROVER_CRASH_DEVICES`, `DROVER_CRASH_KILLS` make it larger; the
//! large runs' results are in docs/testing.md). Devices speak the Android agent's JSON
//! over plain HTTP: what is killed is the server, not the protocol.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN: &str = "drover_admin_crash-test-token-0123456789";
const ENROLL: &str = include_str!("../../plugins/android/fixtures/enroll.json");

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp() -> String {
    format!("127.0.0.1:{}", std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// One `drover serve` process, killed with SIGKILL when dropped.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    data: tempfile::TempDir,
    port: u16,
    database_url: Option<String>,
}

impl Setup {
    /// Start the server on this setup's data and port; returns once /healthz answers.
    async fn start(&self) -> Server {
        let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
        for var in ["DROVER_CONFIG", "DROVER_HTTP_ADDR", "DROVER_DATA_DIR", "DROVER_DATABASE_URL", "DROVER_BROKER"] {
            c.env_remove(var);
        }
        c.env("DROVER_ADMIN_TOKEN", ADMIN)
            .args(["serve", "--data-dir"])
            .arg(self.data.path())
            .args(["--http-addr", &format!("127.0.0.1:{}", self.port)])
            .args(["--mqtt-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--coap-addr", &free_udp(), "--coaps-addr", "127.0.0.1:0", "--plaintext", "true"])
            // A poll's answer lost with the process comes back to the queue quickly.
            .args(["--answer-timeout-secs", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(url) = &self.database_url {
            c.args(["--database-url", url]);
        }
        let server = Server { child: c.spawn().unwrap() };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let up = http.get(format!("http://127.0.0.1:{}/healthz", self.port)).send().await;
            if up.is_ok_and(|r| r.status() == StatusCode::OK) {
                return server;
            }
            assert!(Instant::now() < deadline, "drover serve did not come up within 120 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

struct Device {
    id: String,
    token: String,
}

/// What the load saw acknowledged: activities (201) and the devices each targeted.
#[derive(Default)]
struct Acked {
    activities: BTreeMap<i64, Vec<String>>,
}

/// Poll as `device` with `results`; the operations handed out, or `None` when the server
/// did not answer (it was killed; the results may or may not have been recorded).
async fn poll(http: &reqwest::Client, setup: &Setup, device: &Device, results: &[Value]) -> Option<Vec<Value>> {
    let r = http
        .put(setup.url(&format!("/agent/v1/android/devices/{}/pending-operations", device.id)))
        .bearer_auth(&device.token)
        .header("content-type", "application/json")
        .body(Value::Array(results.to_vec()).to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.json().await.ok()
}

fn completed(op: &Value) -> Value {
    json!({"id": op["id"], "code": op["code"], "type": op["type"], "status": "COMPLETED", "operationResponse": "ok"})
}

/// One device's loop until `stop`: poll, carry out what it got, report it on the next poll.
/// Results not known to have been taken (the server died) are sent again.
async fn device_loop(setup: Arc<Setup>, device: Arc<Device>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let http = reqwest::Client::new();
    let mut unreported: Vec<Value> = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match poll(&http, &setup, &device, &unreported).await {
            Some(got) => unreported = got.iter().map(completed).collect(),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin_loop(
    setup: Arc<Setup>,
    ids: Vec<String>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let http = reqwest::Client::new();
    let mut n = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        // A few devices each time, different each time. A command added while one of the
        // same code waits for its device supersedes it (REPEATED): that happens here too.
        let targets: Vec<String> = ids.iter().skip(n % ids.len()).step_by(3).take(4).cloned().collect();
        let code = ["DEVICE_RING", "DEVICE_INFO", "DEVICE_LOCATION", "APPLICATION_LIST"][n % 4];
        let devices: Vec<Value> = targets.iter().map(|id| json!({"type": "android", "id": id})).collect();
        let r = http
            .post(setup.url("/api/v1/operations"))
            .bearer_auth(ADMIN)
            .json(&json!({"code": code, "targets": {"devices": devices}}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == StatusCode::CREATED
            && let Ok(v) = r.json::<Value>().await
        {
            acked.lock().unwrap().activities.insert(v["activity"]["id"].as_i64().unwrap(), targets);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Done with: COMPLETED, or superseded by a newer command of the same code (REPEATED).
fn finished(op: &Value) -> bool {
    op["state"] == "COMPLETED" || op["state"] == "REPEATED"
}

/// Every operation of `activity`, through the admin API (all pages).
async fn operations_of(http: &reqwest::Client, setup: &Setup, activity: i64) -> Vec<Value> {
    let r = http
        .get(setup.url(&format!("/api/v1/operations?activity={activity}&limit=1000")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["items"].as_array().unwrap().clone()
}

async fn operation(http: &reqwest::Client, setup: &Setup, id: &Value) -> Value {
    let r = http.get(setup.url(&format!("/api/v1/operations/{id}"))).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Whether the state machine has this move (`drover::ops::is_move`).
fn legal(from: &str, to: &str) -> bool {
    use drover::ops::State;
    matches!((State::parse(from), State::parse(to)), (Some(f), Some(t)) if drover::ops::is_move(f, t))
}

async fn killed_under_load(database_url: Option<String>) {
    let devices = env_or("DROVER_CRASH_DEVICES", 12);
    let kills = env_or("DROVER_CRASH_KILLS", 3);
    let setup = Arc::new(Setup { data: tempfile::tempdir().unwrap(), port: free_port(), database_url });
    let mut server = setup.start().await;
    let http = reqwest::Client::new();

    let run = format!("{:x}", std::process::id());
    let mut ids = Vec::new();
    let mut enrolled = Vec::new();
    for i in 0..devices {
        let id = format!("crash-{run}-{i:04}");
        let body = ENROLL.replace("354956090214718", &id);
        let r = http.post(setup.url("/agent/v1/android/enroll")).body(body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
        ids.push(id.clone());
        enrolled.push(Arc::new(Device { id, token }));
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut load = tokio::task::JoinSet::new();
    for device in &enrolled {
        load.spawn(device_loop(setup.clone(), device.clone(), stop.clone()));
    }
    for _ in 0..2 {
        load.spawn(admin_loop(setup.clone(), ids.clone(), acked.clone(), stop.clone()));
    }

    // Kill at a different point of the load each time.
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(700 + 400 * (k as u64 % 3))).await;
        drop(server); // SIGKILL, then wait for it to be gone
        server = setup.start().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The admins stop adding; devices go on until everything acknowledged is COMPLETED
    // (an operation whose poll answer died with the server needs the answer timeout:
    // 1 s, swept every 10 s).
    let activities: Vec<(i64, Vec<String>)> = {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        while load.join_next().await.is_some() {}
        acked.lock().unwrap().activities.iter().map(|(a, d)| (*a, d.clone())).collect()
    };
    assert!(!activities.is_empty(), "the load added nothing");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut drain = tokio::task::JoinSet::new();
    // The devices carry on; what each held unreported when its loop stopped is lost, as
    // a device's own crash would lose it: the answer timeout brings those back too.
    for device in &enrolled {
        drain.spawn(device_loop(setup.clone(), device.clone(), stop.clone()));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut left: BTreeMap<String, usize> = BTreeMap::new();
    let mut sample = Value::Null;
    while Instant::now() < deadline {
        left.clear();
        for (activity, _) in &activities {
            for o in operations_of(&http, &setup, *activity).await.iter().filter(|o| !finished(o)) {
                *left.entry(o["state"].as_str().unwrap_or("?").to_string()).or_default() += 1;
                sample = o.clone();
            }
        }
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while drain.join_next().await.is_some() {}
    if !left.is_empty() {
        let full = operation(&http, &setup, &sample["id"]).await;
        panic!("operations acknowledged but not COMPLETED after the drain, by state: {left:?}; one of them: {full}");
    }

    // Every acknowledged activity is there with one operation per targeted device, and
    // each was completed exactly once through legal moves.
    let (mut operations, mut repeated) = (0, 0);
    for (activity, targets) in &activities {
        let mut on = BTreeSet::new();
        for op in operations_of(&http, &setup, *activity).await {
            let full = operation(&http, &setup, &op["id"]).await;
            on.insert(full["device"]["id"].as_str().unwrap().to_string());
            let moves: Vec<(String, String)> = full["transitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t["from_state"].as_str().unwrap().into(), t["to_state"].as_str().unwrap().into()))
                .collect();
            let completions = moves.iter().filter(|(_, to)| to == "COMPLETED").count();
            for (from, to) in &moves {
                assert!(legal(from, to), "operation {}: {from} -> {to} is not a legal move: {moves:?}", op["id"]);
            }
            if op["state"] == "REPEATED" {
                // Superseded while it waited in the queue: never handed out, or handed out
                // in an answer the kill lost and back in the queue after the answer timeout.
                assert_eq!(completions, 0, "operation {}: {moves:?}", op["id"]);
                assert_eq!(
                    moves.last(),
                    Some(&("PENDING".to_string(), "REPEATED".to_string())),
                    "operation {}",
                    op["id"]
                );
                repeated += 1;
                continue;
            }
            assert_eq!(completions, 1, "operation {} completed {completions} times: {moves:?}", op["id"]);
            operations += 1;
        }
        let wanted: BTreeSet<String> = targets.iter().cloned().collect();
        assert_eq!(on, wanted, "activity {activity} lost operations");
    }
    eprintln!(
        "{kills} kills: {} activities and {operations} operations acknowledged, all COMPLETED once ({repeated} more superseded while queued)",
        activities.len()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    killed_under_load(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Ok(url) = std::env::var("DROVER_TEST_POSTGRES_URL") else {
        eprintln!("DROVER_TEST_POSTGRES_URL not set: the PostgreSQL kill -9 test is skipped");
        return;
    };
    use sqlx::Connection;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let schema = format!("drover_crash_{:x}_{nanos}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect to the PostgreSQL test server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&mut conn).await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    killed_under_load(Some(format!("{url}{sep}options=-c%20search_path%3D{schema}"))).await;
}
