//! What `--sqlite-synchronous full` costs (issue 30), side by side with `normal` in one
//! run. Run by hand, release build:
//!
//!     cargo bench -p drover --bench durability
//!
//! The writes are the delivery path's, through the group commit (`store/commit.rs`): 256
//! devices, each with one operation per round; per round every device's operation is
//! claimed (IN_PROGRESS) and then reported COMPLETED, 64 devices at a time as polls under
//! load would (the group commit then shares each commit, and its fsync, among many), and
//! one at a time (every write its own commit). Figure: delivery writes (claims +
//! results) committed per second.

use drover::store::{NewActivity, NewDevice, Store, Synchronous, TargetSet};
use std::sync::Arc;
use std::time::Instant;

const DEVICES: usize = 256;
const ROUNDS: usize = 20;

async fn run(synchronous: Synchronous, in_flight: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = Store::connect_with(&url, synchronous).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..DEVICES {
        let d = NewDevice {
            device_type: "android".into(),
            device_id: format!("dur-{i:05}"),
            name: String::new(),
            owner: None,
            ownership: drover::device::Ownership::Cope,
            metadata: Default::default(),
            push_token: None,
            tenant: "default".into(),
        };
        ids.push(store.enroll_device(&d, "bench").await.unwrap().id);
    }
    let mut writes = 0usize;
    let mut busy = std::time::Duration::ZERO;
    for round in 0..ROUNDS {
        let a = NewActivity {
            code: format!("BENCH_{round}"),
            kind: drover::ops::Kind::Profile,
            payload: None,
            created_by: "bench".into(),
            expires_at: None,
            max_attempts: 1,
        };
        store.add_activity(&a, &TargetSet { devices: ids.clone(), ..Default::default() }).await.unwrap();
        let t = Instant::now();
        let gate = Arc::new(tokio::sync::Semaphore::new(in_flight));
        let mut tasks = tokio::task::JoinSet::new();
        for &device in &ids {
            let store = store.clone();
            let permit = gate.clone().acquire_owned().await.unwrap();
            tasks.spawn(async move {
                let queued = store.queued(device, 1, false).await.unwrap();
                let op = queued[0].id;
                assert!(store.mark_delivered(device, &[op], "delivery:poll").await.unwrap());
                store.apply_results(device, &[(op, drover::ops::Reported::Completed, None)]).await.unwrap();
                drop(permit);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        busy += t.elapsed();
        writes += 2 * DEVICES;
    }
    store.close().await;
    writes as f64 / busy.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("| writes in flight | normal (writes/s) | full (writes/s) | full / normal |");
    println!("|---|---|---|---|");
    for in_flight in [64, 1] {
        // Twice each, alternating, so a disk's warm-up does not favour one; the best of two.
        let (mut normal, mut full) = (0.0f64, 0.0f64);
        for _ in 0..2 {
            normal = normal.max(run(Synchronous::Normal, in_flight).await);
            full = full.max(run(Synchronous::Full, in_flight).await);
        }
        println!("| {in_flight} | {normal:.0} | {full:.0} | {:.2}× |", full / normal);
    }
}
