//! The plugin runtime with real compiled components: the Android reference plugin through
//! Wasm, and purpose-built hostile plugins against every limit.

use drover::plugins::types::{
    Channel, ChannelKind, Device, ErrorCode, HttpMethod, HttpRequest, Operation, OperationKind, Outbound, ResultStatus,
};
use drover::plugins::{CallError, Capability, Fault, Limits, LoadOptions, LoadedPlugin, Runtime};
use drover_tests::{android, component, components, runtime};
use std::collections::BTreeMap;
use std::sync::Arc;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../plugins/android/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn device(id: &str) -> Device {
    Device { id: id.into(), metadata: vec![], session: vec![] }
}

fn http(method: HttpMethod, path: &str) -> Channel {
    Channel::Http(HttpRequest {
        method,
        path: path.into(),
        query: String::new(),
        content_type: Some("application/json".into()),
        headers: vec![],
    })
}

fn testbed_grants() -> LoadOptions {
    LoadOptions {
        grants: [Capability::Log, Capability::Kv, Capability::Config].into(),
        config: BTreeMap::from([("greeting".to_string(), "hello".to_string())]),
    }
}

async fn load_android() -> LoadedPlugin {
    runtime().load(android(), LoadOptions::default()).await.expect("android loads")
}

async fn load_testbed() -> LoadedPlugin {
    runtime().load(&component(components::TESTBED), testbed_grants()).await.expect("testbed loads")
}

async fn testbed_decode(p: &LoadedPlugin, body: &str) -> Result<Vec<(String, String)>, CallError> {
    p.decode(drover::plugins::Source::Admin, device("t1"), http(HttpMethod::Put, "x"), body.as_bytes().to_vec())
        .await
        .map(|m| m.info)
}

