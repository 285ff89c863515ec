//! Policies (issue 25), on SQLite and PostgreSQL, with the real Android plugin: the
//! effective policy by priority, following tags, groups and ownership; bundles through
//! the operation engine, superseding the older one; plugin-checked features; revisions;
//! merged mode.

use drover_tests::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut r = server.admin(method, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn camera(enabled: bool) -> Value {
    json!({"code": "CAMERA", "payload": {"enabled": enabled}})
}

fn wifi(ssid: &str) -> Value {
    json!({"code": "WIFI", "payload": {"ssid": ssid, "type": "wpa2", "password": "correct horse"}})
}

/// A device's effective policy: `(name, revision)` of its policies, and its bundle
/// operation's id and state.
type Effective = Option<(Vec<(String, i64)>, i64, String)>;

async fn effective(server: &TestServer, id: &str) -> Effective {
    let (status, body) = call(server, Method::GET, &format!("/api/v1/devices/android/{id}/policy"), None).await;
    if status == StatusCode::NOT_FOUND {
        return None;
    }
    assert_eq!(status, StatusCode::OK, "{body}");
    let names = body["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["revision"].as_i64().unwrap()))
        .collect();
    Some((names, body["operation"].as_i64().unwrap(), body["state"].as_str().unwrap().to_string()))
}

fn names(e: &Effective) -> Vec<(&str, i64)> {
    e.as_ref().map(|(n, _, _)| n.iter().map(|(s, r)| (s.as_str(), *r)).collect()).unwrap_or_default()
}

async fn create(server: &TestServer, body: Value) -> Value {
    let (status, saved) = call(server, Method::POST, "/api/v1/policies", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{saved}");
    saved
}

async fn priority_tags_groups_ownership(server: &TestServer) {
    let token_a = server.enroll_android("pol-a").await;
    let token_b = server.enroll_android("pol-b").await;
    let (status, _) =
        call(server, Method::PUT, "/api/v1/devices/android/pol-a/tags", Some(json!({"tags": ["eu"]}))).await;
    assert_eq!(status, StatusCode::OK);

    // A baseline for every Android device.
    let saved = create(
        server,
        json!({"name": "baseline", "description": "camera off", "priority": 1,
               "profiles": {"android": [camera(false)]}}),
    )
    .await;
    assert_eq!(saved["revision"], 1);
    assert_eq!(saved["recomputed"]["assigned"], 2, "{saved}");
    let a1 = effective(server, "pol-a").await;
    assert_eq!(names(&a1), [("baseline", 1)]);
    assert_eq!(a1.as_ref().unwrap().2, "PENDING");
    let b1 = effective(server, "pol-b").await;

    // A stricter policy for the `eu` tag wins on A by priority; B keeps its bundle.
    let saved = create(
        server,
        json!({"name": "eu-strict", "priority": 10, "applies_to": {"tags": ["eu"]}, "action": "enforce",
               "profiles": {"android": [camera(false), wifi("corp-eu")]}}),
    )
    .await;
    assert_eq!(saved["recomputed"]["assigned"], 1, "{saved}");
    let a2 = effective(server, "pol-a").await;
    assert_eq!(names(&a2), [("eu-strict", 1)]);
    assert_eq!(effective(server, "pol-b").await.unwrap().1, b1.as_ref().unwrap().1, "B untouched");
    // The older bundle, never delivered, was superseded: never two in flight.
    let old = server.operation(a1.as_ref().unwrap().1).await;
    assert_eq!(old["state"], "REPEATED", "{old}");

    // A's poll carries only the new bundle, in the agent's form (`payLoad`).
    let r = server.poll_android("pol-a", &token_a, "[]").await;
    assert_eq!(r.status(), StatusCode::OK);
    let ops: Value = r.json().await.unwrap();
    let ops = ops.as_array().unwrap();
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["code"], "POLICY_BUNDLE");
    assert_eq!(ops[0]["type"], "POLICY");
    let bundle: Value = serde_json::from_str(ops[0]["payLoad"].as_str().unwrap()).unwrap();
    assert_eq!(bundle[1]["code"], "WIFI");
    assert_eq!(bundle[1]["payLoad"]["ssid"], "corp-eu");
    // A recomputation that changes nothing sends nothing.
    let (status, _) =
        call(server, Method::PUT, "/api/v1/devices/android/pol-a/tags", Some(json!({"tags": ["eu", "x"]}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(effective(server, "pol-a").await.unwrap().1, a2.as_ref().unwrap().1);

    // A group policy: B gets it when it joins the group, through its own protocol.
    let (status, _) = call(server, Method::POST, "/api/v1/groups", Some(json!({"name": "sales"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    create(
        server,
        json!({"name": "sales", "priority": 5, "applies_to": {"groups": ["sales"]},
               "profiles": {"android": [wifi("sales")]}}),
    )
    .await;
    assert_eq!(names(&effective(server, "pol-b").await), [("baseline", 1)]);
    let (status, body) = call(
        server,
        Method::POST,
        "/api/v1/groups/sales/members",
        Some(json!({"devices": [{"type": "android", "id": "pol-b"}]})),
    )
    .await;
    assert!(status.is_success(), "{body}");
    let b2 = effective(server, "pol-b").await;
    assert_eq!(names(&b2), [("sales", 1)]);
    let r = server.poll_android("pol-b", &token_b, "[]").await;
    let ops: Value = r.json().await.unwrap();
    assert_eq!(ops.as_array().unwrap().len(), 1, "{ops}");
    assert_eq!(ops[0]["id"].as_i64(), Some(b2.as_ref().unwrap().1));

    // Ownership: a COPE policy takes B over when an admin says B is company-owned.
    create(
        server,
        json!({"name": "cope", "priority": 20, "applies_to": {"ownership": "COPE"},
               "profiles": {"android": [camera(true)]}}),
    )
    .await;
    assert_eq!(names(&effective(server, "pol-b").await), [("sales", 1)], "B is BYOD");
    let (status, body) = call(
        server,
        Method::PATCH,
        "/api/v1/devices/android/pol-b",
        Some(json!({"ownership": "COPE", "owner": "ann"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ownership"], "COPE");
    assert_eq!(body["owner"], "ann");
    assert_eq!(names(&effective(server, "pol-b").await), [("cope", 1)]);
    // B's bundle was IN_PROGRESS (delivered, unanswered): it is cancelled, not left in flight.
    assert_eq!(server.operation(b2.as_ref().unwrap().1).await["state"], "CANCELLED");

    // Features the plugin refuses are refused with its message, naming the feature.
    let (status, body) = call(
        server,
        Method::POST,
        "/api/v1/policies",
        Some(json!({"name": "bad", "profiles": {"android": [{"code": "CAMERA", "payload": {"enabled": "no"}}]}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("profiles.android.CAMERA"), "{message}");
    let (status, body) = call(
        server,
        Method::POST,
        "/api/v1/policies",
        Some(json!({"name": "bad", "profiles": {"android": [{"code": "DEVICE_RING"}]}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("not a profile feature"), "{body}");
    let (status, body) = call(
        server,
        Method::POST,
        "/api/v1/policies",
        Some(json!({"name": "bad", "applies_to": {"groups": ["nope"]}, "profiles": {"android": [camera(true)]}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "unknown_group");
    let (status, body) = call(
        server,
        Method::POST,
        "/api/v1/policies",
        Some(json!({"name": "bad", "profiles": {"android": [camera(true)]}, "applies": {"tags": ["eu"]}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a misspelt field is not ignored: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("applies"), "{body}");
    let (status, _) = call(server, Method::GET, "/api/v1/policies/bad", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing refused was stored");
    // One policy for several device types, each checked by its own plugin; a type whose
    // plugin takes no policy bundle is refused, saying so.
    let (status, body) = call(
        server,
        Method::POST,
        "/api/v1/policies",
        Some(json!({"name": "fleet", "active": false, "profiles": {
            "ios": [{"code": "RESTRICTIONS", "payload": {"allowCamera": false}}],
            "windows": [{"code": "CAMERA", "payload": {"enabled": false}}, {"code": "PASSCODE_POLICY", "payload": {"minLength": 8}}]
        }})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(
        server,
        Method::POST,
        "/api/v1/policies",
        Some(
            json!({"name": "bad", "profiles": {"windows": [{"code": "PASSCODE_POLICY", "payload": {"minLength": 2}}]}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("profiles.windows.PASSCODE_POLICY"), "{body}");
    let (status, body) = call(
        server,
        Method::POST,
        "/api/v1/policies",
        Some(json!({"name": "bad", "profiles": {"esp8266": [{"code": "CONFIG"}]}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "no_policy_bundle", "{body}");

    // Revisions: an edit is revision 2; restoring 1 makes revision 3 with 1's content.
    let (status, body) = call(
        server,
        Method::PUT,
        "/api/v1/policies/eu-strict",
        Some(json!({"priority": 10, "applies_to": {"tags": ["eu"]}, "profiles": {"android": [wifi("corp-eu-2")]}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revision"], 2);
    assert_eq!(names(&effective(server, "pol-a").await), [("eu-strict", 2)]);
    let (_, revisions) = call(server, Method::GET, "/api/v1/policies/eu-strict/revisions", None).await;
    assert_eq!(revisions.as_array().unwrap().len(), 2);
    assert_eq!(revisions[1]["profiles"]["android"][1]["payload"]["ssid"], "corp-eu");
    let (status, body) =
        call(server, Method::POST, "/api/v1/policies/eu-strict/restore", Some(json!({"revision": 1}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revision"], 3);
    assert_eq!(body["profiles"]["android"][1]["payload"]["ssid"], "corp-eu");
    assert_eq!(names(&effective(server, "pol-a").await), [("eu-strict", 3)]);

    // Deactivated, it stops applying: A falls back to the baseline.
    let (status, _) = call(server, Method::POST, "/api/v1/policies/eu-strict/deactivate", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&effective(server, "pol-a").await), [("baseline", 1)]);

    // The log tells each change.
    let (_, log) = call(server, Method::GET, "/api/v1/events?type=device.policy_changed&limit=1000", None).await;
    assert!(log["items"].as_array().unwrap().len() >= 6, "{log}");
    let (_, log) = call(server, Method::GET, "/api/v1/events?type=policy.changed&limit=1000", None).await;
    let changes: Vec<&str> =
        log["items"].as_array().unwrap().iter().map(|e| e["data"]["change"].as_str().unwrap()).collect();
    assert!(changes.contains(&"restored revision 1") && changes.contains(&"deactivated"), "{changes:?}");

    // Removed, then enrolled again: the identity's new device is given its policy afresh.
    let (status, _) = call(server, Method::DELETE, "/api/v1/devices/android/pol-a", None).await;
    assert!(status.is_success());
    assert_eq!(effective(server, "pol-a").await, None, "nothing left of what the old device was given");
    server.enroll_android("pol-a").await;
    let mut again = None;
    for _ in 0..50 {
        again = effective(server, "pol-a").await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let again = again.expect("the re-enrolled device gets a bundle");
    assert_eq!(again.2, "PENDING");
    assert_eq!(names(&Some(again)), [("baseline", 1)]);
}
drover_tests::e2e!(policies_by_priority, super::priority_tags_groups_ownership);

fn merged(c: &mut drover::config::Config) {
    c.policy_mode = drover::policies::Mode::Merged;
}

/// Merged mode: every applicable policy's features, the higher priority winning per feature.
async fn merged_features(server: &TestServer) {
    let token = server.enroll_android("merge-a").await;
    create(server, json!({"name": "low", "priority": 1, "profiles": {"android": [camera(true), wifi("guest")]}})).await;
    create(server, json!({"name": "high", "priority": 9, "profiles": {"android": [camera(false)]}})).await;
    assert_eq!(names(&effective(server, "merge-a").await), [("high", 1), ("low", 1)]);
    let ops: Value = server.poll_android("merge-a", &token, "[]").await.json().await.unwrap();
    assert_eq!(ops.as_array().unwrap().len(), 1, "{ops}");
    let bundle: Value = serde_json::from_str(ops[0]["payLoad"].as_str().unwrap()).unwrap();
    assert_eq!(
        bundle,
        json!([{"code": "CAMERA", "payLoad": {"enabled": false}}, {"code": "WIFI", "payLoad": {"ssid": "guest", "type": "wpa2", "password": "correct horse"}}])
    );
}
drover_tests::e2e_with!(policies_merged, super::merged, super::merged_features);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_policies_and_only_admins_change_them() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (status, body) =
        call(&server, Method::POST, "/api/v1/admin-tokens", Some(json!({"name": "ops", "role": "operator"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let operator = body["token"].as_str().unwrap().to_string();
    let r = server
        .http
        .post(server.url("/api/v1/policies"))
        .bearer_auth(&operator)
        .json(&json!({"name": "p", "profiles": {"android": [camera(false)]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = server.http.get(server.url("/api/v1/policies")).bearer_auth(&operator).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    server.stop().await;
}

/// Post telemetry as the Android agent does.
async fn report(server: &TestServer, id: &str, token: &str, body: Value) {
    let r = server
        .http
        .post(server.url(&format!("/agent/v1/android/devices/{id}/telemetry")))
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// The device's compliance once `until` holds (evaluation runs a few seconds after a report).
async fn compliance_when(server: &TestServer, id: &str, until: impl Fn(&Value) -> bool) -> Value {
    server.compliance_when("android", id, until).await
}

/// The device polls and applies the policy bundles it gets: it answers COMPLETED on a
/// second poll, as the agent does.
async fn apply_bundles(server: &TestServer, id: &str, token: &str) {
    let ops: Value = server.poll_android(id, token, "[]").await.json().await.unwrap();
    let done: Vec<Value> = ops
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["code"] == "POLICY_BUNDLE")
        .map(|o| json!({"id": o["id"], "code": "POLICY_BUNDLE", "status": "COMPLETED"}))
        .collect();
    let r = server.poll_android(id, token, &Value::from(done).to_string()).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// The newest change in the device's compliance history that `until` accepts. (A state
/// that `enforce` ends a moment later, by sending the bundle again, is read here.)
async fn change_when(server: &TestServer, id: &str, until: impl Fn(&Value) -> bool) -> Value {
    let c = compliance_when(server, id, |c| c["history"].as_array().unwrap().iter().any(&until)).await;
    c["history"].as_array().unwrap().iter().find(|h| until(h)).cloned().unwrap()
}

/// The device's bundle operation once it is another than `old` (enforce sends it again a
/// moment after the verdict).
async fn resent(server: &TestServer, id: &str, old: i64) -> i64 {
    for _ in 0..50 {
        let now = effective(server, id).await.unwrap().1;
        if now != old {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the bundle of {id} was not sent again");
}

fn feature<'a>(c: &'a Value, code: &str) -> &'a Value {
    c["checks"].as_array().unwrap().iter().find(|k| k["feature"] == code).unwrap_or_else(|| panic!("{code}: {c}"))
}

fn check<'a>(c: &'a Value, rule: &str) -> &'a Value {
    c["checks"].as_array().unwrap().iter().find(|k| k["rule"] == rule).unwrap_or_else(|| panic!("{rule}: {c}"))
}

/// Rules evaluated by the first-party rule plugins against what the device reports, and
/// each action: warn (an event), enforce (the bundle sent again), block (nothing but
/// bundles until it complies); a suspended rule plugin makes its verdict unknown.
async fn compliance_and_actions(server: &TestServer) {
    let token = server.enroll_android("cmp-a").await;
    report(server, "cmp-a", &token, json!({"battery": 64})).await;
    let rules = json!([
        {"rule": "version-range", "params": {"metadata": "OS_VERSION", "min": "13"}},
        {"rule": "telemetry-threshold", "params": {"telemetry": "battery", "min": 20}}
    ]);
    // Rule parameters are checked by the rule's plugin; unknown rules are refused.
    for (bad, needle) in [
        (
            json!([{"rule": "version-range", "params": {"metadata": "OS_VERSION", "min": "x"}}]),
            "rules[0] (version-range): `min`: `x` is not a version",
        ),
        (json!([{"rule": "no-such-rule", "params": {}}]), "no plugin `no-such-rule`"),
        (json!([{"rule": "android", "params": {}}]), "not a policy rule"),
    ] {
        let (status, body) = call(
            server,
            Method::POST,
            "/api/v1/policies",
            Some(json!({"name": "bad", "rules": bad, "profiles": {"android": [camera(false)]}})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{body}");
    }
    let spec = |action: &str| json!({"priority": 1, "action": action, "rules": rules, "profiles": {"android": [camera(false)]}});
    let mut first = spec("warn");
    first["name"] = json!("os-floor");
    create(server, first).await;
    // The rules hold, but the device has not applied its bundle yet.
    let c = compliance_when(server, "cmp-a", |c| c["state"] == "pending" && c["evaluated_at"].is_i64()).await;
    let camera_check = c["checks"].as_array().unwrap().iter().find(|k| k["feature"] == "CAMERA").unwrap();
    assert!(camera_check["compliant"].is_null(), "{c}");
    assert!(camera_check["reason"].as_str().unwrap().contains("waiting for the device"), "{c}");
    apply_bundles(server, "cmp-a", &token).await;
    let c = compliance_when(server, "cmp-a", |c| c["state"] == "compliant").await;
    assert_eq!(c["checks"].as_array().unwrap().len(), 3, "two rules and a feature: {c}");

    // Warn: the battery drops; the device is non-compliant, with the rule's reason, and
    // an event says so.
    report(server, "cmp-a", &token, json!({"battery": 5})).await;
    let c = compliance_when(server, "cmp-a", |c| c["state"] == "non_compliant").await;
    assert_eq!(check(&c, "telemetry-threshold")["reason"], "battery is 5, below 20");
    assert_eq!(check(&c, "version-range")["compliant"], true);
    assert_eq!(c["blocked"], false);
    let (_, log) = call(server, Method::GET, "/api/v1/events?type=device.compliance_changed", None).await;
    let last = log["items"].as_array().unwrap().last().cloned().unwrap_or_default();
    assert_eq!(last["data"]["state"], "non_compliant", "{log}");
    assert_eq!(last["data"]["action"], "warn");
    let (_, counts) = call(server, Method::GET, "/api/v1/policies/os-floor/compliance", None).await;
    assert_eq!(counts["total"]["non_compliant"], 1, "{counts}");
    assert_eq!(counts["by_device_type"]["android"]["non_compliant"], 1, "{counts}");

    // Enforce: when the device falls out of compliance, its bundle goes again.
    let (status, _) = call(server, Method::PUT, "/api/v1/policies/os-floor", Some(spec("enforce"))).await;
    assert_eq!(status, StatusCode::OK);
    apply_bundles(server, "cmp-a", &token).await;
    report(server, "cmp-a", &token, json!({"battery": 90})).await;
    compliance_when(server, "cmp-a", |c| c["state"] == "compliant").await;
    let before = effective(server, "cmp-a").await.unwrap().1;
    report(server, "cmp-a", &token, json!({"battery": 6})).await;
    compliance_when(server, "cmp-a", |c| c["state"] == "non_compliant").await;
    let again = resent(server, "cmp-a", before).await;
    assert_eq!(server.operation(before).await["state"], "COMPLETED", "what the device did stays recorded");
    assert_eq!(server.operation(again).await["code"], "POLICY_BUNDLE");

    // Block: nothing but policy bundles reach the device until it complies.
    let (status, _) = call(server, Method::PUT, "/api/v1/policies/os-floor", Some(spec("block"))).await;
    assert_eq!(status, StatusCode::OK);
    compliance_when(server, "cmp-a", |c| c["blocked"] == true).await;
    // Bundles still reach a blocked device.
    apply_bundles(server, "cmp-a", &token).await;
    let ring = server.add_operation("android", "cmp-a", "DEVICE_RING", None).await;
    let ops: Value = server.poll_android("cmp-a", &token, "[]").await.json().await.unwrap();
    let codes: Vec<&str> = ops.as_array().unwrap().iter().map(|o| o["code"].as_str().unwrap()).collect();
    assert!(!codes.contains(&"DEVICE_RING"), "held back while blocked: {codes:?}");
    assert_eq!(server.operation(ring).await["state"], "PENDING");
    report(server, "cmp-a", &token, json!({"battery": 80})).await;
    compliance_when(server, "cmp-a", |c| c["state"] == "compliant" && c["blocked"] == false).await;
    let ops: Value = server.poll_android("cmp-a", &token, "[]").await.json().await.unwrap();
    assert!(ops.as_array().unwrap().iter().any(|o| o["id"].as_i64() == Some(ring)), "released: {ops}");

    // A rule whose plugin is suspended is unknown, with the reason; the other still counts.
    let (status, body) = call(server, Method::POST, "/api/v1/plugins/telemetry-threshold/suspend", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    report(server, "cmp-a", &token, json!({"battery": 3})).await;
    let c = compliance_when(server, "cmp-a", |c| c["state"] == "unknown").await;
    let t = check(&c, "telemetry-threshold");
    assert!(t["compliant"].is_null() && t["reason"].as_str().unwrap().contains("suspended"), "{c}");
    assert_eq!(check(&c, "version-range")["compliant"], true);
    assert_eq!(c["blocked"], false, "an unknown verdict does not block");
    let history = c["history"].as_array().unwrap();
    assert!(history.len() >= 6, "{c}");
    assert_eq!(history[0]["state"], "unknown");
    let (status, _) = call(server, Method::POST, "/api/v1/plugins/telemetry-threshold/enable", None).await;
    assert_eq!(status, StatusCode::OK);

    // A rule plugin with a bug (it traps): its check is unknown with the fault; the other
    // rules, the other devices and the device's polls go on.
    let trap = drover_tests::component(drover_tests::components::RULE_TRAP);
    server.install_signed("rule-trap", "drover-tests", &[], &trap).await;
    let mut trapped = spec("warn");
    trapped["rules"] = json!([{"rule": "rule-trap", "params": {}}, rules[0].clone()]);
    trapped["name"] = json!("trapping");
    trapped["priority"] = json!(50);
    create(server, trapped).await;
    let other = server.enroll_android("cmp-b").await;
    let c =
        compliance_when(server, "cmp-a", |c| c["checks"].as_array().unwrap().iter().any(|k| k["rule"] == "rule-trap"))
            .await;
    let t = check(&c, "rule-trap");
    assert!(t["compliant"].is_null(), "{c}");
    assert!(t["reason"].as_str().unwrap().contains("could not evaluate"), "{c}");
    assert_eq!(check(&c, "version-range")["compliant"], true, "the other rule still counts");
    assert_eq!(c["state"], "unknown");
    let b = compliance_when(server, "cmp-b", |c| c["state"] != "pending").await;
    assert_eq!(b["state"], "unknown", "{b}");
    let r = server.poll_android("cmp-a", &token, "[]").await;
    assert_eq!(r.status(), StatusCode::OK, "polls are not held up by a faulty rule");
    assert_eq!(server.poll_android("cmp-b", &other, "[]").await.status(), StatusCode::OK);
}
drover_tests::e2e!(policies_compliance, super::compliance_and_actions);

/// Compliance as the device reports it: the bundle's answer, then the Android agent's
/// per-feature POLICY_MONITOR answer, decoded by the plugin into the standard record;
/// a feature out of compliance under `enforce` gets the bundle again.
async fn reported_compliance(server: &TestServer) {
    let token = server.enroll_android("rep-a").await;
    create(
        server,
        json!({"name": "locked-down", "priority": 3, "action": "enforce",
               "profiles": {"android": [camera(false), wifi("corp")]}}),
    )
    .await;
    let bundle = effective(server, "rep-a").await.unwrap().1;
    let c = compliance_when(server, "rep-a", |c| c["state"] == "pending" && c["evaluated_at"].is_i64()).await;
    assert_eq!(c["checks"].as_array().unwrap().len(), 2, "{c}");

    // The agent refuses the bundle: every feature is out, with the agent's words.
    let ops: Value = server.poll_android("rep-a", &token, "[]").await.json().await.unwrap();
    assert_eq!(ops[0]["id"].as_i64(), Some(bundle));
    let refused = json!([{"id": bundle, "code": "POLICY_BUNDLE", "status": "ERROR",
                          "operationResponse": "Device admin is not active"}]);
    server.poll_android("rep-a", &token, &refused.to_string()).await;
    let out = change_when(server, "rep-a", |h| h["state"] == "non_compliant").await;
    assert_eq!(feature(&out, "WIFI")["compliant"], false);
    assert!(feature(&out, "WIFI")["reason"].as_str().unwrap().contains("Device admin is not active"), "{out}");
    // Enforce does not send a refused bundle straight back (the device would refuse it at
    // every call): it stays until the policy changes, or an hour has passed.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(effective(server, "rep-a").await.unwrap().1, bundle, "no resend storm");
    // The admin fixes the device and edits the policy: a new bundle.
    let (status, _) = call(
        server,
        Method::PUT,
        "/api/v1/policies/locked-down",
        Some(json!({"priority": 3, "action": "enforce", "profiles": {"android": [camera(false), wifi("corp-2")]}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let again = resent(server, "rep-a", bundle).await;

    // Applied: every feature complies, each since its verdict.
    apply_bundles(server, "rep-a", &token).await;
    let c = compliance_when(server, "rep-a", |c| c["state"] == "compliant").await;
    let refused_at = out["at"].as_i64().unwrap();
    assert!(
        c["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["compliant"] == true && k["since"].as_i64().unwrap() > refused_at),
        "{c}"
    );

    // An admin asks the agent to check; its answer (the agent's own form, in `payLoad`)
    // says the user turned the camera back on.
    let monitor = server.add_operation("android", "rep-a", "POLICY_MONITOR", None).await;
    let ops: Value = server.poll_android("rep-a", &token, "[]").await.json().await.unwrap();
    assert!(ops.as_array().unwrap().iter().any(|o| o["id"].as_i64() == Some(monitor)), "{ops}");
    let features = json!([{"featureCode": "CAMERA", "compliance": false, "message": "Camera is enabled"},
                          {"featureCode": "WIFI", "compliance": true}]);
    let answer = json!([{"id": monitor, "code": "POLICY_MONITOR", "type": "POLICY", "status": "COMPLETED",
                         "payLoad": features.to_string()}]);
    server.poll_android("rep-a", &token, &answer.to_string()).await;
    let out = change_when(server, "rep-a", |h| {
        h["state"] == "non_compliant"
            && h["checks"].as_array().unwrap().iter().any(|k| k["reason"] == "Camera is enabled")
    })
    .await;
    assert_eq!(feature(&out, "CAMERA")["policy"], "locked-down");
    assert_eq!(feature(&out, "WIFI")["compliant"], true);
    assert_eq!(server.operation(monitor).await["state"], "COMPLETED");

    // The bundle sent again (enforce), applied, is newer than the report: compliant again.
    resent(server, "rep-a", again).await;
    apply_bundles(server, "rep-a", &token).await;
    compliance_when(server, "rep-a", |c| c["state"] == "compliant").await;

    // A monitor answer that does not read is refused with the reason and changes nothing.
    let monitor2 = server.add_operation("android", "rep-a", "POLICY_MONITOR", None).await;
    server.poll_android("rep-a", &token, "[]").await;
    let bad = json!([{"id": monitor2, "code": "POLICY_MONITOR", "status": "COMPLETED", "payLoad": "[{\"code\": 1}]"}]);
    let r = server.poll_android("rep-a", &token, &bad.to_string()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("POLICY_MONITOR"));
    assert_eq!(server.operation(monitor2).await["state"], "IN_PROGRESS", "nothing recorded from it");
    let c = compliance_when(server, "rep-a", |c| c["state"] != "pending").await;
    assert_eq!(c["state"], "compliant", "{c}");
}
drover_tests::e2e!(policies_reported_compliance, super::reported_compliance);

/// A policy with rules only targets a type that takes no features (ESP8266 boards): its
/// devices are evaluated, and nothing is sent to them.
async fn rules_only(server: &TestServer) {
    let mut boards = Vec::new();
    for (chip, firmware) in [("0a11ce01", "1.0.3"), ("0a11ce02", "2.1.0")] {
        let body = json!({"chip_id": chip, "model": "ESP-12F", "firmware": firmware});
        let r = server.http.post(server.url("/agent/v1/esp8266/enroll")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        boards.push(r.json::<Value>().await.unwrap()["device_id"].as_str().unwrap().to_string());
    }
    let floor = json!([{"rule": "version-range", "params": {"metadata": "firmware", "min": "2.0"}}]);
    // A type without features needs rules, and features need the type's bundle.
    for (body, needle) in [
        (json!({"name": "nothing", "profiles": {"esp8266": []}}), "would do nothing"),
        (
            json!({"name": "leds", "rules": floor, "profiles": {"esp8266": [{"code": "LED", "payload": {"state": "on"}}]}}),
            "declares no POLICY_BUNDLE",
        ),
    ] {
        let (status, answer) = call(server, Method::POST, "/api/v1/policies", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(needle), "{answer}");
    }
    let saved =
        create(server, json!({"name": "board-floor", "action": "warn", "rules": floor, "profiles": {"esp8266": []}}))
            .await;
    assert_eq!(saved["recomputed"]["assigned"], 2, "{saved}");
    let old = server.compliance_when("esp8266", &boards[0], |c| c["state"] == "non_compliant").await;
    assert_eq!(check(&old, "version-range")["reason"], "firmware 1.0.3 is below 2.0.0", "{old}");
    let new = server.compliance_when("esp8266", &boards[1], |c| c["state"] == "compliant").await;
    assert_eq!(new["checks"].as_array().unwrap().len(), 1, "{new}");
    // Nothing was queued for the boards: no bundle.
    let (status, policy) =
        call(server, Method::GET, &format!("/api/v1/devices/esp8266/{}/policy", boards[0]), None).await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    assert!(policy["operation"].is_null(), "{policy}");
    assert_eq!(policy["policies"][0]["name"], "board-floor");
    let (status, ops) =
        call(server, Method::GET, &format!("/api/v1/operations?device_type=esp8266&device_id={}", boards[0]), None)
            .await;
    assert_eq!(status, StatusCode::OK, "{ops}");
    assert_eq!(ops["items"].as_array().unwrap().len(), 0, "{ops}");
    let (_, counts) = call(server, Method::GET, "/api/v1/policies/board-floor/compliance", None).await;
    assert_eq!(counts["by_device_type"]["esp8266"]["non_compliant"], 1, "{counts}");
    assert_eq!(counts["by_device_type"]["esp8266"]["compliant"], 1, "{counts}");
    // Deactivated: the boards have no policy any more.
    let (status, _) = call(server, Method::POST, "/api/v1/policies/board-floor/deactivate", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(server, Method::GET, &format!("/api/v1/devices/esp8266/{}/policy", boards[0]), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
drover_tests::e2e!(policies_rules_only, super::rules_only);

fn monitor_every_second(c: &mut drover::config::Config) {
    c.policy_monitor = Some(std::time::Duration::from_secs(1));
}

/// Devices whose type declares POLICY_MONITOR are asked for their compliance on a
/// schedule once they applied their bundle: one query at a time, answered with the
/// next call, read by the compliance loop.
async fn scheduled_monitor(server: &TestServer) {
    let token = server.enroll_android("mon-a").await;
    create(server, json!({"name": "cam", "priority": 1, "profiles": {"android": [camera(false)]}})).await;
    let monitors = || async {
        let (_, ops) = call(server, Method::GET, "/api/v1/operations?device_type=android&device_id=mon-a", None).await;
        ops["items"].as_array().unwrap().iter().filter(|o| o["code"] == "POLICY_MONITOR").cloned().collect::<Vec<_>>()
    };
    // Not before the bundle is applied.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(monitors().await.is_empty());
    apply_bundles(server, "mon-a", &token).await;
    compliance_when(server, "mon-a", |c| c["state"] == "compliant").await;
    let mut queued = Vec::new();
    for _ in 0..50 {
        queued = monitors().await;
        if !queued.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(queued.len(), 1, "a query was queued: {queued:?}");
    assert_eq!(queued[0]["kind"], "policy");
    // While it is open, no other is queued.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(monitors().await.len(), 1);
    let ops: Value = server.poll_android("mon-a", &token, "[]").await.json().await.unwrap();
    let id = queued[0]["id"].as_i64().unwrap();
    assert!(ops.as_array().unwrap().iter().any(|o| o["id"].as_i64() == Some(id)), "{ops}");
    let features = json!([{"featureCode": "CAMERA", "compliance": false, "message": "Camera is enabled"}]);
    let answer = json!([{"id": id, "code": "POLICY_MONITOR", "status": "COMPLETED", "payLoad": features.to_string()}]);
    server.poll_android("mon-a", &token, &answer.to_string()).await;
    let c = compliance_when(server, "mon-a", |c| c["state"] == "non_compliant").await;
    assert_eq!(feature(&c, "CAMERA")["reason"], "Camera is enabled", "{c}");
}
drover_tests::e2e_with!(policies_scheduled_monitor, super::monitor_every_second, super::scheduled_monitor);

/// A burst of enrollments (devices arriving together) is recomputed in batches: every
/// device gets its effective policy.
async fn enrollment_burst(server: &TestServer) {
    create(server, json!({"name": "everyone", "priority": 1, "profiles": {"android": [camera(false)]}})).await;
    let fixture =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/enroll.json"))
            .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..60 {
        let http = server.http.clone();
        let url = server.url("/agent/v1/android/enroll");
        let body = fixture.replace("354956090214718", &format!("burst-{i}"));
        set.spawn(async move { http.post(url).body(body).send().await.unwrap().status() });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }
    for i in 0..60 {
        let id = format!("burst-{i}");
        let mut got = None;
        for _ in 0..100 {
            got = effective(server, &id).await;
            if got.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(names(&got), [("everyone", 1)], "{id}");
    }
}
drover_tests::e2e!(policies_enrollment_burst, super::enrollment_burst);
