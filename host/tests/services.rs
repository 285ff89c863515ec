//! The services without any front: an operation added for a group, a device enrolled,
//! the operation delivered to it and its result recorded, each through `drover::core`,
//! `operations`, `enrollment` and `delivery` alone — no HTTP server, no axum type, no
//! broker. What a console, an admin CLI, policies and rollouts build on.

use drover::core::Core;
use drover::events::Event;
use drover::operations::{DeviceName, NewOperation, Targets};
use drover::plugins::Source;
use drover::plugins::types::{Channel, HttpMethod, HttpRequest, Outbound};
use std::net::IpAddr;

fn config(data: &std::path::Path) -> drover::config::Config {
    drover::config::Config {
        open_enrollment: false,
        admin_token: Some("drv_admin_services_test".into()),
        ..drover::config::Config::local(data)
    }
}

/// An Android agent's HTTP request, as the HTTP front would hand it over.
fn android(method: HttpMethod, path: &str) -> Channel {
    Channel::Http(HttpRequest {
        method,
        path: path.into(),
        query: String::new(),
        content_type: Some("application/json".into()),
        headers: vec![],
    })
}

#[tokio::test]
async fn an_operation_goes_from_the_service_to_a_device_and_back_without_any_front() {
    let data = tempfile::tempdir().unwrap();
    let core = Core::open(&config(data.path())).await.unwrap();
    let mut events = core.events.subscribe();
    let mut frequent = core.events.subscribe_frequent();
    let store = &core.store;
    let plugin = core.device_type("android").unwrap();

    // An admin makes an enrollment token; the device enrolls with it.
    let (token, hash) = drover::auth::new_token("enroll");
    store
        .insert_enrollment_token(&drover::store::NewEnrollmentToken {
            token_hash: &hash,
            device_type: "android",
            created_by: "admin:test",
            expires_at: drover::store::now_ms() + 60_000,
            uses: 1,
            import_batch: None,
            tenant: "default",
        })
        .await
        .unwrap();
    let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/enroll.json")).unwrap();
    let peer = Source::Peer(IpAddr::from([127, 0, 0, 1]));
    let enroll = android(HttpMethod::Post, "enroll");
    let refused = drover::enrollment::enroll(&core, &plugin, "android", peer, enroll.clone(), &body, None).await;
    assert_eq!(refused.err().map(|e| e.code), Some("forbidden"), "self-enrollment is off: a token is needed");
    let issued =
        drover::enrollment::enroll(&core, &plugin, "android", peer, enroll, &body, Some(&token)).await.unwrap();
    let device = issued.device;
    assert_eq!(device.status, "active");
    assert!(issued.token.starts_with("drv_dev_"));

    // The device is in a group; an operation is added for the group.
    let new = drover::groups::NewGroup { name: "lobby", description: "", query: None, tenant: None };
    let group = drover::groups::create(store, None, new, "admin:test").await.unwrap();
    let member = DeviceName { device_type: "android".into(), device_id: device.device_id.clone() };
    drover::groups::add_members(&core, None, &group, &[member], "admin:test").await.unwrap();
    let op = NewOperation {
        code: "DEVICE_RING".into(),
        payload: None,
        kind: None,
        targets: Targets { groups: vec!["lobby".into()], ..Default::default() },
        ttl_secs: None,
        retries: 0,
        within: None,
    };
    let (activity, operations) = drover::operations::add(&core, op, "admin:test").await.unwrap();
    assert_eq!(operations, 1);
    let unknown = NewOperation {
        code: "NO_SUCH_CODE".into(),
        payload: None,
        kind: None,
        targets: Targets { groups: vec!["lobby".into()], ..Default::default() },
        ttl_secs: None,
        retries: 0,
        within: None,
    };
    let e = drover::operations::add(&core, unknown, "admin:test").await.unwrap_err();
    assert_eq!(e.code, "unknown_operation", "{e}");
    assert!(e.message.starts_with("android: "), "the error names the device type: {e}");

    // The device polls: the delivery engine answers with the operation, encoded by the plugin.
    let poll = android(HttpMethod::Put, &format!("devices/{}/pending-operations", device.device_id));
    let (device, queue) = store
        .device_and_queue(drover::store::DeviceKey::Key(device.id), drover::delivery::queue_limit(&plugin))
        .await
        .unwrap()
        .unwrap();
    let out = drover::delivery::exchange(&core, &plugin, &device, poll.clone(), b"[]", queue).await.unwrap();
    let Some(Outbound::Http(answer)) = out else { panic!("a poll is answered over HTTP: {out:?}") };
    let sent: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(sent[0]["code"], "DEVICE_RING", "{sent}");
    let id = sent[0]["id"].as_i64().unwrap();
    assert_eq!(store.operation(id).await.unwrap().unwrap().state, "IN_PROGRESS");

    // Its next poll carries the result: the operation is COMPLETED, by the device.
    let result = serde_json::json!([{"id": id, "code": "DEVICE_RING", "type": "COMMAND", "status": "COMPLETED"}]);
    let (device, queue) = store.device_and_queue(drover::store::DeviceKey::Key(device.id), 100).await.unwrap().unwrap();
    drover::delivery::exchange(&core, &plugin, &device, poll, result.to_string().as_bytes(), queue).await.unwrap();
    let done = store.operation(id).await.unwrap().unwrap();
    assert_eq!(done.state, "COMPLETED");
    assert_eq!(done.activity, activity.id);

    // Each step was told as a domain event, in order: enrollment and the activity on the
    // main channel, the operation's changes on the frequent one.
    let mut told = Vec::new();
    while let Ok(e) = events.try_recv() {
        told.push(e);
    }
    let enrolled = told.iter().position(|e| matches!(e, Event::DeviceEnrolled { device: d, .. } if *d == device.id));
    let added = told.iter().position(|e| matches!(e, Event::ActivityAdded { activity: a, .. } if *a == activity.id));
    assert!(enrolled.is_some() && enrolled < added, "{told:#?}");
    assert!(!told.iter().any(Event::is_frequent), "frequent events stay off the main channel: {told:#?}");
    let mut told = Vec::new();
    while let Ok(e) = frequent.try_recv() {
        told.push(e);
    }
    let delivered = told.iter().position(|e| {
        matches!(e, Event::OperationChanged { operation, to: drover::ops::State::InProgress, .. } if *operation == id)
    });
    let completed = told.iter().position(|e| {
        matches!(e, Event::OperationChanged { operation, to: drover::ops::State::Completed, .. } if *operation == id)
    });
    assert!(delivered.is_some() && delivered < completed, "{told:#?}");

    // Removal through the service: the device is removed and its sessions told to end.
    drover::enrollment::remove(&core, &device, "admin:test").await.unwrap();
    assert_eq!(store.device_by_key(device.id).await.unwrap().unwrap().status, "removed");
    let removed = std::iter::from_fn(|| events.try_recv().ok())
        .any(|e| matches!(e, Event::DeviceRemoved { device: d, .. } if d == device.id));
    assert!(removed);
}
