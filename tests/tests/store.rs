//! The storage seam itself, on SQLite and PostgreSQL: bulk pre-registration, set-based
//! fan-out with REPEATED, enrollment of pre-registered devices, and delivery writes (the
//! group commit) racing admin writes.

use drover::store::{NewActivity, NewDevice, StoreError, TargetSet};
use drover_tests::{Rng, TestServer, e2e};

fn device(i: usize) -> NewDevice {
    NewDevice {
        device_type: "android".into(),
        device_id: format!("bulk-{i:05}"),
        name: format!("Bulk {i}"),
        owner: None,
        ownership: drover::device::Ownership::Cope,
        metadata: Default::default(),
        push_token: None,
        tenant: "default".into(),
    }
}

fn ring(by: &str) -> NewActivity {
    NewActivity {
        code: "DEVICE_RING".into(),
        kind: drover::ops::Kind::Command,
        payload: None,
        created_by: by.into(),
        expires_at: None,
        max_attempts: 1,
    }
}

async fn bulk_fan_out(server: &TestServer) {
    let store = &server.state.store;
    let devices: Vec<NewDevice> = (0..1000).map(device).collect();
    assert_eq!(store.register_devices(&devices, false, "b1").await.unwrap(), 1000);
    // Registering again adds nothing.
    assert_eq!(store.register_devices(&devices[..10], false, "b1").await.unwrap(), 0);

    let created = drover::store::NewEvent { event_type: "group.created".into(), ..Default::default() };
    let group = store.create_group("fleet", "", None, None, &created).await.unwrap();
    assert!(matches!(store.create_group("fleet", "", None, None, &created).await, Err(StoreError::Conflict(_))));
    let keys: Vec<i64> = store
        .list_devices(
            &drover::store::DeviceFilter {
                device_type: Some("android"),
                status: Some(drover::device::Status::Registered),
                ..Default::default()
            },
            0,
            1000,
        )
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(keys.len(), 1000);
    let added = drover::store::NewEvent { event_type: "group.members_added".into(), ..Default::default() };
    store.add_members(group.id, &keys, &added).await.unwrap();

    let targets = TargetSet { groups: vec![group.id], ..Default::default() };
    assert_eq!(store.target_types(&targets).await.unwrap(), vec!["android".to_string()]);
    let (first, n) = store.add_activity(&ring("admin:a"), &targets).await.unwrap();
    assert_eq!(n, 1000);
    let (_, n) = store.add_activity(&ring("admin:b"), &targets).await.unwrap();
    assert_eq!(n, 1000);
    let counts = store.activity_counts(first.id).await.unwrap();
    assert_eq!(counts, vec![("REPEATED".to_string(), 1000)]);
    let sample = store.operations(None, Some(first.id), None, None, drover::store::Cursor::After(0), 1).await.unwrap();
    let t = store.transitions(sample[0].id).await.unwrap();
    assert_eq!(
        (t[0].from_state.as_str(), t[0].to_state.as_str(), t[0].actor.as_str()),
        ("PENDING", "REPEATED", "admin:b")
    );

    // A pre-registered device can enroll; an enrolled one cannot enroll twice.
    let d = store.enroll_device(&device(7), "test").await.unwrap();
    assert_eq!(d.status, "active");
    assert!(matches!(store.enroll_device(&device(7), "test").await, Err(StoreError::Conflict(_))));
    // Its queue is the newer ring only.
    let queued = store.queued(d.id, 10, false).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].code, "DEVICE_RING");

    // Retention: finished operations older than the cut-off go, with their history;
    // live ones stay whatever their age.
    let future = drover::store::now_ms() + 1;
    assert_eq!(store.purge_finished(future).await.unwrap(), 1000);
    assert!(store.transitions(sample[0].id).await.unwrap().is_empty());
    assert!(store.operation(sample[0].id).await.unwrap().is_none());
    assert_eq!(store.queued(d.id, 10, false).await.unwrap().len(), 1);
}
/// Delivery writes (the group committer; on SQLite its own connection) while admin writes
/// (the write pool) run at once: on SQLite these are two writers of one file. Nothing may
/// fail or be lost, and every operation's history must be whole.
async fn delivery_beside_admin_writes(server: &TestServer) {
    use drover::ops::Reported;
    let store = &server.state.store;
    let devices: Vec<NewDevice> = (0..200).map(device).collect();
    store.register_devices(&devices, false, "b1").await.unwrap();
    let mut keys = Vec::new();
    for d in &devices {
        keys.push(store.enroll_device(d, "test").await.unwrap().id);
    }
    let targets = TargetSet { devices: keys.clone(), ..Default::default() };
    let (activity, n) = store.add_activity(&ring("admin:a"), &targets).await.unwrap();
    assert_eq!(n, 200);

    let mut tasks = tokio::task::JoinSet::new();
    for &key in &keys {
        let store = store.clone();
        tasks.spawn(async move {
            let queued = store.queued(key, 10, false).await?;
            // Only the first activity's: the second may be queued by now (it is added
            // while these run), and must stay PENDING.
            let ids: Vec<i64> = queued.iter().filter(|q| q.code != "WIFI").map(|q| q.id).collect();
            store.mark_delivered(key, &ids, "delivery:poll").await?;
            let results: Vec<_> = ids.iter().map(|&id| (id, Reported::Completed, Some("{}".to_string()))).collect();
            store.apply_results(key, &results).await.map(|_| ())
        });
    }
    // Admin writes meanwhile: tags, device info, another activity for half the fleet.
    let half = TargetSet { devices: keys[..100].to_vec(), ..Default::default() };
    for (i, &key) in keys.iter().enumerate().step_by(10) {
        store.set_tags(key, &[format!("t{i}")]).await.unwrap();
        store.touch_device(key, &[("battery".into(), "50".into())], None).await.unwrap();
    }
    let mut profile = ring("admin:b");
    profile.code = "WIFI".into();
    profile.kind = drover::ops::Kind::Profile;
    let (second, n) = store.add_activity(&profile, &half).await.unwrap();
    assert_eq!(n, 100);
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }

    assert_eq!(store.activity_counts(activity.id).await.unwrap(), vec![("COMPLETED".to_string(), 200)]);
    assert_eq!(store.activity_counts(second.id).await.unwrap(), vec![("PENDING".to_string(), 100)]);
    for op in store.operations(None, Some(activity.id), None, None, drover::store::Cursor::After(0), 200).await.unwrap()
    {
        let path: Vec<_> =
            store.transitions(op.id).await.unwrap().into_iter().map(|t| (t.from_state, t.to_state)).collect();
        let expected = [("PENDING", "IN_PROGRESS"), ("IN_PROGRESS", "COMPLETED")].map(|(a, b)| (a.into(), b.into()));
        assert_eq!(path, expected, "operation {}", op.id);
    }
    let tagged = store.device_by_key(keys[10]).await.unwrap().unwrap();
    assert!(tagged.metadata.contains("battery"), "{}", tagged.metadata);
}

