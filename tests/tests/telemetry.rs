//! Telemetry end to end: an Android device reports over HTTP and over MQTT (a real MQTT
//! client on the embedded broker); every point is kept, the newest of each name is on
//! the device record, and bad reports change nothing. SQLite and PostgreSQL.

use drover_tests::{TestServer, e2e_with};
use reqwest::{Method, StatusCode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::time::Duration;

async fn enroll(server: &TestServer, id: &str) -> String {
    server.enroll_android(id).await
}

async fn get(server: &TestServer, path: &str) -> Value {
    let r = server.admin(Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

fn latest(device: &Value, name: &str) -> Value {
    device["telemetry"].as_array().unwrap().iter().find(|t| t["name"] == name).cloned().unwrap_or(Value::Null)
}

async fn telemetry(server: &TestServer) {
    let id = "359000000000001";
    let token = enroll(server, id).await;
    let post = |body: String| {
        server
            .http
            .post(server.url(&format!("/agent/v1/android/devices/{id}/telemetry")))
            .bearer_auth(&token)
            .body(body)
            .send()
    };
    // The real fixture: numbers, a boolean, text, a nested location.
    let fixture =
        std::fs::read_to_string(format!("{}/../plugins/android/fixtures/telemetry.json", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    assert_eq!(post(fixture).await.unwrap().status(), StatusCode::OK);
    let d = get(server, &format!("/api/v1/devices/android/{id}")).await;
    assert_eq!(latest(&d, "battery")["value"], 64);
    assert_eq!(latest(&d, "battery")["at"], 1763790000000i64);
    assert_eq!(latest(&d, "charging")["value"], false);
    assert_eq!(latest(&d, "network")["value"], "wifi");
    assert!(latest(&d, "location.lat")["value"].as_f64().is_some(), "{d}");

    // A later report moves the latest value; an older one (sent late) does not.
    assert_eq!(
        post(json!({"timestamp": 1763790060000i64, "battery": 61}).to_string()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        post(json!({"timestamp": 1763789000000i64, "battery": 99}).to_string()).await.unwrap().status(),
        StatusCode::OK
    );
    let d = get(server, &format!("/api/v1/devices/android/{id}")).await;
    assert_eq!(latest(&d, "battery")["value"], 61);
    // Every point is kept, last received first, in pages.
    let page = get(server, &format!("/api/v1/devices/android/{id}/telemetry?name=battery&limit=2")).await;
    let values: Vec<&Value> = page["items"].as_array().unwrap().iter().map(|p| &p["value"]).collect();
    assert_eq!(values, [&json!(99), &json!(61)]);
    let before = page["next_before"].as_i64().unwrap();
    let rest = get(server, &format!("/api/v1/devices/android/{id}/telemetry?name=battery&before={before}")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["value"], 64);

    // Malformed telemetry is refused with the problem named, and stores nothing.
    let r = post("{\"battery\": ".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "bad_device_message");
    let all = get(server, &format!("/api/v1/devices/android/{id}/telemetry")).await;
    let count = all["items"].as_array().unwrap().len();

    // Over MQTT, on the device's own `telemetry` topic.
    let port = server.mqtt.unwrap().port();
    let mut options = MqttOptions::new("t1", "127.0.0.1", port);
    options.set_credentials(format!("android/{id}"), token.clone());
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .publish(
            format!("drover/android/{id}/telemetry"),
            QoS::AtLeastOnce,
            false,
            json!({"timestamp": 1763790120000i64, "temperature": 31.5}).to_string(),
        )
        .await
        .unwrap();
    // Run the client until the broker acknowledged the publish.
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .expect("PUBACK in time");
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = latest(&get(server, &format!("/api/v1/devices/android/{id}")).await, "temperature");
        if !seen.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["value"], 31.5);
    let all = get(server, &format!("/api/v1/devices/android/{id}/telemetry")).await;
    assert_eq!(all["items"].as_array().unwrap().len(), count + 1);
}
/// The fixtures carry the times they were recorded at (2025). With the default 30-day
/// retention the server's first sweep may delete them mid-test, so keep them here.
fn keep_old_points(c: &mut drover::config::Config) {
    c.retention_days = 36_500;
}

e2e_with!(telemetry, super::keep_old_points, super::telemetry);
