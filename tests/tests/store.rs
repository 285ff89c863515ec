//! The storage seam itself, on SQLite and PostgreSQL: bulk pre-registration, set-based
//! fan-out with REPEATED, and enrollment of pre-registered devices.

use drover::store::{NewActivity, NewDevice, StoreError, TargetSet};
use drover_tests::{TestServer, e2e};

fn device(i: usize) -> NewDevice {
    NewDevice {
        device_type: "android".into(),
        device_id: format!("bulk-{i:05}"),
        name: format!("Bulk {i}"),
        owner: None,
        ownership: "COPE".into(),
        metadata: Default::default(),
        push_token: None,
    }
}

fn ring(by: &str) -> NewActivity {
    NewActivity {
        code: "DEVICE_RING".into(),
        kind: "command".into(),
        payload: None,
        created_by: by.into(),
        expires_at: None,
        max_attempts: 1,
    }
}

async fn bulk_fan_out(server: &TestServer) {
    let store = &server.state.store;
    let devices: Vec<NewDevice> = (0..1000).map(device).collect();
    assert_eq!(store.register_devices(&devices).await.unwrap(), 1000);
    // Registering again adds nothing.
    assert_eq!(store.register_devices(&devices[..10]).await.unwrap(), 0);

    let group = store.create_group("fleet", "", None).await.unwrap();
    assert!(matches!(store.create_group("fleet", "", None).await, Err(StoreError::Conflict(_))));
    let keys: Vec<i64> = store
        .list_devices(Some("android"), Some("registered"), None, None, 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(keys.len(), 1000);
    store.add_members(group.id, &keys).await.unwrap();

    let targets = TargetSet { groups: vec![group.id], ..Default::default() };
    assert_eq!(store.target_types(&targets).await.unwrap(), vec!["android".to_string()]);
    let (first, n) = store.add_activity(&ring("admin:a"), &targets).await.unwrap();
    assert_eq!(n, 1000);
    let (_, n) = store.add_activity(&ring("admin:b"), &targets).await.unwrap();
    assert_eq!(n, 1000);
    let counts = store.activity_counts(first.id).await.unwrap();
    assert_eq!(counts, vec![("REPEATED".to_string(), 1000)]);
    let sample = store.operations(None, Some(first.id), None, 0, 1).await.unwrap();
    let t = store.transitions(sample[0].id).await.unwrap();
    assert_eq!(
        (t[0].from_state.as_str(), t[0].to_state.as_str(), t[0].actor.as_str()),
        ("PENDING", "REPEATED", "admin:b")
    );

    // A pre-registered device can enroll; an enrolled one cannot enroll twice.
    let d = store.enroll_device(&device(7)).await.unwrap();
    assert_eq!(d.status, "active");
    assert!(matches!(store.enroll_device(&device(7)).await, Err(StoreError::Conflict(_))));
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
e2e!(bulk_fan_out, super::bulk_fan_out);