/// Deliveries racing for the same operations (a poll beside a push, two replicas on one
/// database): each operation is claimed once, and a delivery that lost moved nothing, so
/// it sends nothing. Without the claim, every racer marked and sent them.
async fn deliveries_claim_their_operations(server: &TestServer) {
    let replica = server.replica().await;
    let stores = [server.state.store.clone(), replica.state.store.clone()];
    let d = stores[0].enroll_device(&device(90_000), "test").await.unwrap();
    for round in 0..10 {
        let targets = TargetSet { devices: vec![d.id], ..Default::default() };
        // Two codes: a second command of the same code would supersede the first.
        for code in ["A", "B"] {
            let mut batch = ring("admin:a");
            batch.code = format!("RACE_{round}_{code}");
            stores[0].add_activity(&batch, &targets).await.unwrap();
        }
        let ids: Vec<i64> = stores[0].queued(d.id, 10, false).await.unwrap().iter().map(|q| q.id).collect();
        assert_eq!(ids.len(), 2);
        // Eight deliveries at once, half on each replica; some name both operations, some
        // only the second (a plugin that carried part of the queue).
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8 {
            let store = stores[i % 2].clone();
            let named = if i % 3 == 0 { ids[1..].to_vec() } else { ids.clone() };
            tasks.spawn(async move { (named.clone(), store.mark_delivered(d.id, &named, &format!("race:{i}")).await) });
        }
        let mut claimed: Vec<i64> = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (named, won) = r.unwrap();
            if won.unwrap() {
                claimed.extend(named);
            }
        }
        claimed.sort();
        let mut unique = claimed.clone();
        unique.dedup();
        assert_eq!(claimed, unique, "round {round}: an operation was claimed twice");
        for id in &ids {
            let path: Vec<_> =
                stores[0].transitions(*id).await.unwrap().into_iter().map(|t| (t.from_state, t.to_state)).collect();
            let moved = if claimed.contains(id) { 1 } else { 0 };
            assert_eq!(path.len(), moved, "round {round}, operation {id}: {path:?}");
            let state = stores[0].operation(*id).await.unwrap().unwrap().state;
            assert_eq!(state == "IN_PROGRESS", moved == 1, "round {round}, operation {id}: {state}");
        }
        // Finish the round's operations so the next round's queue is its own.
        let done: Vec<_> = claimed.iter().map(|&id| (id, drover::ops::Reported::Completed, None)).collect();
        stores[0].apply_results(d.id, &done).await.unwrap();
        stores[0].cancel(None, None, Some(d.id), "test").await.unwrap();
    }
    replica.stop().await;
}

