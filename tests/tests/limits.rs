//! No input from outside takes the service from others (issue 21, item 6): slow and idle
//! HTTP clients, connections over the cap, bodies sent before (or instead of)
//! authentication, device messages over a cap, telemetry from the future, and one MQTT
//! device flooding the intake. Each against a running server with plain sockets or the
//! mosquitto clients; SQLite and PostgreSQL where storage is involved.

use drover_tests::{TestServer, e2e, e2e_with, unique};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(15);

fn tight(c: &mut drover::config::Config) {
    c.http.max_connections = 8;
    c.http.header_timeout = Duration::from_secs(1);
    c.http.body_timeout = Duration::from_secs(1);
}

async fn enroll(server: &TestServer, id: &str) -> String {
    server.enroll_android(id).await
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://")).await.unwrap()
}

/// Everything the server sends until it closes the connection (bounded by `WAIT`).
async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await.expect("the server answers or closes").ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// One whole request on a connection of its own; the answer's status line.
async fn request(server: &TestServer, head: &str) -> String {
    let mut s = connect(server).await;
    s.write_all(head.as_bytes()).await.unwrap();
    read_all(&mut s).await.lines().next().unwrap_or_default().to_string()
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: drover\r\nConnection: close\r\n\r\n";

/// Connections that send half a request head are closed after the header timeout; while
/// they are open, the server still answers others up to its connection cap, and a
/// connection over the cap gets an immediate 503 instead of waiting unseen. An idle
/// kept-alive connection is closed the same way.
async fn slow_clients(server: &TestServer) {
    let mut slow = Vec::new();
    for _ in 0..7 {
        let mut s = connect(server).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: drover\r\n").await.unwrap();
        slow.push(s);
    }
    assert_eq!(request(server, HEALTHZ).await, "HTTP/1.1 200 OK");
    // The cap's last connection, then one more: refused at once, told to retry. (The
    // server lets go of the answered connection's slot just after closing it.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut last = connect(server).await;
    last.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = connect(server).await;
    let answer = read_all(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    slow.push(last);
    // Each slow connection is closed by the server within its header timeout.
    for s in &mut slow {
        let rest = read_all(s).await;
        assert!(!rest.contains("200 OK"), "{rest}");
    }
    assert_eq!(request(server, HEALTHZ).await, "HTTP/1.1 200 OK");

    // Kept alive after an answer, then idle: closed too.
    let mut idle = connect(server).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: drover\r\n\r\n").await.unwrap();
    let answered = read_all(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200 OK"), "{answered}");
}
e2e_with!(slow_clients_cannot_hold_the_server, super::tight, super::slow_clients);

/// A device message's body is read only after its credential checks out: a request that
/// announces 4 MB and sends none is refused at once, not waited for. An enrollment (no
/// credential yet) is limited to 64 KiB, and a body that trickles is cut off.
async fn bodies_after_authentication(server: &TestServer) {
    let head = "PUT /agent/v1/android/devices/x/pending-operations HTTP/1.1\r\nHost: drover\r\n\
                Authorization: Bearer drv_dev_forged\r\nContent-Length: 4000000\r\nConnection: close\r\n\r\n";
    assert_eq!(request(server, head).await, "HTTP/1.1 401 Unauthorized");

    let big = format!("{{\"deviceIdentifier\": \"{}\"}}", "1".repeat(70 << 10));
    let r = server.http.post(server.url("/agent/v1/android/enroll")).body(big).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().await.unwrap().contains("65536"));

    let id = "358100000000001";
    let token = enroll(server, id).await;
    let mut s = connect(server).await;
    let head = format!(
        "PUT /agent/v1/android/devices/{id}/pending-operations HTTP/1.1\r\nHost: drover\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n[{{\"id\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_all(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert_eq!(server.poll_android(id, &token, "[]").await.status(), StatusCode::OK);
}
e2e_with!(bodies_after_authentication, super::tight, super::bodies_after_authentication);

/// A message with more results than any device has operations is refused whole: the
/// result in it for a real operation is not recorded either, and the same result sent
/// alone is.
async fn message_caps(server: &TestServer) {
    let id = "358100000000002";
    let token = enroll(server, id).await;
    let op = server.add_operation("android", id, "DEVICE_RING", None).await;
    let r = server.poll_android(id, &token, "[]").await;
    assert_eq!(r.status(), StatusCode::OK);
    let done = json!({"id": op, "code": "DEVICE_RING", "status": "COMPLETED"});
    let mut results = vec![done.clone()];
    results.extend((0..1000).map(|i| json!({"id": 1_000_000 + i, "code": "DEVICE_RING", "status": "COMPLETED"})));
    let r = server.poll_android(id, &token, &Value::Array(results).to_string()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("at most 1000 results"), "{body}");
    assert_eq!(server.operation(op).await["state"], "IN_PROGRESS");
    server.poll_android(id, &token, &json!([done]).to_string()).await;
    server.until_state(op, "COMPLETED").await;
}
e2e!(message_caps, super::message_caps);

/// A point stamped in the year 2100 counts as measured when received: it cannot pin the
/// device's latest value for ever, nor escape retention.
async fn future_telemetry(server: &TestServer) {
    let id = "358100000000003";
    let token = enroll(server, id).await;
    let post = |body: Value| {
        server
            .http
            .post(server.url(&format!("/agent/v1/android/devices/{id}/telemetry")))
            .bearer_auth(&token)
            .body(body.to_string())
            .send()
    };
    let before = drover::store::now_ms();
    assert_eq!(post(json!({"timestamp": 4_102_444_800_000i64, "battery": 50})).await.unwrap().status(), StatusCode::OK);
    let d = server.device("android", id).await;
    let battery = d["telemetry"].as_array().unwrap().iter().find(|t| t["name"] == "battery").unwrap().clone();
    let at = battery["at"].as_i64().unwrap();
    assert!(at >= before && at <= drover::store::now_ms(), "{battery}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(post(json!({"battery": 40})).await.unwrap().status(), StatusCode::OK);
    let d = server.device("android", id).await;
    let battery = d["telemetry"].as_array().unwrap().iter().find(|t| t["name"] == "battery").unwrap().clone();
    assert_eq!(battery["value"], 40, "{d}");
}
e2e!(future_telemetry, super::future_telemetry);

async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server.admin(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok())).unwrap_or(0.0)
}

/// One device flooding its MQTT topic (mosquitto_pub, 20,000 messages) does not hold up
/// another's: the flood beyond the per-device backlog (256) is dropped and counted, and
/// the other device's result is recorded meanwhile.
async fn mqtt_flood(server: &TestServer) {
    let port = server.mqtt.expect("the embedded broker runs").port().to_string();
    let (noisy, quiet) = ("358100000000004", "358100000000005");
    let (noisy_token, quiet_token) = (enroll(server, noisy).await, enroll(server, quiet).await);
    let op = server.add_operation("android", quiet, "DEVICE_RING", None).await;
    let r = server.poll_android(quiet, &quiet_token, "[]").await;
    assert_eq!(r.status(), StatusCode::OK);

    let lines: String = (0..20_000).map(|i| format!("{{\"battery\": {}}}\n", i % 100)).collect();
    let mut flood = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", &format!("android/{noisy}"), "-P", &noisy_token])
        .args(["-i", &unique("flood"), "-q", "1", "-t", &format!("drover/android/{noisy}/telemetry"), "-l"])
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_pub runs: install the mosquitto-clients package");
    let mut stdin = flood.stdin.take().unwrap();
    let feeder = tokio::spawn(async move {
        let _ = stdin.write_all(lines.as_bytes()).await;
    });
    // Let the flood get going, then the quiet device reports.
    for _ in 0..200 {
        if metric(server, "drover_device_messages_total{channel=\"mqtt\"}").await > 100.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let result = json!([{"id": op, "code": "DEVICE_RING", "status": "COMPLETED"}]).to_string();
    let out = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", &format!("android/{quiet}"), "-P", &quiet_token])
        .args(["-i", &unique("quiet"), "-q", "1", "-t", &format!("drover/android/{quiet}/reply"), "-m", &result])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.until_state(op, "COMPLETED").await;
    assert!(metric(server, "drover_device_messages_refused_total{channel=\"mqtt\"}").await > 0.0);
    feeder.abort();
    let _ = flood.kill().await;
}
e2e!(mqtt_flood_does_not_stall_others, super::mqtt_flood);

fn throttled(c: &mut drover::config::Config) {
    c.http.enroll_rate_per_sec = 1;
    c.http.enroll_burst = 5;
    c.trusted_proxies = vec!["127.0.0.3/32".parse().unwrap()];
}

/// A client of its own loopback address (Linux answers all of 127/8).
fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(address.parse::<std::net::IpAddr>().unwrap()).build().unwrap()
}

/// One address asking before any credential (SCEP here; enrollment, profiles and first
/// certificates count the same) as fast as it can is told to wait past its burst (429,
/// `Retry-After`), and served again once it has; meanwhile another address's request, an
/// enrolled device's poll and, behind the trusted proxy, each client it forwards are
/// served. A made-up `X-Forwarded-For` from an address that is no trusted proxy is the same
/// client all the same. Logins are counted too. (Without the buckets every request of the
/// flood is served.)
async fn requests_before_a_credential_per_client(server: &TestServer) {
    let id = unique("thr");
    let device = enroll(server, &id).await;
    let caps = server.url("/agent/v1/android/scep?operation=GetCACaps");
    let flood = client_from("127.0.0.2");
    let (mut served, mut refused) = (0, None);
    for i in 0..20 {
        let r = flood.get(&caps).header("x-forwarded-for", format!("10.0.0.{i}")).send().await.unwrap();
        match r.status() {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => refused = Some(r),
            other => panic!("{other}"),
        }
    }
    assert!((5..=7).contains(&served), "served {served} of 20 at 1/s with a burst of 5");
    let refused = refused.expect("the flood was refused past its burst");
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");

    // Others are served meanwhile: another address, an enrolled device (authenticated
    // first, never counted), and two clients behind the trusted proxy, each its own.
    let r = client_from("127.0.0.4").get(&caps).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = server.poll_android(&id, &device, "[]").await;
    assert_eq!(r.status(), StatusCode::OK);
    let proxy = client_from("127.0.0.3");
    let behind = |client: &'static str| proxy.get(&caps).header("x-forwarded-for", client).send();
    for _ in 0..5 {
        assert_eq!(behind("198.51.100.1").await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(behind("198.51.100.1").await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(behind("198.51.100.2").await.unwrap().status(), StatusCode::OK);

    // Logins count the same (each password check is an argon2 hash): names that do not
    // exist, so no user's own lock answers first.
    let guesser = client_from("127.0.0.5");
    let login = |n: usize| {
        guesser.post(server.url("/api/v1/login")).json(&json!({"name": format!("nobody-{n}"), "password": "x"})).send()
    };
    for n in 0..5 {
        assert_eq!(login(n).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let r = login(5).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "rate_limited");

    // Having waited, the flooding address is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(flood.get(&caps).send().await.unwrap().status(), StatusCode::OK);
}
e2e_with!(requests_before_a_credential, super::throttled, super::requests_before_a_credential_per_client);
