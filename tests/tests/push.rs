//! Push over MQTT end to end: devices are real MQTT clients (rumqttc, and the mosquitto
//! command-line clients), on the embedded broker and on the external mosquitto.

use drover_tests::{TestServer, e2e, unique};
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

async fn enroll(server: &TestServer, id: &str) -> String {
    server.enroll_android(id).await
}

async fn ring(server: &TestServer, id: &str) -> i64 {
    server.add_operation("android", id, "DEVICE_RING", None).await
}

enum Seen {
    Publish(String, Vec<u8>),
    SubAck(Vec<SubscribeReasonCode>),
    UnsubAck,
}

/// A device as an MQTT client library sees it.
struct Device {
    client: AsyncClient,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
    /// The broker's CONNACK said `session_present`.
    resumed: bool,
}

impl Device {
    async fn connect(port: u16, client_id: &str, login: Option<(&str, &str)>) -> Result<Device, String> {
        Device::connect_session(port, client_id, login, true).await
    }

    /// `clean: false` asks the broker for a persistent session.
    async fn connect_session(
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
        clean: bool,
    ) -> Result<Device, String> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_session(clean);
        if let Some((u, p)) = login {
            options.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, seen) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(Ok(a.session_present));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Seen::Publish(p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = tx.send(Seen::SubAck(s.return_codes));
                    }
                    Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                        let _ = tx.send(Seen::UnsubAck);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(Err(e.to_string()));
                        }
                        return;
                    }
                }
            }
        });
        let resumed = tokio::time::timeout(WAIT, ready).await.map_err(|_| "no CONNACK".to_string())?.unwrap()?;
        Ok(Device { client, seen, task, resumed })
    }

    async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        loop {
            match tokio::time::timeout(WAIT, self.seen.recv()).await.expect("SUBACK in time").expect("connection open")
            {
                Seen::SubAck(codes) => return codes,
                Seen::Publish(..) | Seen::UnsubAck => {}
            }
        }
    }

    async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.unwrap();
        loop {
            match tokio::time::timeout(WAIT, self.seen.recv())
                .await
                .expect("UNSUBACK in time")
                .expect("connection open")
            {
                Seen::UnsubAck => return,
                Seen::Publish(..) | Seen::SubAck(_) => {}
            }
        }
    }

    /// The next message Drover pushed, as the Android agent's JSON.
    async fn next_push(&mut self) -> (String, Value) {
        loop {
            match tokio::time::timeout(WAIT, self.seen.recv()).await.expect("a push in time").expect("connection open")
            {
                Seen::Publish(topic, payload) => return (topic, serde_json::from_slice(&payload).unwrap()),
                Seen::SubAck(_) | Seen::UnsubAck => {}
            }
        }
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }

    /// Vanish without DISCONNECT, as a phone losing its network does.
    fn drop_connection(self) {
        self.task.abort();
    }
}

/// One value from `/metrics`.
async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server.admin(reqwest::Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{text}"))
}

fn completed(op: &Value) -> Vec<u8> {
    json!([{"id": op["id"], "code": op["code"], "type": op["type"], "status": "COMPLETED", "operationResponse": "rang"}])
        .to_string()
        .into_bytes()
}

