//! The durable event log (issue 24), on SQLite and PostgreSQL: a device's and an
//! activity's life produce their events in order, written with the change (a refused
//! change writes none), and the live stream resumes after `Last-Event-ID` missing nothing.

use drover_tests::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

async fn log(server: &TestServer, query: &str) -> (Vec<Value>, i64) {
    let r = server.admin(Method::GET, &format!("/api/v1/events{query}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    let body: Value = r.json().await.unwrap();
    (body["items"].as_array().unwrap().clone(), body["next_after"].as_i64().unwrap())
}

/// The `(type, target)` of each domain event (not the audit rows) after `after`.
async fn domain(server: &TestServer, after: i64) -> Vec<(String, String)> {
    let (items, _) = log(server, &format!("?after={after}&limit=1000")).await;
    items
        .iter()
        .filter(|e| e["type"] != "admin.action")
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["target"].as_str().unwrap().to_string()))
        .collect()
}

/// A Server-Sent Events reader over a real HTTP response.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(server: &TestServer, last_event_id: Option<i64>) -> Stream {
        let mut request = server.admin(Method::GET, "/api/v1/events").header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream { response, buffer: String::new() }
    }

    /// The next event (skipping keep-alive comments): `(id, event, data)`.
    async fn next(&mut self) -> (i64, String, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if let Some(id) = id {
                    return (id, event, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event within 20 s")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

async fn event_log(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, start) = log(&server, "").await;

    // A live stream from now on.
    let mut live = Stream::open(&server, None).await;

    // A device enrolls: in the log and on the stream.
    server.enroll_android("ev-1").await;
    let (id, event, data) = live.next().await;
    assert_eq!(event, "device.enrolled");
    assert_eq!(data["type"], "device.enrolled");
    assert_eq!(data["seq"], id);
    assert_eq!(data["target"], "device/android/ev-1");
    assert_eq!(data["data"]["channel"], "http");
    // Enrolling the same identity again is refused: no second event.
    let again = server
        .http
        .post(server.url("/agent/v1/android/enroll"))
        .body(
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/enroll.json"))
                .unwrap()
                .replace("354956090214718", "ev-1"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT, "{}", again.text().await.unwrap());

    // An activity, then its cancellation.
    let r = server
        .admin(Method::POST, "/api/v1/operations")
        .json(&json!({"code": "DEVICE_RING", "targets": {"devices": [{"type": "android", "id": "ev-1"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let activity = r.json::<Value>().await.unwrap()["activity"]["id"].as_i64().unwrap();
    // A refused operation (unknown code) stores nothing and tells nothing.
    let r = server
        .admin(Method::POST, "/api/v1/operations")
        .json(&json!({"code": "NO_SUCH_CODE", "targets": {"devices": [{"type": "android", "id": "ev-1"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let ops: Value = server
        .admin(Method::GET, &format!("/api/v1/operations?activity={activity}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let activity_op = ops["items"][0]["id"].as_i64().unwrap();
    let r = server.admin(Method::POST, &format!("/api/v1/activities/{activity}/cancel")).send().await.unwrap();
    assert!(r.status().is_success());

    // Credentials revoked, the device removed and restored.
    let r = server.admin(Method::POST, "/api/v1/devices/android/ev-1/revoke-credentials").send().await.unwrap();
    assert!(r.status().is_success());
    let r = server.admin(Method::DELETE, "/api/v1/devices/android/ev-1").send().await.unwrap();
    assert!(r.status().is_success());
    let r = server.admin(Method::POST, "/api/v1/devices/android/ev-1/restore").send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let device = |t: &str| (t.to_string(), "device/android/ev-1".to_string());
    let act = |t: &str| (t.to_string(), format!("activity/{activity}"));
    assert_eq!(
        domain(&server, start).await,
        [
            device("device.enrolled"),
            act("activity.added"),
            // The cancellation moves the operation (its own event), then says how many.
            ("operation.changed".to_string(), format!("operation/{}", activity_op)),
            act("operations.cancelled"),
            device("device.credentials_revoked"),
            device("device.removed"),
            device("device.status_changed"),
        ]
    );
    let (items, _) = log(&server, &format!("?type=activity.&after={start}")).await;
    assert_eq!(items[0]["data"]["operations"], 1);
    assert_eq!(items[0]["actor"], "admin:bootstrap");
    let (items, _) = log(&server, &format!("?type=operations.&after={start}")).await;
    assert_eq!(items[0]["data"]["count"], 1);
    assert_eq!(items[0]["data"]["activity"], activity);
    let (items, _) = log(&server, &format!("?type=device.status&after={start}")).await;
    assert_eq!(items[0]["data"]["status"], "registered");

    // The stream saw the same, in the same order, audit rows between them.
    let mut seen = vec![(id, event)];
    while seen.len() < 7 + 6 {
        let (id, event, _) = live.next().await;
        seen.push((id, event));
    }
    let ids: Vec<i64> = seen.iter().map(|(i, _)| *i).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let streamed: Vec<&str> = seen.iter().map(|(_, e)| e.as_str()).filter(|e| *e != "admin.action").collect();
    assert_eq!(
        streamed,
        [
            "device.enrolled",
            "activity.added",
            "operation.changed",
            "operations.cancelled",
            "device.credentials_revoked",
            "device.removed",
            "device.status_changed"
        ]
    );
    let last = *ids.last().unwrap();
    drop(live);

    // Disconnected: three more things happen. Resumed with Last-Event-ID, the stream
    // gives exactly those, in order.
    for n in 2..=4 {
        server.enroll_android(&format!("ev-{n}")).await;
    }
    let mut resumed = Stream::open(&server, Some(last)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let (id, event, data) = resumed.next().await;
        assert!(id > last);
        assert_eq!(event, "device.enrolled");
        got.push(data["data"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(got, ["ev-2", "ev-3", "ev-4"]);

    // A page's cursor continues where it stopped; a bad Last-Event-ID is refused.
    let (page, next) = log(&server, &format!("?after={start}&limit=2")).await;
    assert_eq!(page.len(), 2);
    assert_eq!(next, page[1]["seq"].as_i64().unwrap());
    let r = server
        .admin(Method::GET, "/api/v1/events")
        .header("accept", "text/event-stream")
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    drop(resumed);

    // Every operation transition is an event, whatever path records it: delivery, the
    // device's result, in order, with the device and the activity named.
    let mark = server.state.store.latest_event().await.unwrap();
    let token = server.enroll_android("ev-5").await;
    let op = server.add_operation("android", "ev-5", "DEVICE_RING", None).await;
    assert_eq!(server.poll_android("ev-5", &token, "[]").await.status(), StatusCode::OK);
    let report = format!(r#"[{{"id":{op},"code":"DEVICE_RING","status":"COMPLETED"}}]"#);
    assert_eq!(server.poll_android("ev-5", &token, &report).await.status(), StatusCode::OK);
    let (changes, _) = log(&server, &format!("?type=operation.&after={mark}")).await;
    let moves: Vec<(String, String)> = changes
        .iter()
        .map(|e| (e["data"]["from"].as_str().unwrap().into(), e["data"]["to"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        moves,
        [("PENDING".to_string(), "IN_PROGRESS".to_string()), ("IN_PROGRESS".to_string(), "COMPLETED".to_string())]
    );
    assert_eq!(changes[0]["target"], format!("operation/{op}"));
    assert_eq!(changes[0]["data"]["device_id"], "ev-5");
    assert_eq!(changes[0]["data"]["device_type"], "android");
    assert_eq!(changes[0]["data"]["code"], "DEVICE_RING");
    assert!(changes[0]["data"]["activity"].as_i64().is_some());
    assert_eq!(changes[1]["actor"], "device");
    // A malformed report changes nothing, and so tells nothing.
    let mark = server.state.store.latest_event().await.unwrap();
    let r = server.poll_android("ev-5", &token, "[{").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(domain(&server, mark).await.is_empty());

    // Reachability: silence makes a device unreachable, calling in makes it active again.
    let mark = server.state.store.latest_event().await.unwrap();
    assert!(server.state.store.mark_unreachable(drover::store::now_ms() + 1).await.unwrap() >= 1);
    assert_eq!(server.poll_android("ev-5", &token, "[]").await.status(), StatusCode::OK);
    let statuses: Vec<(String, String)> = log(&server, &format!("?type=device.status&after={mark}"))
        .await
        .0
        .iter()
        .filter(|e| e["data"]["id"] == "ev-5")
        .map(|e| (e["target"].as_str().unwrap().into(), e["data"]["status"].as_str().unwrap().into()))
        .collect();
    let ev5 = "device/android/ev-5".to_string();
    assert_eq!(statuses, [(ev5.clone(), "unreachable".to_string()), (ev5, "active".to_string())]);

    // A plugin suspended and enabled again: two catalog events with the admin who did it.
    let mark = server.state.store.latest_event().await.unwrap();
    for action in ["suspend", "enable"] {
        let r = server.admin(Method::POST, &format!("/api/v1/plugins/wns/{action}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{action}: {}", r.text().await.unwrap());
    }
    let (plugins, _) = log(&server, &format!("?type=plugin.&after={mark}")).await;
    let changes: Vec<&str> = plugins.iter().map(|e| e["data"]["change"].as_str().unwrap()).collect();
    assert_eq!(changes, ["suspend", "enable"]);
    assert_eq!(plugins[0]["target"], "plugin/wns");
    assert_eq!(plugins[0]["actor"], "admin:bootstrap");

    // A stream ends when its token is revoked, as the token's next call is refused: it is
    // not a way to keep reading after an admin took the access away.
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({ "name": "watcher", "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let watcher = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let mut stream = server
        .http
        .get(server.url("/api/v1/events"))
        .bearer_auth(&watcher)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    server.enroll_android("ev-watched").await;
    let first = tokio::time::timeout(Duration::from_secs(20), stream.chunk()).await.expect("an event").unwrap();
    assert!(String::from_utf8_lossy(&first.unwrap()).contains("device.enrolled"), "the stream serves the token");
    let r = server.admin(Method::DELETE, "/api/v1/admin-tokens/watcher").send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // Events keep coming; the revoked token's stream must close instead of serving them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        server.enroll_android(&format!("ev-after-revoke-{n}")).await;
        n += 1;
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Err(_) => panic!("the revoked token's stream is still open after 15 s"),
            Ok(Ok(None) | Err(_)) => break,
            Ok(Ok(Some(_))) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_sqlite() {
    event_log(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    event_log(backend).await;
}

/// `mosquitto_sub` (a third-party client) reading the event topics; its output lines
/// (debug lines with `-d`, then `topic payload` per message).
struct Subscriber {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Subscriber {
    /// Connect with `token` as user `admin` and subscribe to every event topic; returns
    /// once the broker acknowledged the subscription.
    async fn start(port: u16, token: &str) -> Subscriber {
        use tokio::io::AsyncBufReadExt;
        // mosquitto_sub prints its `-d` lines with printf and flushes only after a
        // message: into a pipe, `received SUBACK` would wait in its buffer until the
        // first event arrived (and the test with it, when none came). stdbuf (coreutils)
        // makes its stdout line-buffered.
        let mut child = tokio::process::Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port.to_string(), "-u", "admin", "-P", token])
            .args(["-i", "siem-reader", "-q", "1", "-t", "drover-events/#", "-v", "-d"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub runs: install the mosquitto-clients package");
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut s = Subscriber { child, lines };
        let suback = s.line_with("received SUBACK").await;
        assert!(!suback.is_empty());
        s
    }

    /// The next output line containing `needle`.
    async fn line_with(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("mosquitto_sub said nothing with `{needle}`"))
                .unwrap()
                .unwrap_or_else(|| panic!("mosquitto_sub ended before `{needle}`"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The next event on the feed: `(topic, body)`.
    async fn event(&mut self) -> (String, Value) {
        let line = self.line_with("drover-events/").await;
        let line = if line.starts_with("Client ") { self.line_with("drover-events/").await } else { line };
        let (topic, payload) = line.split_once(' ').unwrap();
        (topic.to_string(), serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {payload}")))
    }
}

/// The same client's one-shot run: `(exit success, what it said)`.
async fn mosquitto(tool: &str, port: u16, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(tool).args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output(),
    )
    .await
    .expect("the mosquitto client finishes")
    .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `--mqtt-events`: every event on `drover-events/{type}` of the embedded broker, in log
/// order, for an admin-API token and nobody else; the token reads and never writes, and
/// its session ends when it is revoked.
async fn mqtt_event_feed(server: &TestServer) {
    let port = server.mqtt.expect("the embedded broker runs").port();
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({"name": "siem", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let siem = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();

    let mut feed = Subscriber::start(port, &siem).await;
    let device_token = server.enroll_android("feed-1").await;
    let op = server.add_operation("android", "feed-1", "DEVICE_RING", None).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|(t, _): &(String, Value)| t == "drover-events/activity.added") {
        seen.push(feed.event().await);
    }
    let (topic, enrolled) = seen.iter().find(|(t, _)| t.ends_with("device.enrolled")).expect("device.enrolled").clone();
    assert_eq!(topic, "drover-events/device.enrolled");
    // The body a webhook gets: the Standard Webhooks envelope around the log's row.
    assert_eq!(enrolled["type"], "device.enrolled");
    assert_eq!(enrolled["data"]["target"], "device/android/feed-1");
    assert!(enrolled["timestamp"].as_str().unwrap().ends_with('Z'));
    let seqs: Vec<i64> = seen.iter().map(|(_, e)| e["data"]["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in log order: {seqs:?}");

    // A device's own credential does not read the feed; a wrong token does not connect.
    let (_, said) = mosquitto(
        "mosquitto_sub",
        port,
        &["-u", "android/feed-1", "-P", &device_token, "-t", "drover-events/#", "-W", "3"],
    )
    .await;
    assert!(said.contains("denied"), "{said}");
    let (ok, said) =
        mosquitto("mosquitto_sub", port, &["-u", "admin", "-P", "drv_admin_wrong", "-t", "drover-events/#", "-W", "3"])
            .await;
    assert!(!ok && !said.contains("drover-events/"), "{said}");
    // The token reads events only: not a device's operations...
    let (_, said) = mosquitto(
        "mosquitto_sub",
        port,
        &["-u", "admin", "-P", &siem, "-t", "drover/android/feed-1/operations", "-W", "3"],
    )
    .await;
    assert!(said.contains("denied"), "{said}");
    // ...and writes nothing: no forged event, no forged result in the device's name.
    let (ok, said) = mosquitto(
        "mosquitto_pub",
        port,
        &["-u", "admin", "-P", &siem, "-q", "1", "-t", "drover-events/device.removed", "-m", "{}"],
    )
    .await;
    assert!(!ok, "a forged event must not be acknowledged: {said}");
    let forged = json!([{"id": op, "code": "DEVICE_RING", "type": "COMMAND", "status": "COMPLETED"}]).to_string();
    let (ok, said) = mosquitto(
        "mosquitto_pub",
        port,
        &["-u", "admin", "-P", &siem, "-q", "1", "-t", "drover/android/feed-1/reply", "-m", &forged],
    )
    .await;
    assert!(!ok, "a forged result must not be acknowledged: {said}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.operation(op).await["state"], "PENDING");

    // The feed goes on: the device's poll moves its operation, and that is published.
    let r = server.poll_android("feed-1", &device_token, "[]").await;
    assert_eq!(r.status(), StatusCode::OK);
    loop {
        let (topic, e) = feed.event().await;
        if topic == "drover-events/operation.changed" && e["data"]["data"]["to"] == "IN_PROGRESS" {
            assert_eq!(e["data"]["target"], format!("operation/{op}"));
            break;
        }
    }

    // Revoked: the live session ends (its reconnection is refused, and it gives up).
    let r = server.admin(Method::DELETE, "/api/v1/admin-tokens/siem").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let exit = tokio::time::timeout(Duration::from_secs(30), feed.child.wait()).await.expect("the session ended");
    assert!(!exit.unwrap().success());
}
fn feed_on(c: &mut drover::config::Config) {
    c.mqtt_events = true;
}
drover_tests::e2e_with!(mqtt_events, super::feed_on, super::mqtt_event_feed);