/// Set-based moves racing each other and deliveries (adds that supersede, cancels,
/// expiry, claims; half through a second replica): every operation's recorded history is
/// one chain, each transition from the state the one before it left, ending in the state
/// the operation is in, and no command superseded by an older one. On PostgreSQL the
/// transitions and the update were two statements, each seeing what had committed when
/// it began: an activity committed between them was superseded with no transition.
async fn racing_moves_keep_one_history(server: &TestServer) {
    let replica = server.replica().await;
    let stores = [server.state.store.clone(), replica.state.store.clone()];
    let d = stores[0].enroll_device(&device(91_000), "test").await.unwrap();
    let targets = TargetSet { devices: vec![d.id], ..Default::default() };
    for round in 0..6 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..12 {
            let store = stores[i % 2].clone();
            let targets = targets.clone();
            tasks.spawn(async move {
                match i % 4 {
                    // Same code each time: each add supersedes the one before. Some have
                    // a TTL that is already over, for the expiry below.
                    0 | 1 => {
                        let mut a = ring(&format!("admin:{i}"));
                        a.expires_at = (i % 4 == 1).then(drover::store::now_ms);
                        store.add_activity(&a, &targets).await.unwrap();
                    }
                    2 => {
                        let queued: Vec<i64> =
                            store.queued(d.id, 1, false).await.unwrap().iter().map(|q| q.id).collect();
                        store.mark_delivered(d.id, &queued, "race").await.unwrap();
                    }
                    _ => {
                        if i % 8 == 3 {
                            store.cancel(None, None, Some(d.id), "admin:cancel").await.unwrap();
                        } else {
                            store.expire(Some(d.id), drover::store::now_ms() + 1).await.unwrap();
                        }
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let ops =
            stores[0].operations(Some(d.id), None, None, None, drover::store::Cursor::After(0), 1000).await.unwrap();
        for op in &ops {
            // The server's own housekeeping expires beside the test (the adds above leave
            // operations whose TTL is over), so the state and the history are read until
            // the state holds still around the history's read.
            let mut tries = 0;
            let (current, path) = loop {
                let before = stores[0].operation(op.id).await.unwrap().unwrap().state;
                let path = stores[0].transitions(op.id).await.unwrap();
                let after = stores[0].operation(op.id).await.unwrap().unwrap().state;
                tries += 1;
                if before == after || tries == 10 {
                    break (after, path);
                }
            };
            let mut state = "PENDING".to_string();
            for t in &path {
                assert_eq!(t.from_state, state, "round {round}, operation {}: {path:?}", op.id);
                state = t.to_state.clone();
            }
            assert_eq!(current, state, "round {round}, operation {} is not where its history ends: {path:?}", op.id);
            if current == "REPEATED" {
                assert!(
                    ops.iter().any(|o| o.activity > op.activity && o.code == op.code),
                    "round {round}, operation {} superseded by no newer command",
                    op.id
                );
            }
        }
        stores[0].cancel(None, None, Some(d.id), "test").await.unwrap();
    }
    replica.stop().await;
}

/// The operation engine under random interleavings (a property test, issue 30): adds of
/// commands and profiles (with retries, some with a TTL) for random devices, deliveries,
/// reports of every kind (some for operations the device does not have, some repeated),
/// cancels, expiry and the no-answer sweep, in random order. After every step each
/// outcome the store reports is what the state machine says (`ops::next`) from the state
/// the operation was in; at the end every operation added is there, each one's history
/// is one chain of legal moves ending in its state, none is completed twice, and its
/// attempts are its deliveries. `DROVER_ENGINE_SEEDS` runs more seeds (docs/testing.md).
async fn engine_against_its_state_machine(server: &TestServer) {
    use drover::ops::{Attempts, Event, Reported, State, next};
    use drover::store::ResultOutcome;
    let store = &server.state.store;
    let seeds: u64 = std::env::var("DROVER_ENGINE_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    for seed in 1..=seeds {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        let mut devices = Vec::new();
        for i in 0..4 {
            devices.push(store.enroll_device(&device(92_000 + seed as usize * 10 + i), "test").await.unwrap().id);
        }
        let mut added = 0u64;
        let mut log: Vec<String> = Vec::new();
        for step in 0..120 {
            let d = devices[rng.below(devices.len())];
            match rng.below(10) {
                0 | 1 => {
                    let targets: Vec<i64> = devices.iter().copied().filter(|_| rng.below(2) == 0).collect();
                    if targets.is_empty() {
                        continue;
                    }
                    let kind = if rng.below(3) == 0 { drover::ops::Kind::Profile } else { drover::ops::Kind::Command };
                    let a = NewActivity {
                        code: ["RING", "INFO", "LOCK"][rng.below(3)].into(),
                        kind,
                        payload: None,
                        created_by: "admin:prop".into(),
                        expires_at: (rng.below(4) == 0).then(|| drover::store::now_ms() + rng.below(30) as i64),
                        max_attempts: 1 + rng.below(3) as i64,
                    };
                    let (_, n) = store
                        .add_activity(&a, &TargetSet { devices: targets.clone(), ..Default::default() })
                        .await
                        .unwrap();
                    assert_eq!(n, targets.len() as u64, "seed {seed}, step {step}: one operation per target");
                    added += n;
                    log.push(format!("add {} {:?} to {targets:?}", a.code, a.kind));
                }
                2 | 3 => {
                    let queued: Vec<i64> =
                        store.queued(d, 1 + rng.below(3) as i64, false).await.unwrap().iter().map(|q| q.id).collect();
                    assert!(
                        store.mark_delivered(d, &queued, "delivery:poll").await.unwrap(),
                        "seed {seed}, step {step}: a lone claim lost"
                    );
                    log.push(format!("deliver {queued:?} to {d}"));
                }
                4..=6 => {
                    // A report on one of the device's operations, or on another's (unknown).
                    let ops = store
                        .operations(
                            Some(devices[rng.below(devices.len())]),
                            None,
                            None,
                            None,
                            drover::store::Cursor::After(0),
                            1000,
                        )
                        .await
                        .unwrap();
                    let Some(op) = ops.get(rng.below(ops.len().max(1))) else { continue };
                    let reported =
                        [Reported::Completed, Reported::Error, Reported::NotNow, Reported::InProgress][rng.below(4)];
                    let before = State::parse(&op.state).unwrap();
                    let out = store.apply_results(d, &[(op.id, reported, Some("{}".into()))]).await.unwrap();
                    let expected = if op.device != d {
                        ResultOutcome::Unknown { operation: op.id }
                    } else {
                        let attempts = Attempts { made: op.attempts, max: op.max_attempts };
                        match next(before, Event::Result(reported), attempts) {
                            Some(to) => ResultOutcome::Applied { operation: op.id, from: before, to },
                            None => ResultOutcome::Unchanged { operation: op.id, state: before },
                        }
                    };
                    // The server's own housekeeping expires beside the test: an operation
                    // whose TTL is over may have expired between the read and the report.
                    let expired_meanwhile = op.device == d
                        && op.expires_at.is_some_and(|at| at <= drover::store::now_ms())
                        && out == vec![ResultOutcome::Unchanged { operation: op.id, state: State::Expired }];
                    assert!(
                        out == vec![expected.clone()] || expired_meanwhile,
                        "seed {seed}, step {step}: {reported:?} on {op:?}: {out:?}, not {expected:?}; so far: {log:?}"
                    );
                    log.push(format!("report {reported:?} on {} ({before}) by {d}", op.id));
                }
                7 => {
                    store.cancel(None, None, Some(d), "admin:prop").await.unwrap();
                    log.push(format!("cancel all of {d}"));
                }
                8 => {
                    store.expire(None, drover::store::now_ms()).await.unwrap();
                    log.push("expire".into());
                }
                _ => {
                    store.requeue_unanswered(drover::delivery::POLL_ACTOR, drover::store::now_ms()).await.unwrap();
                    log.push("no-answer sweep".into());
                }
            }
        }
        let mut seen = 0u64;
        for &d in &devices {
            let ops = store.operations(Some(d), None, None, None, drover::store::Cursor::After(0), 1000).await.unwrap();
            seen += ops.len() as u64;
            for op in ops {
                let path = store.transitions(op.id).await.unwrap();
                let mut state = State::Pending;
                let mut deliveries = 0;
                for t in &path {
                    let (from, to) = (State::parse(&t.from_state).unwrap(), State::parse(&t.to_state).unwrap());
                    assert_eq!(from, state, "seed {seed}: operation {} jumped: {path:?}\n{log:?}", op.id);
                    assert!(!from.is_terminal(), "seed {seed}: operation {} left a terminal state: {path:?}", op.id);
                    let legal = drover::ops::is_move(from, to);
                    assert!(legal, "seed {seed}: operation {}: {from} -> {to} is no move of the state machine", op.id);
                    if t.actor == "delivery:poll" {
                        deliveries += 1;
                    }
                    state = to;
                }
                assert_eq!(op.state, state.as_str(), "seed {seed}: operation {} is not where its history ends", op.id);
                assert!(path.iter().filter(|t| t.to_state == "COMPLETED").count() <= 1, "seed {seed}: completed twice");
                assert_eq!(
                    op.attempts, deliveries,
                    "seed {seed}: operation {}'s attempts are not its deliveries: {path:?}",
                    op.id
                );
            }
        }
        assert_eq!(seen, added, "seed {seed}: operations were lost (or made)");
    }
}

/// Every poll and push reads a device's queue: that read must stay one range of the partial
/// index `operations_queued`, with no sort. Its statement and the index's `WHERE` must agree
/// word for word for SQLite to use the index, so a change to either shows here.
async fn queue_read_on_its_index(server: &TestServer) {
    let plan = server.state.store.queue_plan().await.unwrap();
    assert!(plan.contains("operations_queued"), "the queue read does not use operations_queued:\n{plan}");
    let sorts = plan.contains("TEMP B-TREE")
        || plan.lines().any(|l| l.trim_start().starts_with("Sort") || l.contains("-> Sort"));
    assert!(!sorts, "the queue read sorts:\n{plan}");
}

e2e!(bulk_fan_out, super::bulk_fan_out);
e2e!(queue_read_on_its_index, super::queue_read_on_its_index);
e2e!(delivery_beside_admin_writes, super::delivery_beside_admin_writes);
e2e!(deliveries_claim_their_operations, super::deliveries_claim_their_operations);
e2e!(racing_moves_keep_one_history, super::racing_moves_keep_one_history);
e2e!(engine_against_its_state_machine, super::engine_against_its_state_machine);

/// A TCP relay on loopback to the PostgreSQL server, which the test cuts and restores:
/// the database going away and coming back, as a network partition does it.
struct Relay {
    port: u16,
    upstream: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay { port, upstream: upstream.to_string(), tasks: Default::default() };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (upstream, tasks) = (self.upstream.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                let upstream = upstream.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Every connection closed, and no new one accepted.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Accepting again on the same port.
    async fn restore(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => return self.serve(listener),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("relay port {} not free yet: {e}", self.port);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("the relay's port {} cannot be bound again: {e}", self.port),
            }
        }
    }
}

/// Readiness follows the database: `/readyz` answers 503 naming it while PostgreSQL is
/// out of reach and 200 again once it is back, while `/healthz` (liveness) stays 200: a
/// balancer stops sending traffic to the replica, an orchestrator does not restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() {
    let Some(drover_tests::Backend::Postgres(url)) = drover_tests::Backend::postgres() else { return };
    let (scheme_user, rest) = url.split_once('@').expect("a PostgreSQL URL with a user");
    let (host_port, path) = rest.split_once('/').expect("a PostgreSQL URL with a database");
    let relay = Relay::start(host_port).await;
    let through = format!("{scheme_user}@127.0.0.1:{}/{path}", relay.port);
    let server = TestServer::start(drover_tests::Backend::Postgres(through)).await;
    let probe = |path: &'static str| {
        let (http, url) = (server.http.clone(), server.url(path));
        async move {
            let r = http.get(url).timeout(std::time::Duration::from_secs(10)).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(probe("/readyz").await, (200, r#"{"status":"ready"}"#.to_string()));

    relay.cut();
    let (status, body) = probe("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unready") && body.contains("database (postgres)"), "{body}");
    assert_eq!(probe("/healthz").await.0, 200, "liveness does not depend on the database");

    relay.restore().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while probe("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "not ready 20 s after the database came back");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    server.stop().await;
}

/// On SQLite the file is the database: ready as soon as the server serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_on_sqlite() {
    let server = TestServer::start(drover_tests::Backend::Sqlite).await;
    let r = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    server.stop().await;
}
