//! Two replicas on one PostgreSQL and the machine's mosquitto (issue 30): operations added
//! through either replica reach devices by push whichever replica heard them come online,
//! none twice and none lost, and a device that said `offline` to one replica is not pushed
//! to by the other. Devices are real MQTT clients (rumqttc) on the external broker.
//!
//! PostgreSQL only (`DROVER_TEST_POSTGRES_URL`), and only with a broker on 127.0.0.1:1883:
//! replicas share a database, and an external broker is what several replicas push
//! through. Alone in its test binary: every Drover on that broker shares the
//! subscription group, so another test's server would take some of these devices' messages.

use drover_tests::{Backend, TestServer, unique};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

/// An Android device on the broker: what it was pushed arrives on `pushed`.
struct Device {
    id: String,
    client: AsyncClient,
    pushed: mpsc::UnboundedReceiver<Vec<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    async fn connect(port: u16, id: &str) -> Device {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, pushed) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(ops) = serde_json::from_slice::<Vec<Value>>(&p.payload) {
                            let _ = tx.send(ops);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        client.subscribe(format!("drover/android/{id}/operations"), QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(WAIT, subscribed).await.expect("SUBACK in time").unwrap();
        Device { id: id.to_string(), client, pushed, task }
    }

    async fn say(&self, status: &str) {
        let topic = format!("drover/android/{}/status", self.id);
        self.client.publish(topic, QoS::AtLeastOnce, false, status.as_bytes().to_vec()).await.unwrap();
    }

    /// Say `online` until something is pushed (Drover's clients may still be subscribing).
    async fn announce_until_pushed(&mut self) -> Vec<Value> {
        for _ in 0..40 {
            self.say("online").await;
            if let Ok(Some(ops)) = tokio::time::timeout(Duration::from_millis(500), self.pushed.recv()).await {
                return ops;
            }
        }
        panic!("nothing was pushed to {}", self.id);
    }

    /// Wait for operation `op` to be pushed, skipping re-sends of operations already done.
    async fn pushed_op(&mut self, op: i64, done: &[i64]) -> Value {
        loop {
            let ops = tokio::time::timeout(WAIT, self.pushed.recv())
                .await
                .unwrap_or_else(|_| panic!("operation {op} was never pushed to {}", self.id))
                .expect("connection open");
            for o in ops {
                match o["id"].as_i64() {
                    Some(id) if id == op => return o,
                    Some(id) if done.contains(&id) => {}
                    other => panic!("{} was pushed {other:?} while waiting for {op}", self.id),
                }
            }
        }
    }

    async fn complete(&self, op: &Value) {
        let report = json!([{"id": op["id"], "code": op["code"], "type": op["type"], "status": "COMPLETED", "operationResponse": "ok"}]);
        let topic = format!("drover/android/{}/reply", self.id);
        self.client.publish(topic, QoS::AtLeastOnce, false, report.to_string().into_bytes()).await.unwrap();
    }

    /// Everything pushed in the next `quiet`, by operation id.
    async fn pushed_within(&mut self, quiet: Duration) -> BTreeMap<i64, usize> {
        let mut seen = BTreeMap::new();
        while let Ok(Some(ops)) = tokio::time::timeout(quiet, self.pushed.recv()).await {
            for o in ops {
                *seen.entry(o["id"].as_i64().unwrap()).or_default() += 1;
            }
        }
        seen
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_broker() {
    let Some(pg) = Backend::postgres() else { return };
    if tokio::net::TcpStream::connect("127.0.0.1:1883").await.is_err() {
        eprintln!("NOTE: no MQTT broker on 127.0.0.1:1883: the two-replica test was skipped");
        return;
    }
    let broker = "mqtt://127.0.0.1:1883".to_string();
    let b_broker = broker.clone();
    let a = TestServer::start_with(pg, move |c| c.broker = Some(broker)).await;
    let b = a.replica_with(move |c| c.broker = Some(b_broker)).await;
    let replicas = [&a, &b];

    // Devices enrolled through either replica; each comes online with one operation
    // waiting, which whichever replica heard it pushes.
    let mut devices = Vec::new();
    let mut done: Vec<i64> = Vec::new();
    for i in 0..6 {
        let id = unique(&format!("rep{i}")).replace('_', "-");
        replicas[i % 2].enroll_android(&id).await;
        let first = replicas[i % 2].add_operation("android", &id, "DEVICE_RING", None).await;
        let mut device = Device::connect(1883, &id).await;
        let pushed = device.announce_until_pushed().await;
        let op = pushed.iter().find(|o| o["id"].as_i64() == Some(first)).expect("the waiting operation");
        device.complete(op).await;
        done.push(first);
        devices.push(device);
    }
    for op in &done {
        a.until_state(*op, "COMPLETED").await;
    }

    // Operations added through each replica, with nobody announcing anything: every device
    // is pushed both, once, whichever replica heard it come online.
    for (k, added_on) in replicas.iter().enumerate() {
        let code = ["DEVICE_INFO", "DEVICE_LOCATION"][k];
        let mut ops = Vec::new();
        for d in &devices {
            ops.push(added_on.add_operation("android", &d.id, code, None).await);
        }
        for (d, op) in devices.iter_mut().zip(&ops) {
            let pushed = d.pushed_op(*op, &done).await;
            d.complete(&pushed).await;
        }
        for op in &ops {
            replicas[1 - k].until_state(*op, "COMPLETED").await;
        }
        done.extend(&ops);
    }
    for d in &mut devices {
        let again = d.pushed_within(Duration::from_millis(700)).await;
        assert!(again.is_empty(), "{} was pushed again: {again:?}", d.id);
    }

    // A device says `offline` (to whichever replica the broker gives it): neither replica
    // pushes to it any more, and it gets what waits when it is back.
    let away = &mut devices[0];
    away.say("offline").await;
    let key = a.state.store.device("android", &away.id).await.unwrap().unwrap().id;
    for _ in 0..100 {
        if !a.state.store.push_online(key).await.unwrap() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.state.store.push_online(key).await.unwrap(), "the offline device is still online");
    let waiting = [
        a.add_operation("android", &away.id, "DEVICE_RING", None).await,
        b.add_operation("android", &away.id, "DEVICE_INFO", None).await,
    ];
    assert!(away.pushed_within(Duration::from_millis(1500)).await.is_empty(), "pushed to an offline device");
    for op in waiting {
        assert_eq!(a.operation(op).await["state"], "PENDING");
    }
    let mut ids: Vec<i64> = away.announce_until_pushed().await.iter().filter_map(|o| o["id"].as_i64()).collect();
    ids.extend(away.pushed_within(Duration::from_millis(1500)).await.into_keys());
    assert!(waiting.iter().all(|op| ids.contains(op)), "what waited came when it was back: {ids:?}");

    // A device that holds its connection and says nothing is reachable: the unreachable
    // sweep passes over it (its presence says so), while one that went offline and stayed
    // silent as long is marked.
    let (quiet, gone) = (&devices[1], &devices[2]);
    gone.say("offline").await;
    let gone_key = a.state.store.device("android", &gone.id).await.unwrap().unwrap().id;
    for _ in 0..100 {
        if !a.state.store.push_online(gone_key).await.unwrap() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.sql(&format!(
        "UPDATE devices SET last_seen_at = 0 WHERE device_type = 'android' AND device_id IN ('{}', '{}')",
        quiet.id, gone.id
    ))
    .await;
    // The replicas' own sweeps may get there first; either way the outcome is the same.
    b.state.store.mark_unreachable(drover::store::now_ms() - 60_000).await.unwrap();
    assert_eq!(a.device("android", &quiet.id).await["status"], "active", "a connected device was marked unreachable");
    assert_eq!(a.device("android", &gone.id).await["status"], "unreachable");

    drop(devices);
    b.stop().await;
    a.stop().await;
}
