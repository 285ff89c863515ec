//! Rollout figures (issue 26). Run by hand, release build:
//!
//!     cargo bench -p drover --bench rollouts
//!     DROVER_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p drover --bench rollouts
//!
//! With 100,000 ESP8266 devices (the real plugin validating the update), on a server core:
//!
//! * create: every device drawn into four phases (1%, 10%, 50%, 100%);
//! * start a phase: the 50% phase's 40,000 devices started (activity, operations with
//!   their own payloads, grants, rows moved), in steps of 5,000 as the driver takes them;
//! * record progress: 50,000 devices' operations moved (in progress with a state and a
//!   percentage; then completed) and one driver step recording it, per device;
//! * an idle step with 50,000 devices in flight and nothing changed: reading every device
//!   (the first step after a restart or a takeover), and the usual one, which reads only
//!   the operations changed since the step before (what every second costs while devices
//!   download);
//! * baseline: `add_activity` of one operation to the same 100,000 devices.
//!
//! Then downloads: 1,000 concurrent clients fetching a 1 MiB artifact through their own
//! grants (`/download/{token}`, a database lookup each), against the same file from a
//! plain tower-http `ServeFile` server with no lookup, in the same process.

use drover::config::Config;
use drover::core::Core;
use drover::store::{NewActivity, NewArtifact, NewDevice, TargetSet};
use std::time::{Duration, Instant};

const DEVICES: usize = 100_000;

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn micros_each(d: Duration, n: usize) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6 / n.max(1) as f64)
}

async fn sql(config: &Config, statement: &str) {
    use sqlx::Connection;
    let statement = sqlx::AssertSqlSafe(statement.to_string());
    if config.database_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&config.database_url).await.unwrap();
        sqlx::query(statement).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(&config.database_url).await.unwrap();
        sqlx::query(statement).execute(&mut c).await.unwrap();
    }
}

async fn artifact(core: &Core, version: &str, size: usize) -> drover::store::ArtifactRow {
    use sha2::Digest;
    let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let staged = core.artifacts.staging().join(format!("bench-{version}"));
    std::fs::write(&staged, &bytes).unwrap();
    core.artifacts.keep(&staged, &sha).unwrap();
    core.store
        .add_artifact(&NewArtifact {
            name: "esp-fw",
            version,
            device_types: &["esp8266".to_string()],
            models: &[],
            size: size as i64,
            sha256: &sha,
            signed_by: None,
            created_by: "bench",
            tenant: None,
        })
        .await
        .unwrap()
}

