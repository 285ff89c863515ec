//! ESP8266 boards end to end, with the first-party esp8266 plugin and a real MQTT client
//! (rumqttc) as the board on the embedded broker: enroll over HTTP, every operation
//! (LED, SET_INTERVAL, REBOOT, FIRMWARE_UPDATE with progress) pushed and answered, JSON and
//! binary telemetry, a board speaking the compact binary form, and malformed JSON and
//! binary frames that change nothing.

use drover_tests::{TestServer, e2e};
use reqwest::{Method, StatusCode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn chip() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:08x}", t.wrapping_add(N.fetch_add(1, Ordering::Relaxed) << 24))
}

struct Board {
    id: String,
    client: AsyncClient,
    pushed: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Board {
    /// Enroll over HTTP as the firmware does, connect with the credential, subscribe to
    /// the command topic (`cmd`, or `cmd/bin` for a binary board).
    async fn start(server: &TestServer, encoding: &str) -> Board {
        let chip = chip();
        let body = json!({"chip_id": chip, "model": "ESP-12F", "firmware": "1.0.3", "encoding": encoding});
        let r = server.http.post(server.url("/agent/v1/esp8266/enroll")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        let id = v["device_id"].as_str().unwrap().to_string();
        assert_eq!(id, format!("esp-{chip}"));
        let token = v["access_token"].as_str().unwrap().to_string();

        let port = server.mqtt.expect("embedded broker").port();
        let mut options = MqttOptions::new(id.clone(), "127.0.0.1", port);
        options.set_credentials(format!("esp8266/{id}"), token);
        options.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, pushed) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        let suffix = if encoding == "binary" { "cmd/bin" } else { "cmd" };
        client.subscribe(format!("drover/esp8266/{id}/{suffix}"), QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(WAIT, subscribed).await.expect("SUBACK in time").unwrap();
        Board { id, client, pushed, task }
    }

    async fn next(&mut self) -> (String, Vec<u8>) {
        tokio::time::timeout(WAIT, self.pushed.recv()).await.expect("a command in time").expect("connected")
    }

    async fn publish(&self, suffix: &str, payload: impl Into<Vec<u8>>) {
        let topic = format!("drover/esp8266/{}/{suffix}", self.id);
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.unwrap();
    }
}

async fn add(server: &TestServer, board: &str, code: &str, payload: Option<Value>) -> (StatusCode, Value) {
    let mut body = json!({"code": code, "targets": {"devices": [{"type": "esp8266", "id": board}]}});
    if let Some(p) = payload {
        body["payload"] = p;
    }
    let r = server.admin(Method::POST, "/api/v1/operations").json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    if status != StatusCode::CREATED {
        return (status, v);
    }
    let activity = v["activity"]["id"].as_i64().unwrap();
    let ops: Value = server
        .admin(Method::GET, &format!("/api/v1/operations?activity={activity}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (status, ops["items"][0].clone())
}

async fn device(server: &TestServer, id: &str) -> Value {
    server.admin(Method::GET, &format!("/api/v1/devices/esp8266/{id}")).send().await.unwrap().json().await.unwrap()
}

fn latest(device: &Value, name: &str) -> Value {
    device["telemetry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .map_or(Value::Null, |t| t["value"].clone())
}

async fn json_board(server: &TestServer) {
    let mut board = Board::start(server, "json").await;

    // Bad payloads are refused by the plugin before anything is stored.
    let (status, v) = add(server, &board.id, "SET_INTERVAL", Some(json!({"seconds": 1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("5 to 86400"), "{v}");
    let (status, _) = add(server, &board.id, "FIRMWARE_UPDATE", Some(json!({"url": "ftp://x"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // LED: pushed as JSON on `cmd`, answered on `reply`.
    let (_, led) = add(server, &board.id, "LED", Some(json!({"state": "blink"}))).await;
    let (topic, frame) = board.next().await;
    assert_eq!(topic, format!("drover/esp8266/{}/cmd", board.id));
    let frame: Value = serde_json::from_slice(&frame).unwrap();
    assert_eq!(frame["ops"][0], json!({"id": led["id"], "op": "led", "state": "blink"}));
    server.until_state(led["id"].as_i64().unwrap(), "IN_PROGRESS").await;
    board.publish("reply", json!({"results": [{"id": led["id"], "status": "ok"}]}).to_string()).await;
    server.until_state(led["id"].as_i64().unwrap(), "COMPLETED").await;

    // SET_INTERVAL refused by the board: ERROR with its reason.
    let (_, interval) = add(server, &board.id, "SET_INTERVAL", Some(json!({"seconds": 60}))).await;
    let (_, frame) = board.next().await;
    assert_eq!(serde_json::from_slice::<Value>(&frame).unwrap()["ops"][0]["s"], 60);
    board
        .publish(
            "reply",
            json!({"results": [{"id": interval["id"], "status": "error", "error": "flash busy"}]}).to_string(),
        )
        .await;
    let op = server.until_state(interval["id"].as_i64().unwrap(), "ERROR").await;
    assert!(op.to_string().contains("flash busy"), "{op}");

    // A malformed reply changes nothing: REBOOT stays IN_PROGRESS, then completes.
    let (_, reboot) = add(server, &board.id, "REBOOT", None).await;
    board.next().await;
    server.until_state(reboot["id"].as_i64().unwrap(), "IN_PROGRESS").await;
    board.publish("reply", "{\"results\": [{\"id\": ").await;
    board.publish("reply", json!({"results": [{"id": reboot["id"], "status": "maybe"}]}).to_string()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.operation(reboot["id"].as_i64().unwrap()).await["state"], "IN_PROGRESS");
    board.publish("reply", json!({"results": [{"id": reboot["id"], "status": "ok"}]}).to_string()).await;
    server.until_state(reboot["id"].as_i64().unwrap(), "COMPLETED").await;

    // Firmware update: pushed with URL, sha256, size; progress keeps it IN_PROGRESS and is
    // recorded; `done` completes it and the board's firmware version is updated.
    let ota = json!({"url": "https://fw.example/esp/1.1.0.bin", "sha256": SHA, "size": 412304, "version": "1.1.0"});
    let (_, fw) = add(server, &board.id, "FIRMWARE_UPDATE", Some(ota)).await;
    let (_, frame) = board.next().await;
    let frame: Value = serde_json::from_slice(&frame).unwrap();
    assert_eq!(frame["ops"][0]["op"], "ota");
    assert_eq!(frame["ops"][0]["sha256"], SHA);
    assert_eq!(frame["ops"][0]["size"], 412304);
    let fw_id = fw["id"].as_i64().unwrap();
    // Reports without a time are stamped on arrival; send the next once the last is in.
    for p in [10.0, 60.0] {
        board.publish("ota", json!({"id": fw_id, "state": "downloading", "progress": p as u8}).to_string()).await;
        for _ in 0..100 {
            if latest(&device(server, &board.id).await, "ota.progress") == p {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(latest(&device(server, &board.id).await, "ota.progress"), p);
    }
    assert_eq!(server.operation(fw_id).await["state"], "IN_PROGRESS");
    board.publish("ota", json!({"id": fw_id, "state": "done", "progress": 100, "version": "1.1.0"}).to_string()).await;
    server.until_state(fw_id, "COMPLETED").await;
    // The result is recorded first, then what the message reported about the board.
    for _ in 0..100 {
        if device(server, &board.id).await["metadata"]["firmware"] == "1.1.0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(device(server, &board.id).await["metadata"]["firmware"], "1.1.0");

    // A board's messages are handled in the order it sent them: a burst of progress
    // reports then `done`, sent back to back, ends COMPLETED with the last progress (100)
    // as the latest value.
    let ota = json!({"url": "https://fw.example/esp/1.2.0.bin", "sha256": SHA, "size": 412304, "version": "1.2.0"});
    let (_, fw) = add(server, &board.id, "FIRMWARE_UPDATE", Some(ota)).await;
    board.next().await;
    let fw_id = fw["id"].as_i64().unwrap();
    server.until_state(fw_id, "IN_PROGRESS").await;
    for p in 1..=40 {
        board.publish("ota", json!({"id": fw_id, "state": "downloading", "progress": p}).to_string()).await;
    }
    board.publish("ota", json!({"id": fw_id, "state": "done", "progress": 100, "version": "1.2.0"}).to_string()).await;
    server.until_state(fw_id, "COMPLETED").await;
    for _ in 0..100 {
        if device(server, &board.id).await["metadata"]["firmware"] == "1.2.0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = device(server, &board.id).await;
    assert_eq!(d["metadata"]["firmware"], "1.2.0");
    assert_eq!(latest(&d, "ota.progress"), 100.0, "{d}");

    // Telemetry, JSON.
    board.publish("telemetry", r#"{"ts": 1763790000, "temp": 23.5, "hum": 41.2, "rssi": -61}"#).await;
    for _ in 0..100 {
        if latest(&device(server, &board.id).await, "temp") == 23.5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = device(server, &board.id).await;
    assert_eq!(latest(&d, "temp"), 23.5);
    assert_eq!(latest(&d, "rssi"), -61.0);
    board.task.abort();
}
e2e!(json_board_all_operations_and_telemetry, super::json_board);

async fn binary_board(server: &TestServer) {
    let mut board = Board::start(server, "binary").await;
    let (_, reboot) = add(server, &board.id, "REBOOT", None).await;
    let id = reboot["id"].as_i64().unwrap() as u32;
    let (topic, frame) = board.next().await;
    assert_eq!(topic, format!("drover/esp8266/{}/cmd/bin", board.id));
    let mut want = vec![1, 1];
    want.extend_from_slice(&id.to_be_bytes());
    want.push(0x01);
    assert_eq!(frame, want);

    // A truncated frame and an unknown frame type change nothing.
    board.publish("bin", vec![0x11, 0, 0]).await;
    board.publish("bin", vec![0x7f]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.until_state(id as i64, "IN_PROGRESS").await;

    let mut result = vec![0x11];
    result.extend_from_slice(&id.to_be_bytes());
    result.extend_from_slice(&[0, 100]);
    board.publish("bin", result).await;
    server.until_state(id as i64, "COMPLETED").await;

    let mut telemetry = vec![0x10];
    telemetry.extend_from_slice(&1_763_790_000u32.to_be_bytes());
    telemetry.push(2);
    telemetry.push(1);
    telemetry.extend_from_slice(&21.5f32.to_be_bytes());
    telemetry.push(5);
    telemetry.extend_from_slice(&3.25f32.to_be_bytes());
    board.publish("bin", telemetry).await;
    for _ in 0..100 {
        if latest(&device(server, &board.id).await, "vcc") == 3.25 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = device(server, &board.id).await;
    assert_eq!(latest(&d, "temp"), 21.5);
    assert_eq!(latest(&d, "vcc"), 3.25);
    board.task.abort();
}
e2e!(binary_board_commands_results_and_telemetry, super::binary_board);