fn fault(r: Result<Vec<(String, String)>, CallError>) -> (Fault, String) {
    match r {
        Err(CallError::Fault(f)) => (f.fault.clone(), f.to_string()),
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[tokio::test]
async fn android_describes_itself_through_wasm() {
    let p = load_android().await;
    let info = p.device_type_info().unwrap();
    assert_eq!(info.name, "android");
    assert!(info.operations.iter().any(|o| o.code == "POLICY_BUNDLE" && o.kind == OperationKind::Policy));
    assert_eq!(p.manifest.publisher, "drover");
}

#[tokio::test]
async fn android_decodes_a_real_poll_through_wasm() {
    let p = load_android().await;
    let m = p
        .decode(
            drover::plugins::Source::Admin,
            device("354956090214718"),
            http(HttpMethod::Put, "devices/354956090214718/pending-operations"),
            fixture("results.json"),
        )
        .await
        .unwrap();
    let got: Vec<(u64, ResultStatus)> = m.results.iter().map(|r| (r.operation_id, r.status)).collect();
    assert_eq!(
        got,
        vec![
            (101, ResultStatus::Completed),
            (102, ResultStatus::Completed),
            (103, ResultStatus::Error),
            (104, ResultStatus::InProgress)
        ]
    );
    let loc: serde_json::Value = serde_json::from_str(m.results[1].response.as_deref().unwrap()).unwrap();
    assert_eq!(loc["latitude"], 6.9271);
}

#[tokio::test]
async fn android_encodes_exactly_the_fixture_through_wasm() {
    let p = load_android().await;
    let ops = vec![
        Operation {
            id: 105,
            code: "DEVICE_LOCK".into(),
            kind: OperationKind::Command,
            payload: Some(r#"{"message":"This device is locked by IT","hardLockEnabled":false}"#.into()),
        },
        Operation {
            id: 106,
            code: "CAMERA".into(),
            kind: OperationKind::Profile,
            payload: Some(r#"{"enabled":false}"#.into()),
        },
        Operation { id: 107, code: "DEVICE_RING".into(), kind: OperationKind::Command, payload: None },
    ];
    let e = p.encode(drover::plugins::Source::Admin, device("354956090214718"), ops, ChannelKind::Http).await.unwrap();
    assert_eq!(e.delivered, vec![105, 106, 107]);
    let Outbound::Http(resp) = e.output else { panic!("expected an HTTP response") };
    let got: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    let want: serde_json::Value = serde_json::from_slice(&fixture("pending.json")).unwrap();
    assert_eq!(got, want);
}

#[tokio::test]
async fn android_enrolls_and_validates_through_wasm() {
    let p = load_android().await;
    let e = p
        .enroll(drover::plugins::Source::Admin, http(HttpMethod::Post, "enroll"), fixture("enroll.json"))
        .await
        .unwrap();
    assert_eq!(e.device_id, "354956090214718");

    match p.validate("FLY_AWAY", None).await {
        Err(CallError::Rejected(e)) => {
            assert_eq!(e.code, ErrorCode::UnknownOperation);
            assert!(e.message.contains("FLY_AWAY"));
        }
        other => panic!("{other:?}"),
    }
    match p.validate("WIPE_DATA", Some(r#"{"pin":"12"}"#)).await {
        Err(CallError::Rejected(e)) => assert!(e.code == ErrorCode::Invalid && e.message.contains("pin"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    p.validate("NOTIFICATION", Some(r#"{"messageTitle":"Hi","messageText":"Update tonight"}"#)).await.unwrap();
    // A refused input is the plugin doing its job, not a fault.
    assert_eq!(p.stats().faults, 0);
}

#[tokio::test]
async fn malformed_device_input_is_a_clear_rejection() {
    let p = load_android().await;
    let r = p
        .decode(
            drover::plugins::Source::Admin,
            device("d"),
            http(HttpMethod::Put, "pending-operations"),
            b"[{\"id\": \"seven\"}]".to_vec(),
        )
        .await;
    match r {
        Err(CallError::Rejected(e)) => {
            assert!(e.code == ErrorCode::Malformed && e.message.contains("result 0"), "{e:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_call_gets_a_fresh_instance() {
    let p = load_testbed().await;
    for _ in 0..3 {
        assert_eq!(testbed_decode(&p, "count").await.unwrap(), vec![("count".into(), "1".into())]);
    }
}

#[tokio::test]
async fn host_imports_work_when_granted() {
    let p = load_testbed().await;
    assert_eq!(testbed_decode(&p, "config:greeting").await.unwrap(), vec![("greeting".into(), "hello".into())]);
    assert_eq!(testbed_decode(&p, "kv:colour=teal").await.unwrap(), vec![("colour".into(), "teal".into())]);
    assert!(testbed_decode(&p, "log").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_infinite_loop_hits_the_cpu_limit_and_the_host_goes_on() {
    let p = load_testbed().await;
    let (f, msg) = fault(testbed_decode(&p, "spin").await);
    assert_eq!(f, Fault::CpuTime(Limits::default().cpu));
    assert!(msg.contains("testbed@0.1.0") && msg.contains("`decode`") && msg.contains("CPU time limit"), "{msg}");
    // The same plugin and the others keep serving.
    assert_eq!(testbed_decode(&p, "ok").await.unwrap(), vec![("echo".into(), "ok".into())]);
    load_android().await.validate("DEVICE_RING", None).await.unwrap();
    let s = p.stats();
    assert_eq!((s.faults, s.cpu_limit_hits), (1, 1));
}

#[tokio::test]
async fn a_1_gib_allocation_hits_the_memory_limit() {
    let p = load_testbed().await;
    let (f, msg) = fault(testbed_decode(&p, "alloc").await);
    assert_eq!(f, Fault::Memory(Limits::default().memory));
    assert!(msg.contains("testbed@0.1.0") && msg.contains("memory limit of 256 MiB"), "{msg}");
    assert_eq!(testbed_decode(&p, "ok").await.unwrap().len(), 1);
    assert_eq!(p.stats().memory_limit_hits, 1);
}

#[tokio::test]
async fn a_panic_is_a_trap_and_the_host_goes_on() {
    let p = load_testbed().await;
    let (f, msg) = fault(testbed_decode(&p, "trap").await);
    assert!(matches!(f, Fault::Trap(_)), "{f:?}");
    assert!(msg.contains("testbed@0.1.0") && msg.contains("trapped"), "{msg}");
    assert_eq!(testbed_decode(&p, "ok").await.unwrap().len(), 1);
    assert_eq!(p.stats().traps, 1);
}

#[tokio::test]
async fn a_100_mb_answer_hits_the_output_limit() {
    let p = load_testbed().await;
    let (f, msg) = fault(testbed_decode(&p, "big").await);
    assert!(
        matches!(f, Fault::Output { size, limit } if size > 100 << 20 && limit == Limits::default().output),
        "{f:?}"
    );
    assert!(msg.contains("output limit"), "{msg}");
    assert_eq!(p.stats().output_limit_hits, 1);
}

#[tokio::test]
async fn the_wall_clock_limit_ends_a_call_that_outlives_it() {
    // A generous CPU budget and a short wall clock: the yield at each epoch tick lets
    // the timeout fire even though the guest never calls the host.
    let limits = Limits {
        cpu: std::time::Duration::from_secs(10),
        wall: std::time::Duration::from_millis(100),
        ..Limits::default()
    };
    let rt = Runtime::new(limits, Some(drover_tests::cache_dir())).unwrap();
    let p = rt.load(&component(components::TESTBED), testbed_grants()).await.unwrap();
    let (f, msg) = fault(testbed_decode(&p, "spin").await);
    assert_eq!(f, Fault::WallClock(limits.wall));
    assert!(msg.contains("wall-clock limit of 100 ms"), "{msg}");
}

#[tokio::test]
async fn a_spinning_plugin_does_not_starve_other_calls() {
    // A 10 s budget leaves a wide margin on a slow, loaded machine: the spinner must
    // still be running when the other calls are done, and is then cancelled.
    let limits = Limits {
        cpu: std::time::Duration::from_secs(10),
        wall: std::time::Duration::from_secs(20),
        ..Limits::default()
    };
    let rt = Runtime::new(limits, Some(drover_tests::cache_dir())).unwrap();
    let p = Arc::new(rt.load(&component(components::TESTBED), testbed_grants()).await.unwrap());
    let android = Arc::new(load_android().await);
    let spinner = tokio::spawn({
        let p = p.clone();
        async move { testbed_decode(&p, "spin").await }
    });
    // While it spins, other calls complete.
    for _ in 0..20 {
        android.validate("DEVICE_RING", None).await.unwrap();
    }
    assert!(!spinner.is_finished(), "the spinner should still be running");
    // A spinning call yields at every epoch tick, so it can be cancelled.
    spinner.abort();
    assert!(spinner.await.unwrap_err().is_cancelled());
}

/// Every instance slot in use is back-pressure, not a fault of the plugin (issue 21, item
/// 3): the call is refused at once as `Busy` (503 with Retry-After at the API), counted as
/// busy and never as a fault, so a burst of traffic cannot trip the breaker.
#[tokio::test]
async fn every_instance_slot_in_use_is_back_pressure_not_a_fault() {
    let limits = Limits {
        cpu: std::time::Duration::from_secs(10),
        wall: std::time::Duration::from_secs(20),
        concurrency: 1,
        ..Limits::default()
    };
    let rt = Runtime::new(limits, Some(drover_tests::cache_dir())).unwrap();
    let p = Arc::new(rt.load(&component(components::TESTBED), testbed_grants()).await.unwrap());
    let spinner = tokio::spawn({
        let p = p.clone();
        async move { testbed_decode(&p, "spin").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!spinner.is_finished(), "the spinner holds the only slot");
    let (f, msg) = fault(testbed_decode(&p, "hello").await);
    assert_eq!(f, Fault::Busy(1));
    assert!(msg.contains("instance slots are in use"), "{msg}");
    let stats = p.stats();
    assert_eq!((stats.busy, stats.faults, stats.charged_faults), (1, 0, 0), "{stats:?}");
    spinner.abort();
    let _ = spinner.await;
    // The slot is free again.
    assert!(testbed_decode(&p, "hello").await.is_ok());
}

async fn refusal(bytes: &[u8], options: LoadOptions) -> String {
    match runtime().load(bytes, options).await {
        Ok(p) => panic!("{} loaded but should have been refused", p.label()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn filesystem_imports_without_a_grant_are_refused() {
    let clock = LoadOptions { grants: [Capability::Clock].into(), ..Default::default() };
    let msg = refusal(&component(components::FS_READER), clock).await;
    assert!(
        msg.contains("fs-reader@0.1.0") && msg.contains("wasi:filesystem") && msg.contains("`filesystem`"),
        "{msg}"
    );
}

#[tokio::test]
async fn socket_imports_without_a_grant_are_refused() {
    let msg = refusal(&component(components::NET_DIALER), LoadOptions::default()).await;
    assert!(msg.contains("net-dialer@0.1.0") && msg.contains("wasi:sockets") && msg.contains("`network`"), "{msg}");
}

#[tokio::test]
async fn requested_but_not_granted_capabilities_are_refused() {
    let msg = refusal(&component(components::TESTBED), LoadOptions::default()).await;
    assert!(msg.contains("testbed@0.1.0") && msg.contains("not granted"), "{msg}");
}

#[tokio::test]
async fn the_wrong_world_is_refused() {
    let msg = refusal(&component(components::WRONG_WORLD), LoadOptions::default()).await;
    assert!(msg.contains("wrong-world@0.1.0") && msg.contains("world drover:plugin/device-type"), "{msg}");
}

#[tokio::test]
async fn another_contract_version_is_refused() {
    let grants = LoadOptions { grants: [Capability::Log].into(), ..Default::default() };
    let msg = refusal(&component(components::OLD_CONTRACT), grants).await;
    assert!(msg.contains("old-contract@0.1.0") && msg.contains("drover:plugin@0.2.0"), "{msg}");
}

#[tokio::test]
async fn a_smoke_test_that_spins_fails_the_load() {
    let mut options = testbed_grants();
    options.config.insert("describe".into(), "spin".into());
    let msg = refusal(&component(components::TESTBED), options).await;
    assert!(msg.contains("smoke test failed") && msg.contains("CPU time limit"), "{msg}");
}

#[tokio::test]
async fn not_a_component_is_refused() {
    let msg = refusal(b"\0asm but not really", LoadOptions::default()).await;
    assert!(msg.contains("not valid WebAssembly"), "{msg}");
}

#[tokio::test]
async fn compiled_artifacts_are_cached_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(Limits::default(), Some(dir.path().to_path_buf())).unwrap();
    let first = rt.load(android(), LoadOptions::default()).await.unwrap();
    let second = rt.load(android(), LoadOptions::default()).await.unwrap();
    assert_eq!(serde_json::to_value(first.load.cache).unwrap(), "compiled");
    assert_eq!(serde_json::to_value(second.load.cache).unwrap(), "hit");
    // A damaged artifact is dropped and recompiled, never trusted.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let third = rt.load(android(), LoadOptions::default()).await.unwrap();
    assert_eq!(serde_json::to_value(third.load.cache).unwrap(), "compiled");
    third.validate("DEVICE_RING", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_isolated() {
    let p = Arc::new(load_android().await);
    let calls = (0..64).map(|i| {
        let p = p.clone();
        tokio::spawn(async move {
            let body = format!(r#"[{{"id":{i},"code":"DEVICE_RING","status":"COMPLETED"}}]"#);
            p.decode(
                drover::plugins::Source::Admin,
                device("d"),
                http(HttpMethod::Put, "pending-operations"),
                body.into_bytes(),
            )
            .await
            .unwrap()
            .results[0]
                .operation_id
        })
    });
    let mut ids = Vec::new();
    for c in calls {
        ids.push(c.await.unwrap());
    }
    assert_eq!(ids, (0..64).collect::<Vec<u64>>());
}

/// Every first-party device type passes its recorded payloads (`plugins/*/fixtures`,
/// as `drover plugin test` runs them) through its real compiled component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_party_device_types_pass_their_fixtures() {
    let mut checked = Vec::new();
    for (name, bytes) in drover::plugins::first_party::PLUGINS {
        let dir = std::path::PathBuf::from(format!("{}/../plugins/{name}/fixtures", env!("CARGO_MANIFEST_DIR")));
        if !dir.join("cases.toml").exists() {
            continue;
        }
        let manifest = drover::plugins::Manifest::from_component(bytes).unwrap();
        let options = LoadOptions { grants: manifest.capabilities.iter().copied().collect(), ..Default::default() };
        let plugin = runtime().load(bytes, options).await.unwrap();
        let outcomes = drover::plugins::fixtures::run(&plugin, &dir).await.unwrap();
        let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
        assert!(failed.is_empty(), "{name}: {failed:#?}");
        checked.push(*name);
    }
    for name in ["android", "esp8266", "ios", "windows", "lwm2m"] {
        assert!(checked.contains(&name), "{name} has fixtures: {checked:?}");
    }
}
