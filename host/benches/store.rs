//! Storage figures (issue 3). Run by hand, release build:
//!
//!     cargo bench -p drover --bench store
//!     DROVER_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p drover --bench store
//!
//! * fan-out: one operation to a group of 100,000 devices (activity + 100,000
//!   operations + the REPEATED check, one transaction), side by side with a plain bulk
//!   INSERT of the same 100,000 rows (500-row multi-VALUES statements, one transaction);
//! * pending fetch: one device's queued operations with 10 million operation rows in the
//!   table (BENCH_HISTORY_ROUNDS × 100,000 completed rows of history, then one pending
//!   operation per device), through `Store::queued` (which first expires anything past its
//!   TTL) and as the bare SELECT.

use drover::store::{NewActivity, NewDevice, Store, TargetSet};
use std::time::{Duration, Instant};

const DEVICES: usize = 100_000;

fn pct(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i].as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> f64 {
    pct(&mut v, 0.5)
}

macro_rules! bench_backend {
    ($label:expr, $store:expr, $pool:expr) => {{
        let store: Store = $store;
        let pool = $pool;
        let rounds: usize = std::env::var("BENCH_HISTORY_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(99);
        println!("\n### {}\n", $label);

        let devices: Vec<NewDevice> = (0..DEVICES)
            .map(|i| NewDevice {
                device_type: "android".into(),
                device_id: format!("35{i:013}"),
                name: format!("device {i}"),
                owner: None,
                ownership: drover::device::Ownership::Cope,
                metadata: Default::default(),
                push_token: None,
                tenant: "default".into(),
            })
            .collect();
        let t = Instant::now();
        store.register_devices(&devices, true, "bench").await.unwrap();
        let register = t.elapsed();
        let event = |t: &str| drover::store::NewEvent { event_type: t.into(), ..Default::default() };
        let group = store.create_group("all", "", None, None, &event("group.created")).await.unwrap();
        let keys: Vec<i64> = {
            let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM devices ORDER BY id").fetch_all(&pool).await.unwrap();
            rows.into_iter().map(|(k,)| k).collect()
        };
        store.add_members(group.id, &keys, &event("group.members_added")).await.unwrap();
        let targets = TargetSet { groups: vec![group.id], ..Default::default() };

        // Fan-out through the store: a profile (no REPEATED work) and a command (with it).
        let mut fan_profile = Vec::new();
        let mut fan_command = Vec::new();
        for i in 0..5 {
            let profile = NewActivity { code: "CAMERA".into(), kind: drover::ops::Kind::Profile, payload: Some(format!("{{\"enabled\":{}}}", i % 2 == 0)), created_by: "bench".into(), expires_at: None, max_attempts: 1 };
            let t = Instant::now();
            let (_, n) = store.add_activity(&profile, &targets).await.unwrap();
            fan_profile.push(t.elapsed());
            assert_eq!(n as usize, DEVICES);
            let command = NewActivity { code: "DEVICE_RING".into(), kind: drover::ops::Kind::Command, payload: None, created_by: "bench".into(), expires_at: None, max_attempts: 1 };
            let t = Instant::now();
            store.add_activity(&command, &targets).await.unwrap();
            fan_command.push(t.elapsed());
        }

        // Baseline: the same 100,000 rows as plain multi-row INSERTs in one transaction.
        let mut plain = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let mut tx = pool.begin().await.unwrap();
            for chunk in keys.chunks(500) {
                let mut sql = String::from("INSERT INTO operations (activity, device, code, kind, state, attempts, created_at, updated_at, max_attempts) VALUES ");
                for (j, _) in chunk.iter().enumerate() {
                    if j > 0 { sql.push_str(", "); }
                    sql.push_str(&format!("(1, ${}, 'CAMERA', 'profile', 'PENDING', 0, 0, 0, 1)", j + 1));
                }
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for k in chunk { q = q.bind(*k); }
                q.execute(&mut *tx).await.unwrap();
            }
            tx.commit().await.unwrap();
            plain.push(t.elapsed());
        }
        let (fp, fc, pl) = (median(fan_profile), median(fan_command), median(plain));
        println!("| what (100,000 devices) | median of 5 |");
        println!("|---|---|");
        println!("| bulk pre-registration of the devices (once) | {:.0} ms |", register.as_secs_f64() * 1e3);
        println!("| fan-out, profile (activity + 100k operations, one tx) | {fp:.0} ms |");
        println!("| fan-out, command (also REPEATED: supersedes the previous ring) | {fc:.0} ms |");
        println!("| plain bulk INSERT of the same 100k rows, 500-row statements | {pl:.0} ms |");
        println!("| ratio fan-out (profile / command) to plain INSERT | {:.2}× / {:.2}× |", fp / pl, fc / pl);

        // History: completed rows up to ~10M, then one pending operation per device.
        let t = Instant::now();
        for _ in 0..rounds {
            sqlx::query("INSERT INTO operations (activity, device, code, kind, state, attempts, created_at, updated_at, max_attempts, response)
                         SELECT 1, id, 'DEVICE_INFO', 'command', 'COMPLETED', 1, 0, 0, 1, '{\"ok\":true}' FROM devices")
                .execute(&pool).await.unwrap();
        }
        let fill = t.elapsed();
        let total: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM operations").fetch_one(&pool).await.unwrap();
        let mut via_store = Vec::new();
        let mut bare = Vec::new();
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..10_000 {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            let k = keys[(x % keys.len() as u64) as usize];
            let t = Instant::now();
            let q = store.queued(k, 100, false).await.unwrap();
            via_store.push(t.elapsed());
            assert!(!q.is_empty());
            let t = Instant::now();
            let rows: Vec<(i64, String)> = sqlx::query_as("SELECT o.id, o.code FROM operations o WHERE o.device = $1 AND o.state IN ('PENDING', 'NOTNOW') ORDER BY o.id LIMIT 100")
                .bind(k).fetch_all(&pool).await.unwrap();
            bare.push(t.elapsed());
            assert!(!rows.is_empty());
        }
        println!();
        println!("| pending fetch, {} operation rows (history filled in {:.0} s), 10,000 random devices | p50 | p99 |", total.0, fill.as_secs_f64());
        println!("|---|---|---|");
        println!("| `Store::queued` (expire check + fetch with payloads) | {:.3} ms | {:.3} ms |", pct(&mut via_store, 0.5), pct(&mut via_store, 0.99));
        println!("| bare SELECT on the queue index | {:.3} ms | {:.3} ms |", pct(&mut bare, 0.5), pct(&mut bare, 0.99));
        store.close().await;
    }};
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(&url).await.unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&path).busy_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    bench_backend!("SQLite (WAL, synchronous=NORMAL)", store, pool);

    if let Ok(pg) = std::env::var("DROVER_BENCH_POSTGRES_URL") {
        use sqlx::Connection;
        let schema = format!("drover_bench_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&pg).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&mut conn).await.unwrap();
        let sep = if pg.contains('?') { '&' } else { '?' };
        let url = format!("{pg}{sep}options=-c%20search_path%3D{schema}");
        let store = Store::connect(&url).await.unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
        bench_backend!("PostgreSQL 15", store, pool);
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&mut conn).await.unwrap();
    } else {
        println!("\n(PostgreSQL skipped: set DROVER_BENCH_POSTGRES_URL to include it)");
    }
}