/// A mosquitto command-line client (a third-party MQTT implementation); returns its exit
/// status and what it printed.
async fn mosquitto(tool: &str, port: u16, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(tool)
            .arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output(),
    )
    .await
    .expect("the mosquitto client finishes")
    .unwrap_or_else(|e| panic!("{tool} could not run ({e}): install the mosquitto-clients package"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn embedded_broker(server: &TestServer) {
    let port = server.mqtt.expect("the embedded broker runs").port();
    let (a, b) = ("358000000000001", "358000000000002");
    let (token_a, token_b) = (enroll(server, a).await, enroll(server, b).await);

    // Credentials: a wrong token, or someone else's identity with a real token, is refused.
    assert!(Device::connect(port, "x", Some(("android/358000000000001", "drv_dev_wrong"))).await.is_err());
    assert!(Device::connect(port, "x", Some(("android/358000000000002", &token_a))).await.is_err());
    assert!(Device::connect(port, "x", None).await.is_err());
    let (ok, said) = mosquitto(
        "mosquitto_pub",
        port,
        &["-u", "android/358000000000001", "-P", "nope", "-t", "drover/android/358000000000001/reply", "-m", "[]"],
    )
    .await;
    assert!(!ok, "{said}");

    // A device that is online gets its operation pushed at once, and answers on `reply`.
    let mut dev_a = Device::connect(port, "phone-a", Some(("android/358000000000001", &token_a))).await.unwrap();
    let codes = dev_a.subscribe("drover/android/358000000000001/operations").await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let op_a = ring(server, a).await;
    let (topic, pushed) = dev_a.next_push().await;
    assert_eq!(topic, "drover/android/358000000000001/operations");
    assert_eq!((pushed[0]["id"].as_i64(), pushed[0]["code"].as_str()), (Some(op_a), Some("DEVICE_RING")));
    let op = server.until_state(op_a, "IN_PROGRESS").await;
    assert_eq!(op["transitions"][0]["actor"], "delivery:push");
    dev_a.publish("drover/android/358000000000001/reply", completed(&pushed[0])).await;
    server.until_state(op_a, "COMPLETED").await;

    // Topic ACLs, tested with mosquitto's own clients: A may not read B's operations...
    let (ok, said) = mosquitto(
        "mosquitto_sub",
        port,
        &[
            "-u",
            "android/358000000000001",
            "-P",
            &token_a,
            "-t",
            "drover/android/358000000000002/operations",
            "-W",
            "3",
        ],
    )
    .await;
    assert!(said.contains("denied"), "{ok} {said}");
    let codes = dev_a.subscribe("drover/android/+/operations").await;
    assert_eq!(codes, vec![SubscribeReasonCode::Failure]);

    // ...and B, offline, keeps its operation PENDING.
    let op_b = ring(server, b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.operation(op_b).await["state"], "PENDING");
    // A publishing a result in B's name is cut off, and B's operation is untouched.
    let forged = json!([{"id": op_b, "code": "DEVICE_RING", "type": "COMMAND", "status": "COMPLETED"}]).to_string();
    let (ok, said) = mosquitto(
        "mosquitto_pub",
        port,
        &[
            "-u",
            "android/358000000000001",
            "-P",
            &token_a,
            "-q",
            "1",
            "-t",
            "drover/android/358000000000002/reply",
            "-m",
            &forged,
        ],
    )
    .await;
    assert!(!ok, "a forged publish must not be acknowledged: {said}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.operation(op_b).await["state"], "PENDING");

    // B comes online: its queue is pushed.
    let mut dev_b = Device::connect(port, "phone-b", Some(("android/358000000000002", &token_b))).await.unwrap();
    dev_b.subscribe("drover/android/358000000000002/operations").await;
    let (_, pushed) = dev_b.next_push().await;
    assert_eq!(pushed[0]["id"].as_i64(), Some(op_b));
    server.until_state(op_b, "IN_PROGRESS").await;
    // It vanishes before answering; when it is back, the unanswered operation comes again.
    dev_b.drop_connection();
    let mut dev_b = Device::connect(port, "phone-b", Some(("android/358000000000002", &token_b))).await.unwrap();
    dev_b.subscribe("drover/android/358000000000002/operations").await;
    let (_, again) = dev_b.next_push().await;
    assert_eq!(again[0]["id"].as_i64(), Some(op_b));
    dev_b.publish("drover/android/358000000000002/reply", completed(&again[0])).await;
    let done = server.until_state(op_b, "COMPLETED").await;
    // Delivered once (PENDING → IN_PROGRESS), completed once: the re-send changed nothing.
    assert_eq!(done["transitions"].as_array().unwrap().len(), 2, "{done}");

    // A malformed report changes nothing and the connection stays usable.
    let op_a2 = ring(server, a).await;
    let (_, pushed) = dev_a.next_push().await;
    dev_a.publish("drover/android/358000000000001/reply", b"{not json".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.operation(op_a2).await["state"], "IN_PROGRESS");
    dev_a.publish("drover/android/358000000000001/reply", completed(&pushed[0])).await;
    server.until_state(op_a2, "COMPLETED").await;
}
e2e!(embedded_broker, super::embedded_broker);

/// The external broker on this machine (mosquitto on 1883), when there is one.
async fn external_broker() -> Option<u16> {
    match tokio::net::TcpStream::connect("127.0.0.1:1883").await {
        Ok(_) => Some(1883),
        Err(_) => {
            eprintln!("NOTE: no MQTT broker on 127.0.0.1:1883: the external-broker test was skipped");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_mosquitto() {
    let Some(port) = external_broker().await else { return };
    let server = TestServer::start_with(drover_tests::Backend::Sqlite, |c| {
        c.broker = Some(format!("mqtt://127.0.0.1:{port}"));
    })
    .await;
    assert!(server.mqtt.is_none(), "no embedded broker with --broker");
    // Device ids unique per run: the broker is shared with other runs.
    let id = unique("ext").replace('_', "-");
    enroll(&server, &id).await;
    let op_id = ring(&server, &id).await;
    assert_eq!(server.operation(op_id).await["state"], "PENDING");

    let mut dev = Device::connect(port, &id, None).await.unwrap();
    dev.subscribe(&format!("drover/android/{id}/operations")).await;
    // The device says it is online (as it would after every connect). Drover's client may
    // still be subscribing, so say it again until the push comes.
    let mut pushed = None;
    for _ in 0..40 {
        dev.publish(&format!("drover/android/{id}/status"), b"online".to_vec()).await;
        if let Ok(Some(Seen::Publish(_, p))) = tokio::time::timeout(Duration::from_millis(500), dev.seen.recv()).await {
            pushed = Some(serde_json::from_slice::<Value>(&p).unwrap());
            break;
        }
    }
    let pushed = pushed.expect("the operation is pushed through mosquitto");
    assert_eq!(pushed[0]["id"].as_i64(), Some(op_id));
    dev.publish(&format!("drover/android/{id}/reply"), completed(&pushed[0])).await;
    server.until_state(op_id, "COMPLETED").await;
    server.stop().await;
}

/// Nothing is lost when Drover (and with it the embedded broker) restarts: an operation
/// pushed but not answered, and one added while the device was away, both reach the
/// device when it reconnects to the new server.
async fn server_restart(server: TestServer) -> TestServer {
    let id = "358000000000003";
    let user = format!("android/{id}");
    let token = enroll(&server, id).await;
    let mut dev = Device::connect(server.mqtt.unwrap().port(), "phone-c", Some((&user, &token))).await.unwrap();
    dev.subscribe(&format!("drover/android/{id}/operations")).await;
    let first = ring(&server, id).await;
    let (_, pushed) = dev.next_push().await;
    assert_eq!(pushed[0]["id"].as_i64(), Some(first));
    server.until_state(first, "IN_PROGRESS").await;
    dev.drop_connection();

    let server = server.restart().await;
    let second = ring(&server, id).await;
    assert_eq!(server.operation(second).await["state"], "PENDING");
    let mut dev = Device::connect(server.mqtt.unwrap().port(), "phone-c", Some((&user, &token))).await.unwrap();
    dev.subscribe(&format!("drover/android/{id}/operations")).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (_, ops) = dev.next_push().await;
        for op in ops.as_array().unwrap() {
            seen.push(op["id"].as_i64().unwrap());
            dev.publish(&format!("drover/android/{id}/reply"), completed(op)).await;
        }
    }
    seen.sort();
    assert_eq!(seen, [first, second]);
    server.until_state(first, "COMPLETED").await;
    server.until_state(second, "COMPLETED").await;
    server
}

/// A device with a persistent session (clean_session = false) that vanishes keeps its
/// subscription in the broker: reconnected, without subscribing again, it gets what is
/// published on its topic. The router must hand the vanished connection's parked read back
/// to the saved session; the patched `DataLog::clean` (vendor/README.md) finds it through
/// the filters the connection was parked on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_keeps_its_subscription_across_a_drop() {
    let server = TestServer::start(drover_tests::Backend::Sqlite).await;
    let port = server.mqtt.expect("the embedded broker runs").port();
    let id = "358000000000077";
    let token = enroll(&server, id).await;
    let login = Some(("android/358000000000077", token.as_str()));
    let topic = "drover/android/358000000000077/operations";

    let mut dev = Device::connect_session(port, "phone-77", login, false).await.unwrap();
    assert_eq!(dev.subscribe(topic).await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    // Caught up with its (empty) topic, the connection waits in the router for data.
    tokio::time::sleep(Duration::from_millis(300)).await;
    dev.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another device connects in between and takes the router's freed connection slot: a
    // read left parked under that slot could feed it the first one's topic.
    let other = "358000000000078";
    let other_token = enroll(&server, other).await;
    let mut bystander =
        Device::connect(port, "phone-78", Some(("android/358000000000078", other_token.as_str()))).await.unwrap();
    bystander.subscribe("drover/android/358000000000078/operations").await;

    let mut dev = Device::connect_session(port, "phone-77", login, false).await.unwrap();
    dev.publish(topic, b"[]".to_vec()).await;
    let (got, payload) = dev.next_push().await;
    assert_eq!((got.as_str(), payload), (topic, json!([])));
    let leaked = tokio::time::timeout(Duration::from_millis(500), bystander.seen.recv()).await;
    assert!(leaked.is_err(), "another device's message reached the bystander");

    // The resumed session has not subscribed again (it need not): Drover counts the device
    // online all the same and pushes its operation at once.
    let op = ring(&server, id).await;
    let (got, pushed) = dev.next_push().await;
    assert_eq!((got.as_str(), pushed[0]["id"].as_i64()), (topic, Some(op)));
    assert_eq!(server.until_state(op, "IN_PROGRESS").await["transitions"][0]["actor"], "delivery:push");
    server.stop().await;
}

/// A device is reachable on the embedded broker only while a session of its holds a
/// subscription: a resumed persistent session that never subscribed is not (a push to it
/// would reach nobody), and neither is one that unsubscribed. What is added meanwhile stays
/// PENDING and goes out when the device subscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reachable_only_while_subscribed() {
    let server = TestServer::start(drover_tests::Backend::Sqlite).await;
    let port = server.mqtt.expect("the embedded broker runs").port();
    let id = "358000000000079";
    let token = enroll(&server, id).await;
    let login = Some(("android/358000000000079", token.as_str()));
    let topic = "drover/android/358000000000079/operations";

    let dev = Device::connect_session(port, "phone-79", login, false).await.unwrap();
    assert!(!dev.resumed);
    dev.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut dev = Device::connect_session(port, "phone-79", login, false).await.unwrap();
    assert!(dev.resumed, "the broker kept the persistent session");

    let op = ring(&server, id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.operation(op).await["state"], "PENDING", "pushed to a session without a subscription");
    assert_eq!(dev.subscribe(topic).await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let (got, pushed) = dev.next_push().await;
    assert_eq!((got.as_str(), pushed[0]["id"].as_i64()), (topic, Some(op)));
    server.until_state(op, "IN_PROGRESS").await;
    assert_eq!(metric(&server, "drover_push_online_devices").await, 1.0);
    assert_eq!(metric(&server, r#"drover_operations_sent_total{channel="mqtt"}"#).await, 1.0);

    dev.unsubscribe(topic).await;
    let later = ring(&server, id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.operation(later).await["state"], "PENDING", "pushed after the device unsubscribed");
    assert_eq!(metric(&server, "drover_push_online_devices").await, 0.0);
    dev.subscribe(topic).await;
    // Coming back sends what is unanswered first, then the queue: the first operation again.
    let mut seen = Vec::new();
    while !seen.contains(&later) {
        let (_, pushed) = dev.next_push().await;
        seen.extend(pushed.as_array().unwrap().iter().filter_map(|o| o["id"].as_i64()));
    }
    assert!(seen.contains(&op), "the unanswered operation is sent again: {seen:?}");
    server.stop().await;
}

/// Two devices whose identity and client id join to the same text (`A:x` + `c` and `A` +
/// `x:c`) get two sessions: the second cannot resume the first's persistent session, with
/// its subscription and the pushes queued in it (issue 21, item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_names_of_two_devices_never_collide() {
    let server = TestServer::start(drover_tests::Backend::Sqlite).await;
    let port = server.mqtt.expect("the embedded broker runs").port();
    let (victim, attacker) = ("35800000000:x", "35800000000");
    let victim_token = enroll(&server, victim).await;
    let attacker_token = enroll(&server, attacker).await;
    let topic = format!("drover/android/{victim}/operations");

    let victim_login = format!("android/{victim}");
    let mut dev = Device::connect_session(port, "c", Some((&victim_login, &victim_token)), false).await.unwrap();
    assert_eq!(dev.subscribe(&topic).await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    dev.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let attacker_login = format!("android/{attacker}");
    let mut thief =
        Device::connect_session(port, "x:c", Some((&attacker_login, &attacker_token)), false).await.unwrap();
    assert!(!thief.resumed, "the attacker resumed the victim's persistent session");
    // The victim publishes on its own topic from a second client (mosquitto_pub): the
    // message waits in its persistent session, and must not reach the attacker.
    let (ok, out) = mosquitto(
        "mosquitto_pub",
        port,
        &["-i", "second", "-u", &victim_login, "-P", &victim_token, "-q", "1", "-t", &topic, "-m", "[]"],
    )
    .await;
    assert!(ok, "{out}");
    let leaked = tokio::time::timeout(Duration::from_millis(700), thief.seen.recv()).await;
    assert!(leaked.is_err(), "the victim's message reached the attacker's session");

    // The victim's own session is still there for it.
    let dev = Device::connect_session(port, "c", Some((&victim_login, &victim_token)), false).await.unwrap();
    assert!(dev.resumed, "the victim's persistent session was kept");
    server.stop().await;
}

/// Revoking a device's credentials ends its live MQTT connection at once, and so does
/// removing it, which also drops its persistent session (issue 21, item 5). A third-party
/// client (mosquitto_sub) is the device; it is left to reconnect as it would.
async fn revocation_ends_live_sessions(server: &TestServer) {
    let port = server.mqtt.expect("the embedded broker runs").port();
    let id = format!("3580000{}", std::process::id() % 100_000_000);
    let token = enroll(server, &id).await;
    let login = format!("android/{id}");
    let topic = format!("drover/android/{id}/operations");
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", &login, "-P", &token])
        .args(["-i", "phone", "-q", "1", "-t", &topic, "-v"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs: install the mosquitto-clients package");
    // Online: a push reaches it.
    for _ in 0..100 {
        if metric(server, "drover_push_online_devices").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = ring(server, &id).await;
    server.until_state(first, "IN_PROGRESS").await;

    let r = server
        .admin(reqwest::Method::POST, &format!("/api/v1/devices/android/{id}/revoke-credentials"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The connection is cut; mosquitto_sub's reconnection is refused, and it gives up.
    let exit = tokio::time::timeout(WAIT, sub.wait()).await.expect("mosquitto_sub was disconnected").unwrap();
    assert!(!exit.success(), "{exit:?}");
    assert_eq!(metric(server, "drover_push_online_devices").await, 0.0);
    let later = ring(server, &id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.operation(later).await["state"], "PENDING", "pushed to a revoked device");
    let login = Some((login.as_str(), token.as_str()));
    assert!(Device::connect(port, "phone", login).await.is_err(), "a revoked credential connected");

    // Removed: its persistent session goes with it.
    let other = format!("3590000{}", std::process::id() % 100_000_000);
    let token = enroll(server, &other).await;
    let other_login = format!("android/{other}");
    let login = Some((other_login.as_str(), token.as_str()));
    let mut dev = Device::connect_session(port, "tablet", login, false).await.unwrap();
    dev.subscribe(&format!("drover/android/{other}/operations")).await;
    let r = server.admin(reqwest::Method::DELETE, &format!("/api/v1/devices/android/{other}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(seen) = dev.seen.recv().await {
            drop(seen);
        }
    })
    .await;
    assert!(closed.is_ok(), "the removed device's connection stayed up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Whoever enrolls the id next starts with no session of the old device's.
    let token = enroll(server, &other).await;
    let login = Some((other_login.as_str(), token.as_str()));
    let dev = Device::connect_session(port, "tablet", login, false).await.unwrap();
    assert!(!dev.resumed, "the removed device's persistent session passed to the new one");
}
e2e!(revocation_ends_live_sessions, super::revocation_ends_live_sessions);

mod server_restart {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let server = drover_tests::TestServer::start(drover_tests::Backend::Sqlite).await;
        super::server_restart(server).await.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(backend) = drover_tests::Backend::postgres() else { return };
        let server = drover_tests::TestServer::start(backend).await;
        super::server_restart(server).await.stop().await;
    }
}

/// A mosquitto of the test's own (the real broker binary), configured the way
/// docs/delivery.md tells operators to: password file with the devices' tokens and the
/// one-line ACL pattern. Stopped and started again on the same port to test a broker restart.
struct Mosquitto {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<tokio::process::Child>,
}

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

impl Mosquitto {
    /// Configure a broker on `port` for `users` (name, password).
    fn configure(port: u16, users: &[(&str, &str)]) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        for (i, (user, password)) in users.iter().enumerate() {
            let mut cmd = std::process::Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd.arg("-b").arg(&passwd).arg(user).arg(password).status().unwrap().success();
            assert!(ok, "mosquitto_passwd for {user}");
        }
        let acl = dir.path().join("acl");
        // As docs/delivery.md and docs/events.md say.
        let rules = "user drover\ntopic readwrite drover/#\ntopic write drover-events/#\n\n\
                     user siem\ntopic read drover-events/#\n\npattern readwrite drover/%u/#\n";
        std::fs::write(&acl, rules).unwrap();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\nuser root\n",
            passwd.display(),
            acl.display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        Mosquitto { dir, port, child: None }
    }

    async fn start(&mut self) {
        let child = tokio::process::Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("mosquitto did not start listening on {}", self.port);
    }

    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }
}

/// Through an external mosquitto set up as the docs say: a device cannot subscribe to
/// another device's topics (the broker's ACL), an operation added while the broker is
/// down is pushed once the broker and the device are back, and the event feed reaches the
/// user the ACL lets read it and no device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_acl_and_restart() {
    // Device ids are fixed here: this broker is the test's own.
    let (a, b) = ("358000000000010", "358000000000011");
    // Drover first (it waits for the broker), so the devices' tokens are known for the
    // broker's password file.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    if !std::path::Path::new(MOSQUITTO).exists() {
        eprintln!("NOTE: {MOSQUITTO} is not installed: the mosquitto ACL and restart test was skipped");
        return;
    }
    let server = TestServer::start_with(drover_tests::Backend::Sqlite, |c| {
        c.broker = Some(format!("mqtt://drover:service-secret@127.0.0.1:{port}"));
        c.mqtt_events = true;
    })
    .await;
    let (token_a, token_b) = (enroll(&server, a).await, enroll(&server, b).await);
    let (user_a, user_b) = (format!("android/{a}"), format!("android/{b}"));
    let mut broker = Mosquitto::configure(
        port,
        &[("drover", "service-secret"), (&user_a, &token_a), (&user_b, &token_b), ("siem", "siem-secret")],
    );
    broker.start().await;
    let mut siem = Device::connect(port, "siem", Some(("siem", "siem-secret"))).await.unwrap();
    siem.subscribe("drover-events/#").await;

    // A wrong password is refused by the broker.
    assert!(Device::connect(port, "intruder", Some((&user_a, "not-the-token"))).await.is_err());
    // Device B tries to read A's operations. Mosquitto may grant the SUBSCRIBE and check
    // read access per message instead: what counts is that nothing of A's reaches B.
    let mut dev_b = Device::connect(port, "phone-b", Some((&user_b, &token_b))).await.unwrap();
    dev_b.subscribe(&format!("drover/android/{a}/operations")).await;
    dev_b.subscribe("drover-events/#").await;

    let mut dev_a = Device::connect(port, "phone-a", Some((&user_a, &token_a))).await.unwrap();
    assert_eq!(
        dev_a.subscribe(&format!("drover/android/{a}/operations")).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let first_op = ring(&server, a).await;
    let pushed = announce_until_pushed(&mut dev_a, a).await;
    assert_eq!(pushed[0]["id"].as_i64(), Some(first_op));
    // The feed: the user the ACL lets read it hears the activity (B, above, hears nothing).
    let added = loop {
        match tokio::time::timeout(WAIT, siem.seen.recv()).await.expect("an event on the feed") {
            Some(Seen::Publish(topic, body)) if topic == "drover-events/activity.added" => {
                break serde_json::from_slice::<Value>(&body).unwrap();
            }
            Some(_) => continue,
            None => panic!("the feed's subscriber was disconnected"),
        }
    };
    assert_eq!(added["data"]["data"]["code"], "DEVICE_RING");
    // B writes a forged result on A's reply topic: the broker drops it.
    dev_b.publish(&format!("drover/android/{a}/reply"), completed(&pushed[0])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.operation(first_op).await["state"], "IN_PROGRESS", "a forged result changed nothing");
    assert!(dev_b.seen.try_recv().is_err(), "B received nothing of A's");
    dev_a.publish(&format!("drover/android/{a}/reply"), completed(&pushed[0])).await;
    server.until_state(first_op, "COMPLETED").await;

    // The broker goes away; an operation added meanwhile stays PENDING.
    broker.stop().await;
    dev_a.drop_connection();
    dev_b.drop_connection();
    let second_op = ring(&server, a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.operation(second_op).await["state"], "PENDING");

    // Back (no persistence: sessions and subscriptions are gone). Drover reconnects and
    // resubscribes by itself; the device reconnects and says it is online.
    broker.start().await;
    let mut dev_a = Device::connect(port, "phone-a", Some((&user_a, &token_a))).await.unwrap();
    dev_a.subscribe(&format!("drover/android/{a}/operations")).await;
    let pushed = announce_until_pushed(&mut dev_a, a).await;
    assert_eq!(pushed[0]["id"].as_i64(), Some(second_op));
    dev_a.publish(&format!("drover/android/{a}/reply"), completed(&pushed[0])).await;
    server.until_state(second_op, "COMPLETED").await;
    server.stop().await;
    broker.stop().await;
}

/// Say `online` on the device's status topic until Drover pushes (Drover's client may still
/// be (re)subscribing when the first announcement goes out).
async fn announce_until_pushed(dev: &mut Device, id: &str) -> Value {
    for _ in 0..40 {
        dev.publish(&format!("drover/android/{id}/status"), b"online".to_vec()).await;
        if let Ok(Some(Seen::Publish(_, p))) = tokio::time::timeout(Duration::from_millis(500), dev.seen.recv()).await {
            return serde_json::from_slice::<Value>(&p).unwrap();
        }
    }
    panic!("nothing was pushed to {id}");
}

/// A device that holds its session on the embedded broker and publishes nothing stays
/// reachable: the unreachable sweep counts it as seen. One enrolled and not connected, as
/// silent, is marked; and so is the first once its connection is gone (issue 30).
async fn a_connected_silent_device_stays_reachable(server: &TestServer) {
    let port = server.mqtt.expect("the embedded broker runs").port();
    let (quiet, away) = ("358000000000081", "358000000000082");
    let token = enroll(server, quiet).await;
    enroll(server, away).await;
    let mut dev = Device::connect(port, "phone-81", Some(("android/358000000000081", token.as_str()))).await.unwrap();
    dev.subscribe("drover/android/358000000000081/operations").await;
    for _ in 0..100 {
        if metric(server, "drover_push_online_devices").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(server, "drover_push_online_devices").await, 1.0);
    server.sql("UPDATE devices SET last_seen_at = 0").await;
    let hour = Duration::from_secs(3600);
    drover::server::sweep_unreachable(&server.state, drover::store::now_ms(), hour).await.unwrap();
    let d = server.device("android", quiet).await;
    assert_eq!(d["status"], "active", "a connected device was marked unreachable: {d}");
    assert!(d["last_seen_at"].as_i64().unwrap() > 0, "{d}");
    assert_eq!(server.device("android", away).await["status"], "unreachable");

    dev.drop_connection();
    for _ in 0..200 {
        if metric(server, "drover_push_online_devices").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.sql(&format!("UPDATE devices SET last_seen_at = 0 WHERE device_id = '{quiet}'")).await;
    drover::server::sweep_unreachable(&server.state, drover::store::now_ms(), hour).await.unwrap();
    assert_eq!(server.device("android", quiet).await["status"], "unreachable");
}
e2e!(a_connected_silent_device_stays_reachable, super::a_connected_silent_device_stays_reachable);
