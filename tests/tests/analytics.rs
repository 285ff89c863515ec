//! Telemetry analytics end to end (docs/analytics.md), on SQLite and PostgreSQL: Android
//! phones report over HTTP and an ESP8266 board over MQTT (a real MQTT client on the
//! embedded broker); the rollups match a naive recomputation from the raw points; a
//! metric over a tag; a fence crossed in and out through a jittery boundary raises each
//! event once; a speed alert from positions alone; a threshold with a minimum duration
//! and hysteresis; an anomaly on an injected spike and none on the noise around it;
//! alerts resolve; and a restart raises no open alert twice.

use drover::analytics::synthetic;
use drover_tests::{Backend, TestServer, e2e};
use reqwest::{Method, StatusCode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;

async fn call(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut r = server.admin(method, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(server: &TestServer, path: &str) -> Value {
    let (s, v) = call(server, Method::GET, path, None).await;
    assert_eq!(s, StatusCode::OK, "{path}: {v}");
    v
}

struct Phone {
    id: String,
    token: String,
}

impl Phone {
    async fn enroll(server: &TestServer, id: &str) -> Phone {
        Phone { id: id.into(), token: server.enroll_android(id).await }
    }

    /// One telemetry report in the Android agent's JSON.
    async fn report(&self, server: &TestServer, body: Value) {
        let r = server
            .http
            .post(server.url(&format!("/agent/v1/android/devices/{}/telemetry", self.id)))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }

    /// A position fix at `at`.
    async fn at(&self, server: &TestServer, at: i64, lat: f64, lon: f64) {
        self.report(server, json!({"timestamp": at, "location": {"lat": lat, "lon": lon, "accuracy": 5}})).await;
    }
}

/// Every raw point of a device and metric, from the paged telemetry API.
async fn raw(server: &TestServer, device: &str, name: &str) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut before = String::new();
    loop {
        let page = get(server, &format!("/api/v1/devices/{device}/telemetry?name={name}&limit=1000{before}")).await;
        for p in page["items"].as_array().unwrap() {
            // Booleans count as 0 and 1.
            let v = p["value"].as_f64().or_else(|| p["value"].as_bool().map(|b| f64::from(u8::from(b)))).unwrap();
            out.push((p["at"].as_i64().unwrap(), v));
        }
        match page["next_before"].as_i64() {
            Some(b) => before = format!("&before={b}"),
            None => break,
        }
    }
    out.reverse(); // arrival order
    out
}

/// (count, min, max, mean, last) per bucket, the naive way: arrival order, `last` the
/// newest time (the later arrival of equal times).
fn naive(points: &[(i64, f64)], width: i64) -> BTreeMap<i64, (i64, f64, f64, f64, f64)> {
    let mut m: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
    for &(at, v) in points {
        m.entry(at.div_euclid(width) * width).or_default().push((at, v));
    }
    m.into_iter()
        .map(|(b, ps)| {
            let n = ps.len() as i64;
            let min = ps.iter().map(|p| p.1).fold(f64::MAX, f64::min);
            let max = ps.iter().map(|p| p.1).fold(f64::MIN, f64::max);
            let mean = ps.iter().map(|p| p.1).sum::<f64>() / n as f64;
            let mut last = ps[0];
            for p in &ps {
                if p.0 >= last.0 {
                    last = *p;
                }
            }
            (b, (n, min, max, mean, last.1))
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

async fn series_matches_raw(server: &TestServer, device: &str, name: &str, from: i64, to: i64) {
    let points = raw(server, device, name).await;
    assert!(points.len() >= 5, "{device} {name}: {points:?}");
    for (resolution, width) in [("minute", MINUTE), ("hour", HOUR)] {
        let s = get(
            server,
            &format!(
                "/api/v1/devices/{device}/telemetry/series?name={name}&resolution={resolution}&from={from}&to={to}"
            ),
        )
        .await;
        let got: BTreeMap<i64, (i64, f64, f64, f64, f64)> = s["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let f = |k: &str| b[k].as_f64().unwrap();
                (b["at"].as_i64().unwrap(), (b["count"].as_i64().unwrap(), f("min"), f("max"), f("mean"), f("last")))
            })
            .collect();
        let want = naive(&points, width);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{device} {name} {resolution}");
        for (b, w) in &want {
            let g = got[b];
            assert!(
                g.0 == w.0 && close(g.1, w.1) && close(g.2, w.2) && close(g.3, w.3) && close(g.4, w.4),
                "{device} {name} {resolution} bucket {b}: got {g:?}, naive {w:?}"
            );
        }
    }
}

/// An ESP8266 board on the embedded broker, publishing telemetry.
struct Board {
    id: String,
    client: AsyncClient,
    acks: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Board {
    async fn start(server: &TestServer, chip: &str) -> Board {
        let body = json!({"chip_id": chip, "model": "ESP-12F", "firmware": "1.0.3", "encoding": "json"});
        let r = server.http.post(server.url("/agent/v1/esp8266/enroll")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        let id = v["device_id"].as_str().unwrap().to_string();
        let mut options = MqttOptions::new(id.clone(), "127.0.0.1", server.mqtt.unwrap().port());
        options.set_credentials(format!("esp8266/{id}"), v["access_token"].as_str().unwrap());
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(e) = eventloop.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = e {
                    let _ = tx.send(());
                }
            }
        });
        Board { id, client, acks }
    }

    /// Publish `temp` at `ts` (seconds) and wait for the broker's acknowledgement.
    async fn temp(&mut self, ts: i64, temp: f64) {
        let body = json!({"ts": ts, "temp": temp});
        self.client
            .publish(format!("drover/esp8266/{}/telemetry", self.id), QoS::AtLeastOnce, false, body.to_string())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.acks.recv()).await.expect("PUBACK in time");
    }
}

/// Wait until the device has `n` points of `name` stored (MQTT is processed after the
/// broker's acknowledgement).
async fn until_points(server: &TestServer, device: &str, name: &str, n: usize) {
    for _ in 0..300 {
        if raw(server, device, name).await.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{device} never had {n} points of {name}");
}

async fn alerts(server: &TestServer, rule: &str) -> Vec<Value> {
    get(server, &format!("/api/v1/alerts?rule={rule}")).await["items"].as_array().unwrap().clone()
}

async fn rule(server: &TestServer, spec: Value) {
    let (s, v) = call(server, Method::POST, "/api/v1/alert-rules", Some(spec.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{spec}: {v}");
}

/// Events of `type` about `rule`, from the durable log.
async fn events(server: &TestServer, kind: &str, rule: &str) -> Vec<Value> {
    let page = get(server, &format!("/api/v1/events?type={kind}&limit=1000")).await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            serde_json::from_str::<Value>(e["data"].as_str().unwrap_or("null")).unwrap_or_default()["rule"] == rule
                || e["data"]["rule"] == rule
        })
        .cloned()
        .collect()
}

async fn analytics(server: &TestServer) {
    let now = drover::store::now_ms();
    let base = (now / HOUR - 3) * HOUR; // three hours ago, on the hour

    // ---- Rollups from HTTP (Android) match a naive recomputation.
    let a = Phone::enroll(server, "358240051111110").await;
    let b = Phone::enroll(server, "358240051111128").await;
    let c = Phone::enroll(server, "358240051111136").await;
    for (i, phone) in [&a, &b, &c].into_iter().enumerate() {
        for k in 0..12i64 {
            // Points across minutes and two hours; several in one minute.
            let at = base + k * 17 * MINUTE / 2 + (k % 3) * 1000;
            phone
                .report(server, json!({"timestamp": at, "battery": 90 - k - i as i64 * 10, "charging": k % 2 == 0}))
                .await;
        }
        // A late point: counts in its bucket, but is not its `last`.
        phone.report(server, json!({"timestamp": base + 1000, "battery": 7})).await;
    }
    for phone in [&a, &b] {
        series_matches_raw(server, &format!("android/{}", phone.id), "battery", base, now + 1).await;
    }
    series_matches_raw(server, &format!("android/{}", a.id), "charging", base, now + 1).await;
    // Bad ranges are refused with the problem named.
    let (s, v) = call(
        server,
        Method::GET,
        &format!("/api/v1/devices/android/{}/telemetry/series?name=battery&from=10&to=5", a.id),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("before"), "{v}");
    // A negative time is refused, not an overflow.
    let (s, v) =
        call(server, Method::GET, &format!("/api/v1/telemetry/metrics?name=battery&from={}&to=5", i64::MIN), None)
            .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("since the epoch"), "{v}");

    // ---- From MQTT (ESP8266), the same.
    let mut board = Board::start(server, "00a1b2c3").await;
    let series =
        synthetic::series(42, &synthetic::Shape { len: 70, spike_rate: 0.0, shift_rate: 0.0, ..Default::default() });
    let t0 = base / 1000 + 3600;
    for (k, v) in series.values.iter().enumerate() {
        board.temp(t0 + k as i64 * 20, *v).await;
    }
    let board_key = format!("esp8266/{}", board.id);
    until_points(server, &board_key, "temp", 70).await;
    series_matches_raw(server, &board_key, "temp", base, now + 1).await;

    // ---- A metric over a tag: mean battery of the tagged phones per hour.
    for phone in [&a, &b] {
        let (s, v) = call(
            server,
            Method::PUT,
            &format!("/api/v1/devices/android/{}/tags", phone.id),
            Some(json!({"tags": ["warehouse-3"]})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let m = get(
        server,
        &format!("/api/v1/telemetry/metrics?name=battery&resolution=hour&tag=warehouse-3&from={base}&to={}", now + 1),
    )
    .await;
    let mut by_hour: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for phone in [&a, &b] {
        for (at, v) in raw(server, &format!("android/{}", phone.id), "battery").await {
            by_hour.entry(at / HOUR * HOUR).or_default().push(v);
        }
    }
    let buckets = m["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), by_hour.len(), "{m}");
    for (bucket, (hour, vs)) in buckets.iter().zip(&by_hour) {
        assert_eq!(bucket["at"].as_i64().unwrap(), *hour);
        assert_eq!(bucket["devices"], 2, "the untagged phone is not counted: {bucket}");
        assert_eq!(bucket["count"].as_i64().unwrap(), vs.len() as i64);
        assert!(close(bucket["mean"].as_f64().unwrap(), vs.iter().sum::<f64>() / vs.len() as f64), "{bucket}");
    }
    let all =
        get(server, &format!("/api/v1/telemetry/metrics?name=battery&device_type=android&from={base}&to={}", now + 1))
            .await;
    assert_eq!(all["buckets"][0]["devices"], 3, "{all}");
    let (s, _) = call(server, Method::GET, "/api/v1/telemetry/metrics?name=battery&group=nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // ---- A geo-fence crossed in and out through a jittery boundary: each event once.
    // The depot: 200 m around (6.9271, 79.8612). 0.0009° of latitude is ~100 m.
    rule(
        server,
        json!({
            "name": "depot", "kind": "geofence", "applies_to": {"tags": ["warehouse-3"]},
            "shape": {"circle": {"lat": 6.9271, "lon": 79.8612, "radius_m": 200}}, "hysteresis_m": 25
        }),
    )
    .await;
    let north = |m: f64| 6.9271 + m / 111_195.0;
    let t = base + 2 * HOUR;
    // Outside, then jitter around the boundary from outside (±15 m: within the margin).
    let track = [
        500.0, 400.0, 210.0, 190.0, 212.0, 188.0, 150.0, 50.0, 0.0, 185.0, 215.0, 190.0, 212.0, 260.0, 400.0, 215.0,
        185.0, 600.0,
    ];
    for (k, m) in track.iter().enumerate() {
        a.at(server, t + k as i64 * 10_000, north(*m), 79.8612).await;
    }
    let depot = alerts(server, "depot").await;
    assert_eq!(depot.len(), 1, "one entry despite the jitter: {depot:#?}");
    assert_eq!(depot[0]["state"], "resolved");
    assert_eq!(depot[0]["resolution"], "cleared");
    assert_eq!(depot[0]["device"], format!("android/{}", a.id));
    assert_eq!(depot[0]["detail"]["crossing"], "enter");
    // Entered at 150 m (the first fix 25 m inside), left at 260 m (25 m outside).
    assert_eq!(depot[0]["opened_at"].as_i64().unwrap(), t + 6 * 10_000);
    assert_eq!(depot[0]["resolved_at"].as_i64().unwrap(), t + 13 * 10_000);
    assert_eq!(events(server, "alert.opened", "depot").await.len(), 1);
    assert_eq!(events(server, "alert.resolved", "depot").await.len(), 1);
    // The untagged phone crossing it raises nothing.
    for (k, m) in [500.0, 0.0, 500.0].iter().enumerate() {
        c.at(server, t + k as i64 * 10_000, north(*m), 79.8612).await;
    }
    assert_eq!(alerts(server, "depot").await.len(), 1);
    // Tagged now, it is judged by the fence from the next fix after the change settles.
    let (s, v) = call(
        server,
        Method::PUT,
        &format!("/api/v1/devices/android/{}/tags", c.id),
        Some(json!({"tags": ["warehouse-3"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    tokio::time::sleep(drover::analytics::engine::SETTLE * 3).await;
    c.at(server, t + 100_000, north(0.0), 79.8612).await;
    let depot = alerts(server, "depot").await;
    assert_eq!(
        (depot.len(), depot[0]["device"].as_str()),
        (2, Some(format!("android/{}", c.id).as_str())),
        "{depot:#?}"
    );

    // ---- A speed alert from positions alone (no reported speed): 1 km in 20 s.
    rule(
        server,
        json!({"name": "speeding", "kind": "speed", "limit_kmh": 80, "applies_to": {"device_types": ["android"]}}),
    )
    .await;
    let t = base + 2 * HOUR + 30 * MINUTE;
    b.at(server, t, 7.0, 80.0).await;
    b.at(server, t + 20_000, 7.0 + 1000.0 / 111_195.0, 80.0).await; // ~180 km/h
    let sp = alerts(server, "speeding").await;
    assert_eq!(sp.len(), 1, "{sp:#?}");
    assert_eq!(sp[0]["state"], "open");
    assert_eq!(sp[0]["metric"], "speed");
    let v = sp[0]["value"].as_f64().unwrap();
    assert!((170.0..185.0).contains(&v), "{v}");
    b.at(server, t + 40_000, 7.0 + 1050.0 / 111_195.0, 80.0).await; // ~9 km/h
    assert_eq!(alerts(server, "speeding").await[0]["state"], "resolved");

    // ---- A threshold: battery below 20 for a minute, cleared at 25.
    rule(
        server,
        json!({"name": "low-battery", "kind": "threshold", "metric": "battery", "below": 20,
        "hysteresis": 5, "for_secs": 60, "applies_to": {"devices": [format!("android/{}", c.id)]}}),
    )
    .await;
    let t = base + 2 * HOUR + 45 * MINUTE;
    for (k, (dt, v)) in [(0, 19), (30, 18), (61, 17), (90, 22), (120, 26)].iter().enumerate() {
        c.report(server, json!({"timestamp": t + dt * 1000, "battery": v})).await;
        let open = alerts(server, "low-battery").await;
        match k {
            0 | 1 => assert!(open.is_empty(), "not for a minute yet: {open:#?}"),
            2 | 3 => assert_eq!(open[0]["state"], "open", "{open:#?}"),
            _ => assert_eq!(open[0]["state"], "resolved", "{open:#?}"),
        }
    }

    // ---- An anomaly on an injected spike; nothing on the noise around it (MQTT).
    rule(
        server,
        json!({"name": "temp-anomaly", "kind": "anomaly", "metric": "temp",
        "applies_to": {"device_types": ["esp8266"]}, "warmup": 20, "window": 30}),
    )
    .await;
    let mut board2 = Board::start(server, "00d4e5f6").await;
    let noise =
        synthetic::series(7, &synthetic::Shape { len: 80, spike_rate: 0.0, shift_rate: 0.0, ..Default::default() });
    let t0 = (base + 2 * HOUR) / 1000;
    for (k, v) in noise.values[..60].iter().enumerate() {
        board2.temp(t0 + k as i64 * 10, *v).await;
    }
    board2.temp(t0 + 600, noise.values[60] + 4.0).await; // 16 noise deviations up
    for (k, v) in noise.values[61..].iter().enumerate() {
        board2.temp(t0 + 610 + k as i64 * 10, *v).await;
    }
    let key2 = format!("esp8266/{}", board2.id);
    until_points(server, &key2, "temp", 80).await;
    let an = alerts(server, "temp-anomaly").await;
    assert_eq!(an.len(), 1, "the spike alone: {an:#?}");
    assert_eq!(an[0]["device"], key2, "the first board's series had no spike either");
    assert_eq!(an[0]["detail"]["anomaly"], "spike");
    assert_eq!(an[0]["opened_at"].as_i64().unwrap(), (t0 + 600) * 1000);
    assert_eq!(an[0]["state"], "resolved");
    // An `ignore` silences the metric for the board.
    rule(
        server,
        json!({"name": "quiet-board", "kind": "ignore", "metric": "temp", "applies_to": {"devices": [key2.clone()]}}),
    )
    .await;
    board2.temp(t0 + 900, 500.0).await;
    until_points(server, &key2, "temp", 81).await;
    assert_eq!(alerts(server, "temp-anomaly").await.len(), 1);

    // ---- Bad rules are refused, naming the problem.
    for (bad, says) in [
        (json!({"name": "x", "kind": "geofence", "shape": {"polygon": {"points": [[0, 0], [1, 1]]}}}), "3 to"),
        (json!({"name": "x", "kind": "threshold", "metric": "battery"}), "one of `above` or `below`"),
        (json!({"name": "x", "kind": "speed", "limit_kmh": 80, "metric": "speed"}), "unknown field `metric`"),
        (json!({"name": "x", "kind": "warp"}), "alert rule"),
        (json!({"name": "x y", "kind": "speed", "limit_kmh": 80}), "rule name"),
        (json!({"name": "x", "kind": "speed", "limit_kmh": 80, "applies_to": {"groups": ["none"]}}), "does not exist"),
    ] {
        let (s, v) = call(server, Method::POST, "/api/v1/alert-rules", Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{bad}: {v}");
    }
    let (s, _) = call(
        server,
        Method::POST,
        "/api/v1/alert-rules",
        Some(json!({"name": "depot", "kind": "speed", "limit_kmh": 9})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let listed = get(server, "/api/v1/alert-rules").await;
    assert_eq!(listed.as_array().unwrap().len(), 5, "{listed}");

    // ---- Removing a rule resolves its open alerts.
    a.at(server, base + 3 * HOUR - 60_000, north(0.0), 79.8612).await;
    let open = get(server, "/api/v1/alerts?rule=depot&state=open").await;
    assert_eq!(open["items"].as_array().unwrap().len(), 2, "both phones inside: {open}");
    let id = open["items"][0]["id"].as_i64().unwrap();
    let (s, v) = call(server, Method::DELETE, "/api/v1/alert-rules/depot", None).await;
    assert_eq!((s, v["resolved_alerts"].as_i64()), (StatusCode::OK, Some(2)), "{v}");
    let gone = get(server, &format!("/api/v1/alerts/{id}")).await;
    assert_eq!((gone["state"].as_str(), gone["resolution"].as_str()), (Some("resolved"), Some("rule-removed")));
}

/// An open alert is read back at start: after a restart, a device still inside the fence
/// raises nothing new, and its exit resolves the alert opened before.
async fn restart(backend: Backend) {
    let server = TestServer::start(backend).await;
    let a = Phone::enroll(&server, "358240051111144").await;
    rule(
        &server,
        json!({"name": "site", "kind": "geofence", "shape": {"circle": {"lat": 1.0, "lon": 1.0, "radius_m": 100}}}),
    )
    .await;
    let t = drover::store::now_ms() - HOUR;
    a.at(&server, t, 1.0, 1.0).await;
    assert_eq!(alerts(&server, "site").await[0]["state"], "open");
    let server = server.restart().await;
    a.at(&server, t + 10_000, 1.0, 1.0).await;
    let after = alerts(&server, "site").await;
    assert_eq!(after.len(), 1, "{after:#?}");
    a.at(&server, t + 20_000, 1.01, 1.0).await;
    let after = alerts(&server, "site").await;
    assert_eq!((after.len(), after[0]["state"].as_str()), (1, Some("resolved")), "{after:#?}");
    // A removed device's open alerts resolve with it.
    a.at(&server, t + 30_000, 1.0, 1.0).await;
    assert_eq!(alerts(&server, "site").await[0]["state"], "open");
    let (s, _) = call(&server, Method::DELETE, &format!("/api/v1/devices/android/{}", a.id), None).await;
    assert_eq!(s, StatusCode::OK);
    let after = alerts(&server, "site").await;
    assert_eq!(
        (after[0]["state"].as_str(), after[0]["resolution"].as_str()),
        (Some("resolved"), Some("device-removed"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_alerts_survive_a_restart_sqlite() {
    restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_alerts_survive_a_restart_postgres() {
    if let Some(b) = Backend::postgres() {
        restart(b).await;
    }
}

e2e!(analytics_end_to_end, super::analytics);
