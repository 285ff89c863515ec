//! Console figures (issue 27): each page's size and server time with 100,000 devices
//! (10,000 tagged, one activity of 100,000 operations). Run by hand, release build:
//!
//!     cargo bench -p drover --bench console
//!     DROVER_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p drover --bench console
//!
//! A page is requested through the server's whole HTTP router in-process (session lookup,
//! the page's in-process API calls, rendering), as a browser's request is after the socket.
//! The baseline is the admin API call(s) the page is built from, made with a bearer token
//! through the same router: the ratio is what rendering HTML costs on top of the JSON.

use axum::body::Body;
use axum::http::Request;
use drover::config::Config;
use drover::core::Core;
use drover::store::{NewActivity, NewDevice, TargetSet};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const DEVICES: usize = 100_000;
const RUNS: usize = 20;
const TOKEN: &str = "drv_admin_bench_console";

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

/// `(median, max, body bytes)` of `RUNS` requests after two warm-ups.
async fn time(router: &axum::Router, path: &str, header: (&str, &str)) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(RUNS);
    let mut size = 0;
    for i in 0..RUNS + 2 {
        let request = Request::get(path).header(header.0, header.1).body(Body::empty()).unwrap();
        let t = Instant::now();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 64 << 20).await.unwrap();
        let took = t.elapsed();
        assert!(status.is_success(), "{path}: {status}: {}", String::from_utf8_lossy(&body));
        size = body.len();
        if i >= 2 {
            times.push(took);
        }
    }
    times.sort();
    (times[RUNS / 2], times[RUNS - 1], size)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn run(label: &str, config: Config) {
    let core = Core::open(&config).await.unwrap();
    let devices: Vec<NewDevice> = (0..DEVICES)
        .map(|i| {
            let mut metadata = serde_json::Map::new();
            metadata.insert("model".into(), if i % 3 == 0 { "Pixel 8" } else { "Galaxy A54" }.into());
            NewDevice {
                device_type: "android".into(),
                device_id: format!("35600{i:010}"),
                name: format!("phone {i}"),
                owner: Some(format!("user{}", i % 500)),
                ownership: drover::device::Ownership::Cope,
                metadata,
                push_token: None,
                tenant: "default".into(),
            }
        })
        .collect();
    core.store.register_devices(&devices, true, "bench").await.unwrap();
    sql(&config, "INSERT INTO device_tags (device, tag) SELECT id, 'lobby' FROM devices WHERE id % 10 = 0").await;
    let query = drover::store::DeviceQuery { tags: vec!["lobby".into()], ..Default::default() };
    drover::groups::create(
        &core.store,
        None,
        drover::groups::NewGroup { name: "lobby-phones", description: "", query: Some(&query), tenant: None },
        "admin:bench",
    )
    .await
    .unwrap();
    drover::groups::create(
        &core.store,
        None,
        drover::groups::NewGroup { name: "floor-2", description: "", query: None, tenant: None },
        "admin:bench",
    )
    .await
    .unwrap();
    let activity = NewActivity {
        code: "DEVICE_RING".into(),
        kind: drover::ops::Kind::Command,
        payload: None,
        created_by: "admin:bench".into(),
        expires_at: None,
        max_attempts: 1,
    };
    let targets = TargetSet {
        tags: Vec::new(),
        devices: Vec::new(),
        groups: Vec::new(),
        queries: vec![Default::default()],
        within: None,
    };
    let (activity, n) = core.store.add_activity(&activity, &targets).await.unwrap();
    assert_eq!(n, DEVICES as u64);
    core.store.replace_admin_token(&drover::auth::hash_token(TOKEN), "bench", "admin").await.unwrap();
    let session = "bench-session";
    core.store
        .create_session(
            &drover::auth::hash_token(session),
            &drover::auth::hash_token(TOKEN),
            "csrf",
            drover::store::now_ms() + 3_600_000,
        )
        .await
        .unwrap();
    let state = drover::http::AppState {
        core: core.clone(),
        max_agent_body: drover::http::MAX_AGENT_BODY,
        body_timeout: Duration::from_secs(10),
        throttle: std::sync::Arc::new(drover::http::throttle::Throttle::new(0, 0)),
    };
    let router = drover::http::router(state);
    let cookie = format!("drover_session={session}");
    let bearer = format!("Bearer {TOKEN}");
    let one = "35600".to_string() + &format!("{:010}", 4242);
    let a = activity.id;
    let pages: Vec<(&str, String, Vec<String>)> = vec![
        ("overview", "/console".into(), vec!["/api/v1/fleet".into()]),
        ("devices", "/console/devices".into(), vec!["/api/v1/devices?limit=50".into(), "/api/v1/device-types".into()]),
        ("devices by tag", "/console/devices?tag=lobby".into(), vec!["/api/v1/devices?limit=50&tag=lobby".into()]),
        (
            "devices by group (dynamic)",
            "/console/devices?group=lobby-phones".into(),
            vec!["/api/v1/devices?limit=50&group=lobby-phones".into()],
        ),
        ("devices, search", "/console/devices?q=04242".into(), vec!["/api/v1/devices?limit=50&q=04242".into()]),
        (
            "devices by metadata",
            "/console/devices?metadata=model%3DPixel%208".into(),
            vec!["/api/v1/devices?limit=50&metadata=model%3DPixel%208".into()],
        ),
        (
            "devices, page 1000",
            "/console/devices?after=50000".into(),
            vec!["/api/v1/devices?limit=50&after=50000".into()],
        ),
        (
            "device",
            format!("/console/devices/android/{one}"),
            vec![
                format!("/api/v1/devices/android/{one}"),
                format!("/api/v1/operations?device_type=android&device_id={one}&before=9007199254740991&limit=20"),
            ],
        ),
        (
            "activities",
            "/console/activities".into(),
            vec!["/api/v1/activities?before=9007199254740991&limit=50".into()],
        ),
        ("activity (100,000 operations)", format!("/console/activities/{a}"), vec![format!("/api/v1/activities/{a}")]),
        ("groups", "/console/groups".into(), vec!["/api/v1/groups".into()]),
        ("enrollment", "/console/enrollment".into(), vec!["/api/v1/device-types".into()]),
        ("plugins", "/console/plugins".into(), vec!["/api/v1/plugins".into()]),
        ("plugin", "/console/plugins/android".into(), vec!["/api/v1/plugins/android".into()]),
        ("rollouts", "/console/rollouts".into(), vec!["/api/v1/rollouts".into()]),
        ("policies", "/console/policies".into(), vec!["/api/v1/policies".into()]),
        ("audit", "/console/audit".into(), vec!["/api/v1/audit?limit=100".into()]),
    ];
    println!("\n### {label}: {DEVICES} devices, {n} operations\n");
    println!(
        "| page | HTML size | median | max of {RUNS} | its API calls (median) | ratio |\n|---|---|---|---|---|---|"
    );
    for (name, path, api) in pages {
        let (median, max, size) = time(&router, &path, ("cookie", &cookie)).await;
        let mut api_total = Duration::ZERO;
        for call in &api {
            api_total += time(&router, call, ("authorization", &bearer)).await.0;
        }
        println!(
            "| {name} | {:.1} KiB | {} | {} | {} | {:.2} |",
            size as f64 / 1024.0,
            ms(median),
            ms(max),
            ms(api_total),
            median.as_secs_f64() / api_total.as_secs_f64().max(1e-9)
        );
    }
    for asset in ["/console/assets/console.css", "/console/assets/console.js"] {
        let (_, _, size) = time(&router, asset, ("accept", "*/*")).await;
        println!("| {asset} (cached a day) | {:.1} KiB | | | | |", size as f64 / 1024.0);
    }
    core.store.close().await;
}

#[tokio::main]
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
}
