//! Wake-up end to end: a device with a push token gets an operation, Drover asks its
//! transport plugin (fcm, apns, wns, webhook: the real first-party components) for the
//! provider request and sends it to a real HTTP server on loopback standing in for the
//! provider (through an admin's redirect), which records it. Asserted: the exact
//! requests, grants, retry with backoff, invalid tokens, and that operations stay
//! PENDING until the device polls.

use drover_tests::provider::{Provider, Tls};
use drover_tests::{TestServer, components, e2e, unique};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../plugins/android/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Enroll an Android device whose agent reports FCM token `fcm`; returns its credential.
async fn enroll_android(server: &TestServer, id: &str, fcm: &str) -> String {
    let body = fixture("enroll.json")
        .replace("354956090214718", id)
        .replace(r#""properties": ["#, &format!(r#""properties": [{{"name": "FCM_TOKEN", "value": "{fcm}"}},"#));
    let r = server.http.post(server.url("/agent/v1/android/enroll")).body(body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
}

/// An Android device's poll with no results; returns the operations it got.
async fn poll(server: &TestServer, id: &str, token: &str) -> Value {
    let r = server.poll_android(id, token, "[]").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn settings(server: &TestServer, plugin: &str, body: Value) -> reqwest::Response {
    server.admin(Method::PUT, &format!("/api/v1/plugins/{plugin}/settings")).json(&body).send().await.unwrap()
}

/// Add `code` for one device; returns the operation id.
async fn add(server: &TestServer, device_type: &str, id: &str, code: &str) -> i64 {
    let r = server
        .admin(Method::POST, "/api/v1/operations")
        .json(&json!({"code": code, "targets": {"devices": [{"type": device_type, "id": id}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let activity = r.json::<Value>().await.unwrap()["activity"]["id"].as_i64().unwrap();
    get(server, &format!("/api/v1/operations?activity={activity}")).await["items"][0]["id"]
        .as_i64()
        .expect("operation id")
}

async fn get(server: &TestServer, path: &str) -> Value {
    server.admin(Method::GET, path).send().await.unwrap().json().await.unwrap()
}

/// Wait (bounded) until the device's wake-up is in `state`.
async fn until_wakeup(server: &TestServer, device: &str, state: &str) -> Value {
    until_device(server, device, &format!("wake-up state {state}"), |d| d["wake_up"]["state"] == state).await
}

/// Wait (bounded) until the device's record (`type/id`) satisfies `done`; the record.
async fn until_device(server: &TestServer, device: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let d = get(server, &format!("/api/v1/devices/{device}")).await;
        if done(&d) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{device} never reached {what}: {}", get(server, &format!("/api/v1/devices/{device}")).await);
}

async fn fcm_settings(server: &TestServer, provider: &Provider) {
    let r = settings(
        server,
        "fcm",
        json!({
            "config": {"project_id": "drover-test", "access_token": "ya29.test-token"},
            "granted_hosts": ["fcm.googleapis.com"],
            "redirects": {"fcm.googleapis.com": provider.base},
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

/// FCM: the exact HTTP v1 request; the operation stays PENDING until the device polls.
async fn fcm_wakes_an_android_device(server: &TestServer) {
    let provider = Provider::start(vec![]).await;
    fcm_settings(server, &provider).await;
    let id = unique("fcm");
    let token = enroll_android(server, &id, "dK3x:APA91bHun4MxP5egoKMwt2KZFBaFUH").await;
    let d = get(server, &format!("/api/v1/devices/android/{id}")).await;
    assert_eq!(d["push_transport"], "fcm");
    assert!(d["metadata"].get("FCM_TOKEN").is_none(), "the token is not shown as metadata: {d}");

    let op = add(server, "android", &id, "DEVICE_RING").await;
    let got = provider.wait_for(1).await;
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/v1/projects/drover-test/messages:send");
    assert_eq!(r.header("authorization"), Some("Bearer ya29.test-token"));
    assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(
        r.json(),
        json!({"message": {
            "token": "dK3x:APA91bHun4MxP5egoKMwt2KZFBaFUH",
            "data": {"drover": "wake-up", "device_type": "android", "device_id": id},
            "android": {"priority": "high"},
        }})
    );
    let d = until_wakeup(server, &format!("android/{id}"), "sent").await;
    assert_eq!(d["wake_up"]["attempts"], 1);
    assert_eq!(get(server, &format!("/api/v1/operations/{op}")).await["state"], "PENDING");

    // Woken, the device polls and gets its operation.
    let ops = poll(server, &id, &token).await;
    assert_eq!(ops[0]["id"], op);
    assert_eq!(get(server, &format!("/api/v1/operations/{op}")).await["state"], "IN_PROGRESS");
    // Nothing is pending now: no second wake-up went out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(provider.received().len(), 1);
    let metrics = server.admin(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == r#"drover_wakeup_attempts_total{transport="fcm",outcome="sent"} 1"#),
        "{metrics}"
    );
}
e2e!(fcm_wake_up, super::fcm_wakes_an_android_device);

/// A device woken a moment ago that has not called in is not woken again for the next
/// activity (it gets everything when it calls in); after it called in, the next activity
/// wakes it at once.
async fn one_push_per_call_in(server: &TestServer) {
    let provider = Provider::start(vec![]).await;
    fcm_settings(server, &provider).await;
    let id = unique("once");
    let token = enroll_android(server, &id, "tok-once").await;
    // Last seen an hour ago: a phone asleep in a drawer.
    server.sql(&format!("UPDATE devices SET last_seen_at = last_seen_at - 3600000 WHERE device_id = '{id}'")).await;
    let first = add(server, "android", &id, "DEVICE_RING").await;
    provider.wait_for(1).await;
    let d = until_wakeup(server, &format!("android/{id}"), "sent").await;
    let pushed_at = d["wake_up"]["last_attempt_at"].as_i64().unwrap();

    let second = add(server, "android", &id, "DEVICE_LOCK").await;
    let d = until_wakeup(server, &format!("android/{id}"), "deferred").await;
    assert_eq!(d["wake_up"]["due_at"].as_i64(), Some(pushed_at + 60_000), "{d}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.received().len(), 1, "woken twice before calling in");

    // It calls in and gets both.
    let ops = poll(server, &id, &token).await;
    let ids: Vec<i64> = ops.as_array().unwrap().iter().filter_map(|o| o["id"].as_i64()).collect();
    assert_eq!(ids, vec![first, second]);

    // Having called in, it is woken at once for the next one.
    add(server, "android", &id, "DEVICE_MUTE").await;
    provider.wait_for(2).await;
    until_wakeup(server, &format!("android/{id}"), "sent").await;

    // A device that does not call in (the push was lost) is woken again when its minute
    // is up: here the minute is made to have passed.
    let id = unique("lost");
    enroll_android(server, &id, "tok-lost").await;
    server.sql(&format!("UPDATE devices SET last_seen_at = last_seen_at - 3600000 WHERE device_id = '{id}'")).await;
    add(server, "android", &id, "DEVICE_RING").await;
    provider.wait_for(3).await;
    until_wakeup(server, &format!("android/{id}"), "sent").await;
    add(server, "android", &id, "DEVICE_LOCK").await;
    until_wakeup(server, &format!("android/{id}"), "deferred").await;
    server
        .sql(&format!(
            "UPDATE wakeups SET due_at = due_at - 60000, last_attempt_at = last_attempt_at - 60000
             WHERE device = (SELECT id FROM devices WHERE device_id = '{id}')"
        ))
        .await;
    let got = provider.wait_for(4).await;
    assert_eq!(got[3].json()["message"]["token"], "tok-lost");
    until_wakeup(server, &format!("android/{id}"), "sent").await;
}
e2e!(one_push_per_call_in, super::one_push_per_call_in);

/// A provider that fails is retried with backoff; the operation stays PENDING.
async fn provider_failures_are_retried(server: &TestServer) {
    let provider = Provider::start(vec![
        (
            503,
            vec![],
            r#"{"error":{"code":503,"status":"UNAVAILABLE","message":"The service is currently unavailable."}}"#,
        ),
        (500, vec![], ""),
    ])
    .await;
    fcm_settings(server, &provider).await;
    let id = unique("retry");
    enroll_android(server, &id, "tok-retry").await;
    let op = add(server, "android", &id, "DEVICE_RING").await;
    let got = provider.wait_for(3).await;
    // Backoff: about 1 s, then about 2 s (each with up to 10% jitter).
    let (first, second) = (got[1].at - got[0].at, got[2].at - got[1].at);
    assert!(first >= Duration::from_millis(950) && first < Duration::from_millis(1800), "{first:?}");
    assert!(second >= Duration::from_millis(1950) && second < Duration::from_millis(3300), "{second:?}");
    assert!(got.iter().all(|r| r.json()["message"]["token"] == "tok-retry"));
    let d = until_wakeup(server, &format!("android/{id}"), "sent").await;
    assert_eq!(d["wake_up"]["attempts"], 3);
    assert_eq!(get(server, &format!("/api/v1/operations/{op}")).await["state"], "PENDING");

    // While retrying, the device record says why.
    let provider = Provider::start(vec![(503, vec![("retry-after", "30")], "")]).await;
    fcm_settings(server, &provider).await;
    let id = unique("later");
    enroll_android(server, &id, "tok-later").await;
    add(server, "android", &id, "DEVICE_RING").await;
    provider.wait_for(1).await;
    // The row is `scheduled` before the attempt too: wait for the attempt's record.
    let device = format!("android/{id}");
    until_wakeup(server, &device, "scheduled").await;
    let d = until_device(server, &device, "a recorded attempt", |d| d["wake_up"]["last_attempt_at"].is_i64()).await;
    let due = d["wake_up"]["due_at"].as_i64().unwrap() - d["wake_up"]["last_attempt_at"].as_i64().unwrap();
    assert!((29_000..=31_000).contains(&due), "Retry-After 30 s honoured: {d}");
    assert!(d["wake_up"]["last_error"].as_str().unwrap().contains("503"), "{d}");
}
e2e!(provider_retry, super::provider_failures_are_retried);

/// A token the provider refuses is forgotten until the device reports a new one.
async fn invalid_tokens_are_forgotten(server: &TestServer) {
    let unregistered = r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
    let provider = Provider::start(vec![(404, vec![], unregistered)]).await;
    fcm_settings(server, &provider).await;
    let id = unique("stale");
    let credential = enroll_android(server, &id, "stale-token").await;
    let op = add(server, "android", &id, "DEVICE_RING").await;
    provider.wait_for(1).await;
    until_wakeup(server, &format!("android/{id}"), "failed").await;
    // Read again: one GET reads the device row before its wake-up row, and the token is
    // forgotten just before the wake-up is marked failed.
    let d = get(server, &format!("/api/v1/devices/android/{id}")).await;
    assert!(d["push_transport"].is_null(), "{d}");
    assert!(d["wake_up"]["last_error"].as_str().unwrap().contains("UNREGISTERED"), "{d}");
    assert_eq!(get(server, &format!("/api/v1/operations/{op}")).await["state"], "PENDING");

    // The agent reports a fresh token (device info); the next operation wakes it with it.
    let r = server
        .http
        .put(server.url(&format!("/agent/v1/android/devices/{id}/info")))
        .bearer_auth(&credential)
        .body(r#"{"properties": [{"name": "FCM_TOKEN", "value": "fresh-token"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    add(server, "android", &id, "DEVICE_LOCK").await;
    let got = provider.wait_for(2).await;
    assert_eq!(got[1].json()["message"]["token"], "fresh-token");
    until_wakeup(server, &format!("android/{id}"), "sent").await;
}
e2e!(invalid_token, super::invalid_tokens_are_forgotten);

/// Nothing goes to a host an admin has not granted; granting it lets the retry through.
async fn only_granted_hosts_are_contacted(server: &TestServer) {
    let provider = Provider::start(vec![]).await;
    // A grant outside what the manifest declares is refused, naming the host.
    let r = settings(server, "fcm", json!({"granted_hosts": ["evil.example"]})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("evil.example"));
    let r =
        settings(server, "fcm", json!({"granted_hosts": [], "redirects": {"fcm.googleapis.com": provider.base}})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a redirect for an ungranted host");

    let r = settings(server, "fcm", json!({"config": {"project_id": "drover-test", "access_token": "t"}})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let shown = get(server, "/api/v1/plugins/fcm/settings").await;
    assert_eq!(shown["config"], json!({"project_id": "drover-test", "access_token": "***"}), "secrets are not shown");
    let id = unique("grant");
    enroll_android(server, &id, "tok-grant").await;
    add(server, "android", &id, "DEVICE_RING").await;
    let device = format!("android/{id}");
    until_wakeup(server, &device, "scheduled").await;
    let d = until_device(server, &device, "a recorded error", |d| d["wake_up"]["last_error"].is_string()).await;
    assert!(d["wake_up"]["last_error"].as_str().unwrap().contains("not granted"), "{d}");
    assert!(provider.received().is_empty());

    fcm_settings(server, &provider).await;
    provider.wait_for(1).await;
    until_wakeup(server, &format!("android/{id}"), "sent").await;
}
e2e!(granted_hosts, super::only_granted_hosts_are_contacted);

/// A device of the testbed type (hot-loaded) reporting a push token of `transport`.
async fn testbed_device(server: &TestServer, transport_token: &str) -> String {
    testbed_device_in(server, transport_token, None).await
}

/// A testbed device enrolled with `enrollment_token` (into its tenant), or without one
/// (into `default`), that reported `transport_token`.
async fn testbed_device_in(server: &TestServer, transport_token: &str, enrollment_token: Option<&str>) -> String {
    if server.state.registry.device_type("testbed").is_none() {
        let testbed = drover_tests::component(components::TESTBED);
        server.install_signed("testbed", "drover-tests", &["log", "kv", "config"], &testbed).await;
    }
    let id = unique("tb");
    let mut enroll = server.http.post(server.url("/agent/v1/testbed/enroll")).body(id.clone());
    if let Some(t) = enrollment_token {
        enroll = enroll.bearer_auth(t);
    }
    let r = enroll.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let credential = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let r = server
        .http
        .post(server.url("/agent/v1/testbed/checkin"))
        .bearer_auth(&credential)
        .body(format!("token:{transport_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    id
}

/// APNs, WNS and the generic webhook: the exact provider requests.
async fn apns_wns_and_webhook_requests(server: &TestServer) {
    // APNs: the MDM push, token from TokenUpdate's base64 form turned into hex.
    let apns = Provider::start(vec![]).await;
    let r = settings(
        server,
        "apns",
        json!({"granted_hosts": ["api.push.apple.com"], "redirects": {"api.push.apple.com": apns.base}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let id = testbed_device(
        server,
        "apns:3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs=|PushMagic=4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90|Topic=com.apple.mgmt.External.2b6d1f0e",
    )
    .await;
    add(server, "testbed", &id, "ECHO").await;
    let r = &apns.wait_for(1).await[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/3/device/deadbeef000102030405060708090a0b0c0d0e0f101112131415161718191a1b");
    assert_eq!(r.header("apns-push-type"), Some("mdm"));
    assert_eq!(r.header("apns-topic"), Some("com.apple.mgmt.External.2b6d1f0e"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    assert_eq!(r.json(), json!({"mdm": "4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90"}));
    until_wakeup(server, &format!("testbed/{id}"), "sent").await;

    // WNS: a raw push to the device's channel URI (any *.notify.windows.com host granted).
    let wns = Provider::start(vec![(200, vec![("x-wns-status", "received")], "")]).await;
    let r = settings(
        server,
        "wns",
        json!({
            "config": {"access_token": "EgAaAQMAAAAEgAAAC"},
            "granted_hosts": ["*.notify.windows.com"],
            "redirects": {"db5p.notify.windows.com": wns.base},
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let id = testbed_device(server, "wns:https://db5p.notify.windows.com/?token=AwYAAABvX2bZ").await;
    add(server, "testbed", &id, "ECHO").await;
    let r = &wns.wait_for(1).await[0];
    assert_eq!(r.uri, "/?token=AwYAAABvX2bZ");
    assert_eq!(r.header("x-wns-type"), Some("wns/raw"));
    assert_eq!(r.header("authorization"), Some("Bearer EgAaAQMAAAAEgAAAC"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, b"wake-up");
    until_wakeup(server, &format!("testbed/{id}"), "sent").await;

    // Webhook: JSON to the admin's endpoint, with the shared secret.
    let hook = Provider::start(vec![(204, vec![], "")]).await;
    let r = settings(
        server,
        "webhook",
        json!({
            "config": {"url": "https://hooks.example.com/drover/wake", "secret": "s3cret"},
            "granted_hosts": ["hooks.example.com"],
            "redirects": {"hooks.example.com": hook.base},
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let id = testbed_device(server, "webhook:gw-7|gateway=lora-3").await;
    add(server, "testbed", &id, "ECHO").await;
    let r = &hook.wait_for(1).await[0];
    assert_eq!(r.uri, "/drover/wake");
    assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(
        r.json(),
        json!({"event": "wake-up", "device_type": "testbed", "device_id": id, "token": "gw-7",
               "extra": {"gateway": "lora-3"}, "payload": null})
    );
    until_wakeup(server, &format!("testbed/{id}"), "sent").await;
}
e2e!(transports, super::apns_wns_and_webhook_requests);

/// A certificate authority in a temporary directory, and certificates it issues (EC P-256),
/// made by the openssl command-line tool.
struct Pki(tempfile::TempDir);

impl Pki {
    fn new() -> Pki {
        let pki = Pki(tempfile::tempdir().unwrap());
        pki.openssl(
            &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
                .into_iter()
                .chain(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Drover test CA"])
                .collect::<Vec<_>>(),
        );
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl").args(args).current_dir(self.0.path()).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.path().join(file)).unwrap()
    }

    fn ca(&self) -> String {
        self.read("ca.pem")
    }

    /// A certificate for `subject` with `extensions` (openssl's extension file syntax);
    /// returns (certificate, private key), PEM.
    fn issue(&self, name: &str, subject: &str, extensions: &str) -> (String, String) {
        let (key, csr, cert, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        std::fs::write(self.0.path().join(&ext), extensions).unwrap();
        self.openssl(
            &["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
                .into_iter()
                .chain(["-keyout", &key, "-out", &csr, "-subj", subject])
                .collect::<Vec<_>>(),
        );
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ]);
        (self.read(&cert), self.read(&key))
    }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// APNs takes an MDM push only over HTTP/2 from a client presenting the MDM push
/// certificate. The provider here is the same: TLS, ALPN `h2` only, a client certificate
/// required. Without the identity the handshake is refused and the wake-up retried; once an
/// admin sets it, the retry presents it. The API never shows the key.
async fn apns_presents_the_push_certificate(server: &TestServer) {
    let pki = Pki::new();
    let (provider_cert, provider_key) =
        pki.issue("provider", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    let (push_cert, push_key) =
        pki.issue("push", "/UID=com.apple.mgmt.External.2b6d1f0e/CN=APSP:2b6d1f0e", "extendedKeyUsage=clientAuth\n");
    let apns = Provider::start_tls(
        vec![],
        Tls { cert: provider_cert.clone(), key: provider_key.clone(), client_ca: pki.ca() },
    )
    .await;
    let mut body = json!({
        "config": {"auth_token": "eyJhbGciOiJFUzI1NiJ9.test"},
        "granted_hosts": ["api.push.apple.com"],
        "redirects": {"api.push.apple.com": apns.base},
        "trusted_ca": pki.ca(),
    });
    let r = settings(server, "apns", body.clone()).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let token = "apns:3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs=|PushMagic=4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90|Topic=com.apple.mgmt.External.2b6d1f0e";
    let id = testbed_device(server, token).await;
    add(server, "testbed", &id, "ECHO").await;

    // No client certificate: the provider refuses the handshake; the wake-up waits to retry.
    let d = until_wakeup(server, &format!("testbed/{id}"), "scheduled").await;
    for _ in 0..300 {
        if apns.refused() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(apns.refused() > 0 && apns.received().is_empty(), "{d}");

    body["client_identity"] = json!(format!("{push_cert}{push_key}"));
    let r = settings(server, "apns", body.clone()).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = &apns.wait_for(1).await[0];
    assert_eq!(r.version, "HTTP/2.0");
    assert_eq!(r.client_certificate.as_deref(), Some(der(&push_cert).as_slice()));
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/3/device/deadbeef000102030405060708090a0b0c0d0e0f101112131415161718191a1b");
    assert_eq!(r.header("apns-push-type"), Some("mdm"));
    assert_eq!(r.header("apns-topic"), Some("com.apple.mgmt.External.2b6d1f0e"));
    assert_eq!(r.json(), json!({"mdm": "4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90"}));
    until_wakeup(server, &format!("testbed/{id}"), "sent").await;

    // The API shows the certificate, never the key, and `***` for a secret config value;
    // writing back what it shows keeps both.
    let shown = get(server, "/api/v1/plugins/apns/settings").await;
    assert_eq!(shown["config"]["auth_token"], "***");
    let identity = shown["client_identity"].as_str().unwrap();
    assert!(identity.contains("BEGIN CERTIFICATE") && !identity.contains("PRIVATE KEY"), "{identity}");
    assert_eq!(der(identity), der(&push_cert));
    let r = settings(server, "apns", shown.clone()).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let id = testbed_device(server, token).await;
    add(server, "testbed", &id, "ECHO").await;
    let r = &apns.wait_for(2).await[1];
    assert_eq!(r.client_certificate.as_deref(), Some(der(&push_cert).as_slice()));
    assert_eq!(r.header("authorization"), Some("bearer eyJhbGciOiJFUzI1NiJ9.test"));

    // Bad input names the setting, and nothing changes.
    let mut wrong = body.clone();
    wrong["client_identity"] = json!(format!("{push_cert}{provider_key}"));
    let r = settings(server, "apns", wrong).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e = r.text().await.unwrap();
    assert!(e.contains("client_identity"), "{e}");
    // A certificate without its key (not the one stored, whose key would be kept).
    let mut wrong = body.clone();
    wrong["client_identity"] = json!(provider_cert);
    let e = settings(server, "apns", wrong).await.text().await.unwrap();
    assert!(e.contains("client_identity") && e.contains("private key"), "{e}");
    let mut wrong = body.clone();
    wrong["trusted_ca"] = json!("not a certificate");
    let r = settings(server, "apns", wrong).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("trusted_ca"));
    assert_eq!(get(server, "/api/v1/plugins/apns/settings").await, shown);
}
e2e!(apns_client_identity, super::apns_presents_the_push_certificate);

/// An MSP's customers each push with their own MDM push certificate and provider token:
/// a tenant's admin sets them for the tenant's devices, over the server's settings. A wake-up
/// of Acme's device presents Acme's certificate and token, one of a `default` device the
/// server's, and neither tenant's reaches the other's calls (this fails with the settings
/// looked up by plugin alone). Writing back what the API shows keeps Acme's secrets.
async fn each_tenant_pushes_with_its_own_certificate(server: &TestServer) {
    let pki = Pki::new();
    let (provider_cert, provider_key) =
        pki.issue("provider", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    let (server_cert, server_key) =
        pki.issue("server-push", "/UID=com.apple.mgmt.External.server/CN=APSP:server", "extendedKeyUsage=clientAuth\n");
    let (acme_cert, acme_key) =
        pki.issue("acme-push", "/UID=com.apple.mgmt.External.acme/CN=APSP:acme", "extendedKeyUsage=clientAuth\n");
    let apns = Provider::start_tls(vec![], Tls { cert: provider_cert, key: provider_key, client_ca: pki.ca() }).await;
    let r = settings(
        server,
        "apns",
        json!({
            "config": {"auth_token": "server-token"},
            "granted_hosts": ["api.push.apple.com"],
            "redirects": {"api.push.apple.com": apns.base},
            "trusted_ca": pki.ca(),
            "client_identity": format!("{server_cert}{server_key}"),
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = server.admin(Method::POST, "/api/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let acme_settings = "/api/v1/tenants/acme/plugins/apns/settings";
    let r = server
        .admin(Method::PUT, acme_settings)
        .json(&json!({"config": {"auth_token": "acme-token"}, "client_identity": format!("{acme_cert}{acme_key}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    // A device of `default` (which installs the testbed type), then Acme's token.
    let token = "apns:3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs=|PushMagic=4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90|Topic=com.apple.mgmt.External.2b6d1f0e";
    let plain = testbed_device(server, token).await;
    let r = server
        .admin(Method::POST, "/api/v1/enrollment-tokens")
        .json(&json!({"device_type": "testbed", "tenant": "acme", "uses": 2}))
        .send()
        .await
        .unwrap();
    let enrollment: Value = r.json().await.unwrap();
    let enrollment = enrollment["token"].as_str().unwrap().to_string();
    let acme_device = testbed_device_in(server, token, Some(&enrollment)).await;
    assert_eq!(get(server, &format!("/api/v1/devices/testbed/{acme_device}")).await["tenant"], "acme");
    add(server, "testbed", &acme_device, "ECHO").await;
    let sent = apns.wait_for(1).await;
    assert_eq!(sent[0].client_certificate.as_deref(), Some(der(&acme_cert).as_slice()), "Acme's certificate");
    assert_eq!(sent[0].header("authorization"), Some("bearer acme-token"));
    until_wakeup(server, &format!("testbed/{acme_device}"), "sent").await;

    add(server, "testbed", &plain, "ECHO").await;
    let sent = apns.wait_for(2).await;
    assert_eq!(sent[1].client_certificate.as_deref(), Some(der(&server_cert).as_slice()), "the server's certificate");
    assert_eq!(sent[1].header("authorization"), Some("bearer server-token"));

    // The API shows Acme's certificate without its key and its token as `***`; writing it
    // back keeps both.
    let shown = get(server, acme_settings).await;
    assert_eq!(shown["config"]["auth_token"], "***");
    assert!(!shown.to_string().contains("PRIVATE KEY"), "{shown}");
    let r = server.admin(Method::PUT, acme_settings).json(&shown).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again = testbed_device_in(server, token, Some(&enrollment)).await;
    add(server, "testbed", &again, "ECHO").await;
    let sent = apns.wait_for(3).await;
    assert_eq!(sent[2].client_certificate.as_deref(), Some(der(&acme_cert).as_slice()));
    assert_eq!(sent[2].header("authorization"), Some("bearer acme-token"));
}
e2e!(tenant_push_identity, super::each_tenant_pushes_with_its_own_certificate);

/// The `application/x-www-form-urlencoded` body of a request, as pairs.
fn form(r: &drover_tests::provider::Received) -> std::collections::BTreeMap<String, String> {
    let body = String::from_utf8(r.body.clone()).unwrap();
    reqwest::Url::parse(&format!("http://form/?{body}")).unwrap().query_pairs().into_owned().collect()
}

/// FCM access tokens live an hour: the host mints them from a Google service account key
/// (an RS256 assertion, RFC 7523), keeps them, and mints a new one when FCM answers 401.
/// WNS's come from OAuth client credentials. The plugin reads the token as config
/// `access_token`; the API never shows the key or the secret.
async fn provider_tokens_are_minted_and_renewed(server: &TestServer) {
    let keys = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(keys.path()).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"]);
    openssl(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    let private_key = std::fs::read_to_string(keys.path().join("sa.key")).unwrap();

    let token_endpoint = Provider::start(vec![
        (
            200,
            vec![("content-type", "application/json")],
            r#"{"access_token":"ya29.first","expires_in":3599,"token_type":"Bearer"}"#,
        ),
        (
            200,
            vec![("content-type", "application/json")],
            r#"{"access_token":"ya29.second","expires_in":3599,"token_type":"Bearer"}"#,
        ),
    ])
    .await;
    // FCM refuses the first token (revoked early): the host drops it and mints another.
    let fcm = Provider::start(vec![(401, vec![], r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#)]).await;
    let token_uri = format!("{}/token", token_endpoint.base);
    let service_account = json!({
        "type": "service_account",
        "project_id": "drover-test",
        "private_key_id": "3f1c0de5",
        "private_key": private_key,
        "client_email": "drover-push@drover-test.iam.gserviceaccount.com",
        "client_id": "104729384756",
        "token_uri": token_uri,
    });
    let body = json!({
        "config": {"project_id": "drover-test"},
        "granted_hosts": ["fcm.googleapis.com"],
        "redirects": {"fcm.googleapis.com": fcm.base},
        "oauth": {"service_account": service_account, "scope": "https://www.googleapis.com/auth/firebase.messaging"},
    });
    let r = settings(server, "fcm", body.clone()).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());

    let id = unique("oauth");
    enroll_android(server, &id, "tok-oauth").await;
    add(server, "android", &id, "DEVICE_RING").await;
    let sent = fcm.wait_for(2).await;
    assert_eq!(sent[0].header("authorization"), Some("Bearer ya29.first"));
    assert_eq!(sent[1].header("authorization"), Some("Bearer ya29.second"));
    until_wakeup(server, &format!("android/{id}"), "sent").await;

    // The exchange: a JWT bearer grant whose assertion openssl verifies with the public key.
    let exchanges = token_endpoint.received();
    assert_eq!(exchanges.len(), 2);
    assert_eq!(exchanges[0].uri, "/token");
    assert_eq!(exchanges[0].header("content-type"), Some("application/x-www-form-urlencoded"));
    let f = form(&exchanges[0]);
    assert_eq!(f["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
    let parts: Vec<&str> = f["assertion"].split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header, json!({"typ": "JWT", "alg": "RS256", "kid": "3f1c0de5"}));
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], "drover-push@drover-test.iam.gserviceaccount.com");
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/firebase.messaging");
    assert_eq!(claims["aud"], token_uri);
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 3600);
    std::fs::write(keys.path().join("signed"), format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(keys.path().join("sig"), b64.decode(parts[2]).unwrap()).unwrap();
    let verified = openssl(&["dgst", "-sha256", "-verify", "sa.pub", "-signature", "sig", "signed"]);
    assert!(verified.contains("Verified OK"), "{verified}");

    // The token is kept: another wake-up makes no exchange. Writing back what GET shows
    // (the key as `***`) keeps the key, and the token with it.
    let shown = get(server, "/api/v1/plugins/fcm/settings").await;
    assert_eq!(shown["oauth"]["service_account"]["private_key"], "***");
    assert_eq!(shown["oauth"]["service_account"]["client_email"], service_account["client_email"]);
    let r = settings(server, "fcm", shown.clone()).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let id = unique("oauth");
    enroll_android(server, &id, "tok-oauth-2").await;
    add(server, "android", &id, "DEVICE_RING").await;
    assert_eq!(fcm.wait_for(3).await[2].header("authorization"), Some("Bearer ya29.second"));
    assert_eq!(token_endpoint.received().len(), 2);

    // Bad input names the problem, and nothing changes.
    let mut wrong = body.clone();
    wrong["oauth"]["service_account"]["private_key"] =
        json!("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
    let r = settings(server, "fcm", wrong).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e = r.text().await.unwrap();
    assert!(e.contains("oauth.service_account.private_key"), "{e}");
    let mut wrong = body.clone();
    wrong["oauth"]["client_id"] = json!("also-this");
    let e = settings(server, "fcm", wrong).await.text().await.unwrap();
    assert!(e.contains("either `service_account`"), "{e}");
    assert_eq!(get(server, "/api/v1/plugins/fcm/settings").await, shown);

    // WNS: client credentials at the token endpoint, the token as the bearer.
    let live = Provider::start(vec![(
        200,
        vec![("content-type", "application/json")],
        r#"{"token_type":"bearer","access_token":"EgAcAQMAAAAALYAAY/c+Huwi3Fv4Ck10UrKNmtxRO6Njk2MgA=","expires_in":86400}"#,
    )])
    .await;
    let wns = Provider::start(vec![(200, vec![("x-wns-status", "received")], "")]).await;
    let r = settings(
        server,
        "wns",
        json!({
            "granted_hosts": ["*.notify.windows.com"],
            "redirects": {"db5p.notify.windows.com": wns.base},
            "oauth": {
                "token_url": format!("{}/accesstoken.srf", live.base),
                "client_id": "ms-app://s-1-15-2-2972962901-2322836549",
                "client_secret": "Vex8L9WOFZuj95euaLrvSH7XyoDhLJc7",
                "scope": "notify.windows.com",
            },
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(get(server, "/api/v1/plugins/wns/settings").await["oauth"]["client_secret"], "***");
    let id = testbed_device(server, "wns:https://db5p.notify.windows.com/?token=AwYAAABvX2bZ").await;
    add(server, "testbed", &id, "ECHO").await;
    let push = &wns.wait_for(1).await[0];
    assert_eq!(push.header("authorization"), Some("Bearer EgAcAQMAAAAALYAAY/c+Huwi3Fv4Ck10UrKNmtxRO6Njk2MgA="));
    let exchange = &live.received()[0];
    assert_eq!(exchange.uri, "/accesstoken.srf");
    assert_eq!(
        form(exchange),
        [
            ("client_id", "ms-app://s-1-15-2-2972962901-2322836549"),
            ("client_secret", "Vex8L9WOFZuj95euaLrvSH7XyoDhLJc7"),
            ("grant_type", "client_credentials"),
            ("scope", "notify.windows.com"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    );
    until_wakeup(server, &format!("testbed/{id}"), "sent").await;
}
e2e!(provider_tokens, super::provider_tokens_are_minted_and_renewed);

/// An admin who replaces the settings while a token exchange is under way wins: the token
/// minted under the old settings is not used, and does not stay in the plugin's config.
async fn settings_changed_during_an_exchange_stand(server: &TestServer) {
    let token_endpoint = Provider::start(vec![(
        200,
        vec![("content-type", "application/json")],
        r#"{"access_token":"ya29.minted","expires_in":3599}"#,
    )])
    .await;
    token_endpoint.slow(Duration::from_millis(1500));
    let fcm = Provider::start(vec![]).await;
    let mut body = json!({
        "config": {"project_id": "drover-test"},
        "granted_hosts": ["fcm.googleapis.com"],
        "redirects": {"fcm.googleapis.com": fcm.base},
        "oauth": {"token_url": format!("{}/token", token_endpoint.base), "client_id": "drover",
                  "client_secret": "s3cret", "scope": "https://www.googleapis.com/auth/firebase.messaging"},
    });
    assert_eq!(settings(server, "fcm", body.clone()).await.status(), StatusCode::OK);
    let id = unique("race");
    enroll_android(server, &id, "tok-race").await;
    add(server, "android", &id, "DEVICE_RING").await;
    token_endpoint.wait_for(1).await;
    // The exchange is under way: the admin switches to a token of their own.
    body.as_object_mut().unwrap().remove("oauth");
    body["config"]["access_token"] = json!("ya29.manual");
    assert_eq!(settings(server, "fcm", body).await.status(), StatusCode::OK);
    let sent = fcm.wait_for(1).await;
    until_wakeup(server, &format!("android/{id}"), "sent").await;
    assert_eq!(sent[0].header("authorization"), Some("Bearer ya29.manual"));
    assert_eq!(fcm.received().len(), 1);
}
e2e!(settings_race, super::settings_changed_during_an_exchange_stand);

/// Settings an admin puts on one replica reach the others (they share the database) within
/// a second or so, with no restart.
async fn settings_reach_every_replica(a: &TestServer) {
    let b = a.replica().await;
    let r =
        settings(a, "fcm", json!({"config": {"project_id": "replicated"}, "granted_hosts": ["fcm.googleapis.com"]}))
            .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = get(&b, "/api/v1/plugins/fcm/settings").await;
        if seen["config"]["project_id"] == "replicated" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen["config"]["project_id"], "replicated", "replica b never saw the settings: {seen}");
    assert_eq!(seen["granted_hosts"], json!(["fcm.googleapis.com"]));
    b.stop().await;
}
e2e!(settings_replicate, super::settings_reach_every_replica);

/// Settings and scheduled wake-ups survive a restart: a wake-up due while the server was
/// down goes out when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_survive_a_restart() {
    let server = TestServer::start(drover_tests::Backend::Sqlite).await;
    let provider = Provider::start(vec![(503, vec![("retry-after", "2")], "")]).await;
    fcm_settings(&server, &provider).await;
    let id = unique("restart");
    enroll_android(&server, &id, "tok-restart").await;
    add(&server, "android", &id, "DEVICE_RING").await;
    provider.wait_for(1).await;
    until_wakeup(&server, &format!("android/{id}"), "scheduled").await;
    let server = server.restart().await;
    let got = provider.wait_for(2).await;
    assert_eq!(got[1].header("authorization"), Some("Bearer ya29.test-token"), "settings were kept");
    until_wakeup(&server, &format!("android/{id}"), "sent").await;
    server.stop().await;
}