async fn run(label: &str, config: Config) {
    let core = Core::open(&config).await.unwrap();
    let devices: Vec<NewDevice> = (0..DEVICES)
        .map(|i| {
            let mut metadata = serde_json::Map::new();
            metadata.insert("firmware".into(), "1.0.0".into());
            NewDevice {
                device_type: "esp8266".into(),
                device_id: format!("esp-{i:08x}"),
                name: format!("board {i}"),
                owner: None,
                ownership: drover::device::Ownership::Cope,
                metadata,
                push_token: None,
                tenant: "default".into(),
            }
        })
        .collect();
    core.store.register_devices(&devices, true, "bench").await.unwrap();
    let query = drover::store::DeviceQuery { device_type: Some("esp8266".into()), ..Default::default() };
    drover::groups::create(
        &core.store,
        None,
        drover::groups::NewGroup { name: "boards", description: "", query: Some(&query), tenant: None },
        "admin:bench",
    )
    .await
    .unwrap();
    artifact(&core, "2.0.0", 400_000).await;
    println!("\n### {label}\n");
    println!("| step | devices | time | per device |\n|---|---|---|---|");

    let spec: drover::rollouts::Spec = serde_json::from_value(serde_json::json!({
        "name": "big", "artifact": {"name": "esp-fw", "version": "2.0.0"}, "targets": {"groups": ["boards"]},
        "phases": [{"percent": 1}, {"percent": 10}, {"percent": 50}, {"percent": 100}],
        "abort": {"failure_ratio": 1.0}
    }))
    .unwrap();
    let t = Instant::now();
    let (r, _) = drover::rollouts::create(&core, spec, "bench", None).await.unwrap();
    let took = t.elapsed();
    println!(
        "| create: every device drawn into 4 phases | {DEVICES} | {} | {} |",
        secs(took),
        micros_each(took, DEVICES)
    );

    let holder = drover::rollouts::holder();
    let step = |core: Core, holder: String| async move {
        assert!(core.store.lease_rollout(r.id, &holder).await.unwrap());
        drover::rollouts::drive(&core, r.id, &holder).await.unwrap();
    };
    // Phases 1 and 2 started (10,000 devices), then the 50% phase measured on its own.
    step(core.clone(), holder.clone()).await;
    drover::rollouts::advance(&core, "big", "bench").await.unwrap();
    for _ in 0..2 {
        step(core.clone(), holder.clone()).await;
    }
    drover::rollouts::advance(&core, "big", "bench").await.unwrap();
    let t = Instant::now();
    for _ in 0..8 {
        step(core.clone(), holder.clone()).await;
    }
    let took = t.elapsed();
    let started = core.store.rollout_counts(r.id).await.unwrap();
    let pending: i64 = started.iter().filter(|(_, s, _)| s == "pending").map(|(_, _, n)| n).sum();
    assert_eq!(pending, 50_000, "{started:?}");
    println!("| start the 50% phase (8 steps of 5,000) | 40000 | {} | {} |", secs(took), micros_each(took, 40_000));

    let t = Instant::now();
    step(core.clone(), holder.clone()).await;
    let took = t.elapsed();
    println!(
        "| idle step reading every device (after a restart or takeover), 50,000 in flight | 50000 | {} | {} |",
        secs(took),
        micros_each(took, 50_000)
    );
    // Nothing changed since the step before (the driver reads from 10 s before its last
    // step, so an operation that changes is read again for 10 s: a few per device).
    let since = drover::store::now_ms();
    let t = Instant::now();
    drover::rollouts::drive_since(&core, r.id, &holder, since).await.unwrap();
    let took = t.elapsed();
    println!(
        "| idle step, the usual one (only operations changed since), 50,000 in flight | 50000 | {} | {} |",
        secs(took),
        micros_each(took, 50_000)
    );

    sql(
        &config,
        "UPDATE operations SET state = 'IN_PROGRESS', response = '{\"update_state\":\"downloading\",\"progress\":40}'
         WHERE code = 'FIRMWARE_UPDATE'",
    )
    .await;
    let t = Instant::now();
    step(core.clone(), holder.clone()).await;
    let took = t.elapsed();
    println!(
        "| record progress: 50,000 now downloading at 40% | 50000 | {} | {} |",
        secs(took),
        micros_each(took, 50_000)
    );

    sql(
        &config,
        "UPDATE operations SET state = 'COMPLETED', response = '{\"update_state\":\"succeeded\",\"version\":\"2.0.0\"}'
         WHERE code = 'FIRMWARE_UPDATE'",
    )
    .await;
    let t = Instant::now();
    step(core.clone(), holder.clone()).await;
    let took = t.elapsed();
    println!("| record progress: 50,000 succeeded | 50000 | {} | {} |", secs(took), micros_each(took, 50_000));

    let targets = TargetSet { queries: vec![Default::default()], ..Default::default() };
    let baseline = NewActivity {
        code: "REBOOT".into(),
        kind: drover::ops::Kind::Command,
        payload: None,
        created_by: "bench".into(),
        expires_at: None,
        max_attempts: 1,
    };
    let t = Instant::now();
    let (_, n) = core.store.add_activity(&baseline, &targets).await.unwrap();
    let took = t.elapsed();
    println!(
        "| baseline: one operation to every device (`add_activity`) | {n} | {} | {} |",
        secs(took),
        micros_each(took, n as usize)
    );
    core.store.close().await;
}

