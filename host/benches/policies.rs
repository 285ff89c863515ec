//! Policy figures (issue 25). Run by hand, release build:
//!
//!     cargo bench -p drover --bench policies
//!     DROVER_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p drover --bench policies
//!
//! With 100,000 enrolled Android devices (half COPE, half BYOD), on a server core with
//! the real Android plugin:
//!
//! * first: a policy for every device is created and recomputed: 100,000 bundles queued;
//! * edit: the policy's features change: 100,000 bundles supersede the queued ones;
//! * narrower: a higher-priority policy for the COPE half: 50,000 change;
//! * nothing: a recomputation that changes nothing (the periodic sweep's cost);
//! * the compliance loop's due-scan (every 2 s) with every device due and with none due,
//!   and the compliance-query scan (every minute);
//! * baseline: `add_activity` of one profile operation to the same 100,000 devices (the
//!   engine's own fan-out, one statement), side by side.

use drover::config::Config;
use drover::core::Core;
use drover::policies::{self, Scope};
use drover::store::{NewActivity, NewDevice, TargetSet, Verdict};
use std::time::{Duration, Instant};

const DEVICES: usize = 100_000;

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn run(label: &str, config: Config) {
    let core = Core::open(&config).await.unwrap();
    let devices: Vec<NewDevice> = (0..DEVICES)
        .map(|i| NewDevice {
            device_type: "android".into(),
            device_id: format!("35{i:013}"),
            name: format!("device {i}"),
            owner: None,
            ownership: if i % 2 == 0 { drover::device::Ownership::Cope } else { drover::device::Ownership::Byod },
            metadata: Default::default(),
            push_token: None,
            tenant: "default".into(),
        })
        .collect();
    core.store.register_devices(&devices, true, "bench").await.unwrap();
    let camera = |enabled: bool| serde_json::json!({"code": "CAMERA", "payload": {"enabled": enabled}});
    let spec = |priority: i64, features: serde_json::Value, applies: serde_json::Value| {
        serde_json::from_value::<policies::Spec>(serde_json::json!({
            "priority": priority, "profiles": {"android": features}, "applies_to": applies,
        }))
        .unwrap()
    };
    let save = |name: &str, s: &policies::Spec| {
        let text = serde_json::to_string(s).unwrap();
        let event = policies::changed(name, "created", Some(1), "bench", None);
        let core = core.clone();
        let name = name.to_string();
        let priority = s.priority;
        async move {
            let new = drover::store::NewPolicy {
                name: &name,
                active: true,
                priority,
                spec: &text,
                actor: "bench",
                tenant: None,
            };
            core.store.insert_policy(&new, &event).await.unwrap()
        }
    };
    let recompute = || policies::recompute(&core, Scope::DeviceTypes(vec!["android".into()]));
    println!("\n### {label}\n");
    println!("| step | devices given a new bundle | time |\n|---|---|---|");

    let base = spec(1, serde_json::json!([camera(false)]), serde_json::json!({}));
    policies::check(&core, &base, None).await.unwrap();
    let id = save("baseline", &base).await;
    let t = Instant::now();
    let r = recompute().await.unwrap();
    println!("| first: a policy for every device | {} | {} |", r.assigned, secs(t.elapsed()));

    let edited = spec(1, serde_json::json!([camera(true)]), serde_json::json!({}));
    let text = serde_json::to_string(&edited).unwrap();
    core.store
        .revise_policy(id, 2, 1, &text, "bench", &policies::changed("baseline", "updated", Some(2), "bench", None))
        .await
        .unwrap();
    let t = Instant::now();
    let r = recompute().await.unwrap();
    println!("| edit: every device's bundle superseded | {} | {} |", r.assigned, secs(t.elapsed()));

    let cope = spec(10, serde_json::json!([camera(false)]), serde_json::json!({"ownership": "COPE"}));
    save("cope", &cope).await;
    let t = Instant::now();
    let r = recompute().await.unwrap();
    println!("| narrower: a higher priority for the COPE half | {} | {} |", r.assigned, secs(t.elapsed()));

    let t = Instant::now();
    let r = recompute().await.unwrap();
    println!("| nothing changed (the sweep) | {} | {} |", r.assigned, secs(t.elapsed()));

    // The compliance loop's due-scan, every 2 s: with every device evaluated just now
    // (nothing due, so every record is read), and with every device due (the first
    // batch is enough).
    let t = Instant::now();
    let due = core.store.compliance_due(200, 0).await.unwrap();
    println!("| compliance due-scan, every device due (first 200) | {} | {} |", due.len(), millis(t.elapsed()));
    let keys: Vec<i64> = (1..=DEVICES as i64).collect();
    for chunk in keys.chunks(1000) {
        let verdicts: Vec<Verdict<'_>> = chunk
            .iter()
            .map(|d| Verdict {
                device: *d,
                state: "pending",
                checks: "[]",
                blocked: false,
                mark: 0,
                changed: false,
                event: None,
            })
            .collect();
        core.store.record_compliance(&verdicts).await.unwrap();
    }
    let t = Instant::now();
    let due = core.store.compliance_due(200, 0).await.unwrap();
    println!("| compliance due-scan, nothing due (every record read) | {} | {} |", due.len(), millis(t.elapsed()));
    let t = Instant::now();
    let asked = core.store.monitor_due("android", drover::store::now_ms(), 1000).await.unwrap();
    println!("| compliance-query scan (no bundle applied yet) | {} | {} |", asked.len(), millis(t.elapsed()));

    let targets = TargetSet { queries: vec![Default::default()], ..Default::default() };
    let profile = NewActivity {
        code: "CAMERA".into(),
        kind: drover::ops::Kind::Profile,
        payload: Some("{\"enabled\":false}".into()),
        created_by: "bench".into(),
        expires_at: None,
        max_attempts: 1,
    };
    let t = Instant::now();
    let (_, n) = core.store.add_activity(&profile, &targets).await.unwrap();
    println!("| baseline: one profile operation to every device (`add_activity`) | {n} | {} |", secs(t.elapsed()));
    core.store.close().await;
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
        let mut config = Config::local(dir.path());
        config.database_url = format!("{pg}{sep}options=-c%20search_path%3D{schema}");
        run("PostgreSQL", config).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&mut conn).await.unwrap();
    } else {
        println!("\n(PostgreSQL skipped: set DROVER_BENCH_POSTGRES_URL to include it)");
    }
}