/// 1,000 concurrent downloads of a 1 MiB artifact through grants, against a plain
/// `ServeFile` server of the same file.
async fn downloads() {
    const CLIENTS: usize = 1000;
    const SIZE: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::local(dir.path());
    config.http.max_connections = 4 * CLIENTS;
    let server = drover::server::Server::start(&config).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let core = server.state.core.clone();
    let a = artifact(&core, "2.0.0", SIZE).await;
    let devices: Vec<NewDevice> = (0..CLIENTS)
        .map(|i| NewDevice {
            device_type: "esp8266".into(),
            device_id: format!("esp-{i:08x}"),
            name: String::new(),
            owner: None,
            ownership: drover::device::Ownership::Cope,
            metadata: Default::default(),
            push_token: None,
            tenant: "default".into(),
        })
        .collect();
    core.store.register_devices(&devices, true, "bench").await.unwrap();
    let mut tokens = Vec::new();
    let mut starts = Vec::new();
    for d in 1..=CLIENTS as i64 {
        let (token, token_hash) = drover::artifacts::new_grant();
        tokens.push(token);
        starts.push(drover::store::Start { device: d, payload: "{}".into(), token_hash, from_version: None });
    }
    // Grants written as a rollout writes them.
    let spec: drover::rollouts::Spec = serde_json::from_value(serde_json::json!({
        "name": "dl", "artifact": {"name": "esp-fw", "version": "2.0.0"},
        "targets": {"devices": [{"type": "esp8266", "id": "esp-00000000"}]}, "phases": [{"percent": 100}]
    }))
    .unwrap();
    let (r, _) = drover::rollouts::create(&core, spec, "bench", None).await.unwrap();
    let holder = drover::rollouts::holder();
    assert!(core.store.lease_rollout(r.id, &holder).await.unwrap());
    core.store
        .start_rollout_devices(&drover::store::StartBatch {
            rollout: r.id,
            holder: &holder,
            code: "FIRMWARE_UPDATE",
            kind: "command",
            actor: "bench",
            artifact: a.id,
            expires_at: drover::store::now_ms() + 3_600_000,
            devices: &starts[..1],
            skipped: &[],
            state: "pending",
        })
        .await
        .unwrap();
    core.store.grant_downloads(a.id, &starts[1..], drover::store::now_ms() + 3_600_000).await.unwrap();
    let path = core.artifacts.file(&a.sha256);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        rx.await.ok();
    }));

    // The floor: the same file, no lookup.
    let floor = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let floor_addr = floor.local_addr().unwrap();
    let app = axum::Router::new().route_service("/file", tower_http::services::ServeFile::new(&path));
    tokio::spawn(async move { axum::serve(floor, app).await.unwrap() });

    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let fetch = |urls: Vec<String>| {
        let client = client.clone();
        async move {
            let t = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for url in urls {
                let client = client.clone();
                tasks.spawn(async move {
                    let r = client.get(&url).send().await.unwrap();
                    assert!(r.status().is_success(), "{url}: {}", r.status());
                    r.bytes().await.unwrap().len()
                });
            }
            let mut total = 0;
            while let Some(n) = tasks.join_next().await {
                total += n.unwrap();
            }
            assert_eq!(total, CLIENTS * SIZE);
            t.elapsed()
        }
    };
    println!("\n### Downloads: {CLIENTS} concurrent clients, a 1 MiB artifact\n");
    println!("| server | time | throughput |\n|---|---|---|");
    for round in 0..2 {
        let grants: Vec<String> = tokens.iter().map(|t| format!("{base}/download/{t}")).collect();
        let plain: Vec<String> = (0..CLIENTS).map(|_| format!("http://{floor_addr}/file")).collect();
        let ours = fetch(grants).await;
        let bare = fetch(plain).await;
        if round == 1 {
            let mb = (CLIENTS * SIZE) as f64 / (1 << 20) as f64;
            println!(
                "| Drover `/download/{{token}}` (a grant lookup each) | {} | {:.0} MiB/s |",
                secs(ours),
                mb / ours.as_secs_f64()
            );
            println!("| plain `ServeFile` of the same file | {} | {:.0} MiB/s |", secs(bare), mb / bare.as_secs_f64());
            println!("| ratio (Drover / plain) | {:.2} | |", bare.as_secs_f64() / ours.as_secs_f64());
        }
    }
    let _ = tx.send(());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    run("SQLite", Config::local(dir.path())).await;

    if let Ok(pg) = std::env::var("DROVER_BENCH_POSTGRES_URL") {
        use sqlx::Connection;
        let schema = format!("drover_bench_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&pg).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&mut conn).await.unwrap();
        let sep = if pg.contains('?') { '&' } else { '?' };
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::local(dir.path());
        config.database_url = format!("{pg}{sep}options=-c%20search_path%3D{schema}");
        run("PostgreSQL", config).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&mut conn).await.unwrap();
    } else {
        println!("\n(PostgreSQL skipped: set DROVER_BENCH_POSTGRES_URL to include it)");
    }
    downloads().await;
}
