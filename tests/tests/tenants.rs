//! Tenants (issue 29), on SQLite and PostgreSQL: two tenants on one server, each with its
//! own admin token, enrollment tokens and devices. A tenant's token reads and touches only
//! its own devices and their operations; every other endpoint of the OpenAPI document
//! refuses it (the walk fails for an endpoint added without thought for tenants), and no
//! answer names the other tenant's device; the event log is its own, the MQTT event
//! feed refuses it and its metrics are its own; a token of one tenant never claims a
//! device another pre-registered; each tenant's artifacts, rollouts, alert rules and
//! plugins are its own; the server's operators (tokens of no tenant, as every token before
//! tenants) see all.

use drover_tests::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

fn with(server: &TestServer, token: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    server.http.request(method, server.url(path)).bearer_auth(token)
}

fn enroll_body(id: &str) -> String {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/enroll.json");
    std::fs::read_to_string(fixture).unwrap().replace("354956090214718", id)
}

async fn created(r: reqwest::Response) -> Value {
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// An admin token of `tenant` (made by an operator).
async fn tenant_admin(server: &TestServer, tenant: &str) -> String {
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({ "name": format!("{tenant}-admin"), "role": "admin", "tenant": tenant }))
        .send()
        .await
        .unwrap();
    created(r).await["token"].as_str().unwrap().to_string()
}

/// Enroll a device of `device_type` from `body` with an enrollment token `admin` makes
/// (for its own tenant): the enrollment's answer.
async fn enrolled(server: &TestServer, admin: &str, device_type: &str, body: String) -> Value {
    let r = with(server, admin, Method::POST, "/api/v1/enrollment-tokens")
        .json(&json!({ "device_type": device_type }))
        .send()
        .await
        .unwrap();
    let t = created(r).await;
    let url = server.url(&format!("/agent/v1/{device_type}/enroll"));
    let r = server.http.post(url).bearer_auth(t["token"].as_str().unwrap()).body(body).send().await.unwrap();
    created(r).await
}

/// Enroll Android device `id` with an enrollment token `admin` makes (for its own tenant).
async fn enroll(server: &TestServer, admin: &str, id: &str) -> String {
    enrolled(server, admin, "android", enroll_body(id)).await["access_token"].as_str().unwrap().to_string()
}

/// mosquitto_sub against the embedded broker for at most 3 s: whether it succeeded, and
/// what it printed.
async fn mosquitto_sub(port: u16, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-W", "3"])
            .args(args)
            .output(),
    )
    .await
    .expect("mosquitto_sub finishes")
    .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn ids(server: &TestServer, token: &str, path: &str) -> Vec<String> {
    let body = read(server, token, path).await;
    let mut ids: Vec<String> =
        body["items"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

/// What a tenant's admin may call besides the scoped endpoints (`drover_tests::SCOPED`):
/// its tenant's groups, webhooks, policies, enrollment, tokens and users.
const TENANT_ADMIN: &[(&str, &str)] = &[
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/fleet"),
    ("get", "/api/v1/groups"),
    ("post", "/api/v1/groups"),
    ("get", "/api/v1/groups/{name}"),
    ("delete", "/api/v1/groups/{name}"),
    ("post", "/api/v1/groups/{name}/members"),
    ("get", "/api/v1/devices/count"),
    ("get", "/api/v1/webhooks"),
    ("post", "/api/v1/webhooks"),
    ("get", "/api/v1/webhooks/{name}"),
    ("delete", "/api/v1/webhooks/{name}"),
    ("post", "/api/v1/webhooks/{name}/enable"),
    ("post", "/api/v1/webhooks/{name}/redeliver"),
    ("get", "/api/v1/webhooks/{name}/deliveries"),
    ("get", "/api/v1/policies"),
    ("post", "/api/v1/policies"),
    ("get", "/api/v1/policies/{name}"),
    ("put", "/api/v1/policies/{name}"),
    ("delete", "/api/v1/policies/{name}"),
    ("post", "/api/v1/policies/{name}/activate"),
    ("post", "/api/v1/policies/{name}/deactivate"),
    ("get", "/api/v1/policies/{name}/revisions"),
    ("post", "/api/v1/policies/{name}/restore"),
    ("get", "/api/v1/policies/{name}/compliance"),
    ("post", "/api/v1/enrollment-tokens"),
    ("put", "/api/v1/devices/{device_type}/{device_id}/psk"),
    ("post", "/api/v1/devices/import"),
    ("get", "/api/v1/admin-tokens"),
    ("post", "/api/v1/admin-tokens"),
    ("delete", "/api/v1/admin-tokens/{name}"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users/{name}"),
    ("patch", "/api/v1/users/{name}"),
    ("delete", "/api/v1/users/{name}"),
    ("get", "/api/v1/tenants/{tenant}/plugins/{name}/settings"),
    ("put", "/api/v1/tenants/{tenant}/plugins/{name}/settings"),
    ("delete", "/api/v1/tenants/{tenant}/plugins/{name}/settings"),
    ("get", "/api/v1/artifacts"),
    ("post", "/api/v1/artifacts"),
    ("get", "/api/v1/artifacts/{name}/{version}"),
    ("delete", "/api/v1/artifacts/{name}/{version}"),
    ("get", "/api/v1/rollouts"),
    ("post", "/api/v1/rollouts"),
    ("get", "/api/v1/rollouts/{name}"),
    ("delete", "/api/v1/rollouts/{name}"),
    ("get", "/api/v1/rollouts/{name}/devices"),
    ("post", "/api/v1/rollouts/{name}/pause"),
    ("post", "/api/v1/rollouts/{name}/resume"),
    ("post", "/api/v1/rollouts/{name}/cancel"),
    ("post", "/api/v1/rollouts/{name}/abort"),
    ("post", "/api/v1/rollouts/{name}/advance"),
    ("post", "/api/v1/rollouts/{name}/rollback"),
    ("get", "/api/v1/alert-rules"),
    ("post", "/api/v1/alert-rules"),
    ("get", "/api/v1/alert-rules/{name}"),
    ("put", "/api/v1/alert-rules/{name}"),
    ("delete", "/api/v1/alert-rules/{name}"),
    ("get", "/api/v1/plugins"),
    ("post", "/api/v1/plugins"),
    ("get", "/api/v1/plugins/{name}"),
    ("post", "/api/v1/plugins/{name}/rollback"),
    ("post", "/api/v1/plugins/{name}/suspend"),
    ("post", "/api/v1/plugins/{name}/enable"),
    ("get", "/api/v1/plugins/{name}/grants"),
    ("put", "/api/v1/plugins/{name}/grants"),
];

async fn two_tenants(server: &TestServer) {
    for name in ["acme", "globex"] {
        let r = server.admin(Method::POST, "/api/v1/tenants").json(&json!({ "name": name })).send().await.unwrap();
        assert_eq!(created(r).await["name"], name);
    }
    let r = server.admin(Method::POST, "/api/v1/tenants").json(&json!({ "name": "Acme Corp" })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a bad name is named");
    let r = server.admin(Method::POST, "/api/v1/tenants").json(&json!({ "name": "acme" })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({ "name": "nowhere", "role": "admin", "tenant": "initech" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a token of a tenant that does not exist");

    let acme = tenant_admin(server, "acme").await;
    let globex = tenant_admin(server, "globex").await;
    let who: Value = read(server, &acme, "/api/v1/whoami").await;
    assert_eq!((&who["name"], &who["tenant"]), (&json!("acme/acme-admin"), &json!("acme")), "{who}");

    // Each tenant's admin makes and revokes its own tokens, named within the tenant: the
    // same name in two tenants is two tokens, and neither sees the other's.
    let mut ci = Vec::new();
    for admin in [&acme, &globex] {
        let r = with(server, admin, Method::POST, "/api/v1/admin-tokens")
            .json(&json!({ "name": "ci", "role": "operator" }))
            .send()
            .await
            .unwrap();
        ci.push(created(r).await["token"].as_str().unwrap().to_string());
    }
    let r = with(server, &acme, Method::POST, "/api/v1/admin-tokens")
        .json(&json!({ "name": "x", "role": "viewer", "tenant": "globex" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let listed: Value = read(server, &acme, "/api/v1/admin-tokens").await;
    let names: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme/acme-admin", "acme/ci"], "{listed}");
    let r = with(server, &acme, Method::DELETE, "/api/v1/admin-tokens/globex%2Fci").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a tenant revoked another's token");
    let r = with(server, &acme, Method::DELETE, "/api/v1/admin-tokens/ci").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(server, &ci[0], Method::GET, "/api/v1/devices").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = with(server, &ci[1], Method::GET, "/api/v1/whoami").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "globex/ci", "Globex's token of the same name lives");

    // Each tenant's admin enrolls its own devices; a device enrolled without a tenant's
    // token is in `default`, which a single-tenant server never notices.
    let acme_device = enroll(server, &acme, "acme-1").await;
    enroll(server, &globex, "globex-1").await;
    server.enroll_android("plain-1").await;
    let r = with(server, &acme, Method::POST, "/api/v1/enrollment-tokens")
        .json(&json!({ "device_type": "android", "tenant": "globex" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a tenant's admin enrolls into its own tenant only");

    assert_eq!(ids(server, &acme, "/api/v1/devices").await, ["acme-1"]);
    assert_eq!(ids(server, &globex, "/api/v1/devices").await, ["globex-1"]);
    let all: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/devices").await;
    let tenants: Vec<(&str, &str)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["device_id"].as_str().unwrap(), d["tenant"].as_str().unwrap()))
        .collect();
    assert_eq!(tenants, [("acme-1", "acme"), ("globex-1", "globex"), ("plain-1", "default")]);

    // Globex cannot read, target or cancel anything of Acme's.
    let r = with(server, &globex, Method::GET, "/api/v1/devices/android/acme-1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = server
        .admin(Method::PUT, "/api/v1/devices/android/acme-1/tags")
        .json(&json!({ "tags": ["any"] }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = with(server, &acme, Method::POST, "/api/v1/operations")
        .json(&json!({ "code": "DEVICE_RING", "targets": { "devices": [{ "type": "android", "id": "acme-1" }] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(created(r).await["operations"], 1);
    let ops: Value = read(server, &acme, "/api/v1/operations").await;
    let acme_op = ops["items"][0]["id"].as_i64().unwrap();
    let acme_activity = ops["items"][0]["activity"].as_i64().unwrap();
    let r = with(server, &globex, Method::POST, "/api/v1/operations")
        .json(&json!({ "code": "DEVICE_WIPE", "targets": { "devices": [{ "type": "android", "id": "acme-1" }] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{}", r.text().await.unwrap());
    // A tag target reaches no other tenant's devices (Acme's device is tagged `any`), and
    // the answer does not count them: it is the answer to a tag nobody carries.
    for tag in ["any", "nobody-has-it"] {
        let r = with(server, &globex, Method::POST, "/api/v1/operations")
            .json(&json!({ "code": "DEVICE_WIPE", "targets": { "tags": [tag] } }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "no_targets", "{body}");
    }
    let ops: Value = read(server, &globex, "/api/v1/operations").await;
    assert_eq!(ops["items"].as_array().unwrap().len(), 0, "{ops}");
    for (method, path) in [
        (Method::GET, format!("/api/v1/operations/{acme_op}")),
        (Method::POST, format!("/api/v1/operations/{acme_op}/cancel")),
    ] {
        let r = with(server, &globex, method, &path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let all: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/operations").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1, "a refused add stored operations: {all}");

    // The fleet at a glance: each tenant counts its own devices and their operations;
    // the server's push connections are the operators' figure only.
    let count = |fleet: &Value, list: &str| -> i64 {
        fleet[list].as_array().unwrap().iter().map(|r| r["count"].as_i64().unwrap()).sum()
    };
    let fleet: Value = read(server, &globex, "/api/v1/fleet").await;
    assert_eq!((count(&fleet, "devices"), count(&fleet, "operations")), (1, 0), "{fleet}");
    assert!(fleet.get("online_now").is_none(), "{fleet}");
    let fleet: Value = read(server, &acme, "/api/v1/fleet").await;
    assert_eq!((count(&fleet, "devices"), count(&fleet, "operations")), (1, 1), "{fleet}");
    assert_eq!(fleet["devices"][0]["device_type"], "android", "{fleet}");
    let fleet: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/fleet").await;
    assert_eq!((count(&fleet, "devices"), count(&fleet, "operations")), (3, 1), "{fleet}");
    assert!(fleet["online_now"].is_i64(), "{fleet}");

    // Acme's device gets its operation; Globex's poll of Acme's device is refused.
    let r = server.poll_android("acme-1", &acme_device, "[]").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("DEVICE_RING"));

    // Every other endpoint refuses a tenant's admin, and none names Acme's device.
    let served = [drover_tests::SCOPED, TENANT_ADMIN].concat();
    server.walk_refused(&globex, &served, "acme-1", acme_op).await;

    tenant_groups(server, &acme, &globex).await;
    tenant_webhooks(server, &acme, &globex).await;
    tenant_policies(server, &acme, &globex).await;
    tenant_plugin_settings(server, &acme, &globex).await;

    // The event log: the events about its own devices and its own groups and policies,
    // nothing of the other tenant's or of the server's own (tokens, tenants, the
    // operators' groups and policies).
    let events: Value = read(server, &globex, "/api/v1/events?limit=1000").await;
    // Its own callers' audit rows are its own; they name what its callers asked for (the
    // walk above named Acme's device), so they are set apart from the rest.
    let (audit, items): (Vec<&Value>, Vec<&Value>) =
        events["items"].as_array().unwrap().iter().partition(|e| e["type"] == "admin.action");
    assert!(!audit.is_empty() && audit.iter().all(|e| e["tenant"] == "globex"), "{events}");
    let events = Value::from(items.iter().map(|e| (*e).clone()).collect::<Vec<_>>());
    assert!(
        items.iter().any(|e| e["type"] == "device.enrolled" && e["target"] == "device/android/globex-1"),
        "{events}"
    );
    assert!(items.iter().any(|e| e["type"] == "group.created" && e["target"] == "group/globex/lab"), "{events}");
    assert!(!events.to_string().contains("acme"), "Acme's events reached Globex: {events}");
    assert!(
        !items.iter().any(|e| e["type"] == "policy.changed"),
        "the operators' policy events reached Globex: {events}"
    );
    let acme_events: Value = read(server, &acme, "/api/v1/events?type=operation.").await;
    assert!(!acme_events["items"].as_array().unwrap().is_empty(), "{acme_events}");
    // Its activities' rows name no device: they are its tenant's (Globex's log, above,
    // holds none of them).
    let added: Value = read(server, &acme, "/api/v1/events?type=activity.").await;
    let added = added["items"].as_array().unwrap();
    assert!(
        added.iter().any(|e| e["target"] == format!("activity/{acme_activity}") && e["tenant"] == "acme"),
        "{added:?}"
    );
    assert!(added.iter().all(|e| e["tenant"] == "acme"), "the operators' activities reached Acme: {added:?}");
    let acme_events: Value = read(server, &acme, "/api/v1/events?type=policy.").await;
    let seen: Vec<(&str, &str)> = acme_events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["target"].as_str().unwrap(), e["data"]["change"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("policy/acme/cameras", "created"),
            ("policy/acme/lab-cameras", "created"),
            ("policy/acme/cameras", "deleted"),
            ("policy/acme/lab-cameras", "deleted")
        ],
        "its own policies' events, not the operators' baseline"
    );

    // The audit trail: a tenant's admin reads its own callers' rows and no one else's; an
    // operator reads every row, each tenant's marked.
    let trail: Value = read(server, &globex, "/api/v1/audit?limit=1000").await;
    let rows = trail["items"].as_array().unwrap();
    assert!(rows.iter().any(|e| e["action"] == "POST /api/v1/groups" && e["outcome"] == "ok"), "{trail}");
    assert!(rows.iter().all(|e| e["tenant"] == "globex"), "another's audit rows reached Globex: {trail}");
    let trail: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/audit?limit=1000").await;
    for tenant in ["acme", "globex"] {
        assert!(trail["items"].as_array().unwrap().iter().any(|e| e["tenant"] == tenant), "{tenant}: {trail}");
    }

    // A tenant's metrics are its own fleet's: no other tenant's, none of the server's
    // plugin or delivery counters. The MQTT event feed is the operators'.
    let r = with(server, &globex, Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains(r#"drover_devices{device_type="android",status="active"} "#), "{text}");
    assert!(text.contains("drover_operations{state="), "{text}");
    for leak in ["acme", "drover_plugin_", "drover_device_messages", "drover_push_online"] {
        assert!(!text.contains(leak), "{leak} in Globex's metrics: {text}");
    }
    let all = read_text(server, drover_tests::ADMIN_TOKEN, "/metrics").await;
    assert!(all.contains("drover_plugin_calls") && !all.contains("drover_devices{"), "{all}");
    let port = server.mqtt.expect("the embedded broker runs").port();
    let (ok, said) = mosquitto_sub(port, &["-u", "admin", "-P", &globex, "-t", "drover-events/#"]).await;
    assert!(!ok && !said.contains("drover-events/"), "{said}");
    // A device reaches only its own topics, whatever its tenant.
    let args = ["-u", "android/acme-1", "-P", &acme_device, "-t", "drover/android/globex-1/operations"];
    let (_, said) = mosquitto_sub(port, &args).await;
    assert!(said.contains("denied"), "{said}");

    // A tenant's user acts within the tenant too.
    let r = server
        .admin(Method::POST, "/api/v1/users")
        .json(&json!({ "name": "wile", "password": "correct horse battery staple", "role": "operator",
                       "tenant": "acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created(r).await["tenant"], "acme");
    let r = server
        .http
        .post(server.url("/api/v1/login"))
        .json(&json!({ "name": "wile", "password": "correct horse battery staple" }))
        .send()
        .await
        .unwrap();
    let wile = created(r).await["token"].as_str().unwrap().to_string();
    assert_eq!(ids(server, &wile, "/api/v1/devices").await, ["acme-1"]);

    // A tenant's admin manages its tenant's users, and reaches no other's.
    let r = with(server, &acme, Method::POST, "/api/v1/users")
        .json(&json!({ "name": "road-runner", "password": "correct horse battery staple", "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created(r).await["tenant"], "acme", "made into the admin's tenant");
    let r = with(server, &globex, Method::POST, "/api/v1/users")
        .json(&json!({ "name": "spy", "password": "correct horse battery staple", "role": "admin", "tenant": "acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let users: Value = read(server, &acme, "/api/v1/users").await;
    let names: Vec<&str> = users["items"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["road-runner", "wile"], "{users}");
    let users: Value = read(server, &globex, "/api/v1/users").await;
    assert_eq!(users["items"].as_array().unwrap().len(), 0, "{users}");
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let r = with(server, &globex, method.clone(), "/api/v1/users/wile")
            .json(&json!({ "disabled": true }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} another tenant's user");
    }
    assert_eq!(ids(server, &wile, "/api/v1/devices").await, ["acme-1"], "Globex's tries changed nothing");
    let r = with(server, &acme, Method::PATCH, "/api/v1/users/road-runner")
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Its users' events are in its log, and in no other tenant's.
    assert_eq!(
        logged(server, &acme, "user.").await,
        [
            "user.created user/wile",
            "user.logged_in user/wile",
            "user.created user/road-runner",
            "user.updated user/road-runner"
        ]
    );
    assert_eq!(logged(server, &globex, "user.").await, Vec::<String>::new());

    // A tenant's admin gives its LwM2M devices their DTLS keys, and reaches no other's.
    let r = with(server, &acme, Method::POST, "/api/v1/devices/import")
        .body("device_type,device_id\nlwm2m,acme-meter\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r =
        with(server, &acme, Method::PUT, "/api/v1/devices/lwm2m/acme-meter/psk").json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = with(server, &acme, Method::GET, "/api/v1/devices/lwm2m/acme-meter/psk").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["identity"], "acme-meter");
    for method in [Method::PUT, Method::GET] {
        let r = with(server, &globex, method.clone(), "/api/v1/devices/lwm2m/acme-meter/psk")
            .json(&json!({ "key": "00112233445566778899aabbccddeeff" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} another tenant's device key");
    }
    let r = server.admin(Method::GET, "/api/v1/devices/lwm2m/acme-meter/psk").send().await.unwrap();
    assert!(r.json::<Value>().await.unwrap()["revoked_at"].is_null(), "Globex's try replaced Acme's key");

    // A pre-registered identity is claimed only with a token of its own tenant.
    let r = with(server, &acme, Method::POST, "/api/v1/devices/import")
        .body("device_type,device_id\nandroid,acme-2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["tenant"], "acme");
    let r = with(server, &globex, Method::POST, "/api/v1/enrollment-tokens")
        .json(&json!({ "device_type": "android" }))
        .send()
        .await
        .unwrap();
    let globex_enroll = created(r).await["token"].as_str().unwrap().to_string();
    let r = server
        .http
        .post(server.url("/agent/v1/android/enroll"))
        .bearer_auth(&globex_enroll)
        .body(enroll_body("acme-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "another tenant's token claimed a pre-registered device");
    assert_eq!(ids(server, &globex, "/api/v1/devices").await, ["globex-1"]);
    enroll(server, &acme, "acme-2").await;
    assert_eq!(ids(server, &acme, "/api/v1/devices").await, ["acme-1", "acme-2", "acme-meter"]);
    // The unused token still enrolls a new device into Globex: the refusal used none.
    let r = server
        .http
        .post(server.url("/agent/v1/android/enroll"))
        .bearer_auth(&globex_enroll)
        .body(enroll_body("globex-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A removed identity enrolled into another tenant is a new device: Acme's history of
    // it stays Acme's, under the old record renamed.
    let r = server.admin(Method::DELETE, "/api/v1/devices/android/acme-1").send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    enroll(server, &globex, "acme-1").await;
    let d: Value = read(server, &globex, "/api/v1/devices/android/acme-1").await;
    assert_eq!(d["tenant"], "globex", "{d}");
    let ops: Value = read(server, &globex, "/api/v1/operations?device_type=android&device_id=acme-1").await;
    assert_eq!(ops["items"].as_array().unwrap().len(), 0, "Acme's operations reached Globex: {ops}");
    let r = with(server, &globex, Method::GET, &format!("/api/v1/operations/{acme_op}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let removed: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/devices?status=removed").await;
    let old = &removed["items"][0];
    assert!(old["device_id"].as_str().unwrap().starts_with("acme-1~removed-"), "{removed}");
    assert_eq!(old["tenant"], "acme");
    let r = server.admin(Method::GET, &format!("/api/v1/operations/{acme_op}")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["device"]["id"], old["device_id"], "the history stays with it");

    // Tenants are the operators' to manage; one that holds anything stays.
    let listed: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/tenants").await;
    let counts: Vec<(&str, i64)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["devices"].as_i64().unwrap()))
        .collect();
    assert_eq!(counts, [("acme", 2), ("default", 1), ("globex", 3)]);
    let r = server.admin(Method::DELETE, "/api/v1/tenants/acme").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("3 device(s)"));
    let r = server.admin(Method::DELETE, "/api/v1/tenants/default").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = server.admin(Method::POST, "/api/v1/tenants").json(&json!({ "name": "empty" })).send().await.unwrap();
    created(r).await;
    let r = server
        .admin(Method::POST, "/api/v1/groups")
        .json(&json!({ "name": "kiosks", "tenant": "empty", "query": { "tags": ["kiosk"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(created(r).await["name"], "empty/kiosks", "an operator makes a tenant's group");
    let r = server.admin(Method::DELETE, "/api/v1/tenants/empty").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = server.admin(Method::GET, "/api/v1/groups/empty%2Fkiosks").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a removed tenant's groups go with it");
    let events: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/events?type=tenant.").await;
    let types: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["tenant.created", "tenant.created", "tenant.created", "tenant.removed"], "{events}");

    // Last: their boards and phones would be in the device lists above.
    tenant_rollouts(server, &acme, &globex).await;
    tenant_alerts(server, &acme, &globex).await;
    tenant_plugins(server, &acme, &globex).await;
}

/// What a successful `GET path` with `token` answers.
async fn read_text(server: &TestServer, token: &str, path: &str) -> String {
    let r = with(server, token, Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.text().await.unwrap()
}

async fn read(server: &TestServer, token: &str, path: &str) -> Value {
    let r = with(server, token, Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

/// `TYPE TARGET` of each event `token` reads of type `prefix`, oldest first.
async fn logged(server: &TestServer, token: &str, prefix: &str) -> Vec<String> {
    let events = read(server, token, &format!("/api/v1/events?type={prefix}")).await;
    let line = |e: &Value| format!("{} {}", e["type"].as_str().unwrap(), e["target"].as_str().unwrap());
    events["items"].as_array().unwrap().iter().map(line).collect()
}

/// Names of the groups `token` lists.
async fn group_names(server: &TestServer, token: &str) -> Vec<String> {
    let body = read(server, token, "/api/v1/groups").await;
    body["items"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap().to_string()).collect()
}

/// The code of an error answer, after checking its status.
async fn refused(r: reqwest::Response, status: StatusCode) -> (String, String) {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    (body["error"]["code"].as_str().unwrap().to_string(), body.to_string())
}

/// Groups of a tenant: named within it, seen and used by it alone, and holding its
/// devices only, whoever uses them. Acme has `acme-1` (tagged `any`), Globex `globex-1`.
async fn tenant_groups(server: &TestServer, acme: &str, globex: &str) {
    for (admin, name) in [(acme, "acme/lab"), (globex, "globex/lab")] {
        let r =
            with(server, admin, Method::POST, "/api/v1/groups").json(&json!({ "name": "lab" })).send().await.unwrap();
        let g = created(r).await;
        assert_eq!((&g["name"], g["tenant"].is_string()), (&json!(name), true), "{g}");
    }
    let r = with(server, acme, Method::POST, "/api/v1/groups").json(&json!({ "name": "a/b" })).send().await.unwrap();
    assert_eq!(refused(r, StatusCode::BAD_REQUEST).await.0, "invalid", "a name with `/`");
    let r = with(server, acme, Method::POST, "/api/v1/groups")
        .json(&json!({ "name": "lab", "tenant": "globex" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a group in another tenant");

    // The same tag on both tenants' devices: a tenant's dynamic group holds its own only,
    // and so does its preview; an operators' group spans tenants.
    let r = server
        .admin(Method::PUT, "/api/v1/devices/android/globex-1/tags")
        .json(&json!({ "tags": ["any"] }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let tagged = json!({ "name": "tagged", "query": { "tags": ["any"] } });
    let r = with(server, acme, Method::POST, "/api/v1/groups").json(&tagged).send().await.unwrap();
    assert_eq!(created(r).await["devices"], 1, "Acme's dynamic group counts Globex's device");
    let r = server.admin(Method::POST, "/api/v1/groups").json(&tagged).send().await.unwrap();
    assert_eq!(created(r).await["devices"], 2, "the operators' group spans tenants");
    let preview = "/api/v1/devices/count?query=%7B%22tags%22%3A%5B%22any%22%5D%7D";
    let r = with(server, acme, Method::GET, preview).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["devices"], 1);

    // Each sees its own groups; the operators see all.
    assert_eq!(group_names(server, acme).await, ["acme/lab", "acme/tagged"]);
    assert_eq!(group_names(server, globex).await, ["globex/lab"]);
    assert_eq!(
        group_names(server, drover_tests::ADMIN_TOKEN).await,
        ["acme/lab", "acme/tagged", "globex/lab", "tagged"]
    );
    for path in ["/api/v1/groups/acme%2Flab", "/api/v1/groups/tagged", "/api/v1/devices?group=acme%2Flab"] {
        let r = with(server, globex, Method::GET, path).send().await.unwrap();
        let (code, body) = refused(r, StatusCode::NOT_FOUND).await;
        assert!(!body.contains("acme-1"), "{code}: {body}");
    }
    let r = with(server, globex, Method::GET, "/api/v1/groups/lab").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "globex/lab", "a tenant names its group without its tenant");

    // Members: a tenant's own devices only, from anyone.
    let acme_1 = json!({ "devices": [{ "type": "android", "id": "acme-1" }] });
    let r = with(server, globex, Method::POST, "/api/v1/groups/lab/members").json(&acme_1).send().await.unwrap();
    let (code, body) = refused(r, StatusCode::BAD_REQUEST).await;
    assert_eq!(code, "unknown_device", "{body}");
    assert!(!body.contains("tenant"), "the refusal tells Globex nothing of Acme's tenant: {body}");
    let r = server.admin(Method::POST, "/api/v1/groups/globex%2Flab/members").json(&acme_1).send().await.unwrap();
    assert_eq!(refused(r, StatusCode::BAD_REQUEST).await.0, "other_tenant");
    let r = with(server, acme, Method::POST, "/api/v1/groups/lab/members").json(&acme_1).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(ids(server, acme, "/api/v1/devices?group=lab").await, ["acme-1"]);
    let r = server.admin(Method::GET, "/api/v1/groups/globex%2Flab").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["devices"], 0, "the refused adds added nothing");

    // Targets: a tenant names its own groups only; a tenant's dynamic group reaches its
    // devices only, even in an operator's operation.
    let ring = |group: &str| json!({ "code": "DEVICE_RING", "targets": { "groups": [group] } });
    let r = with(server, globex, Method::POST, "/api/v1/operations").json(&ring("acme/lab")).send().await.unwrap();
    assert_eq!(refused(r, StatusCode::BAD_REQUEST).await.0, "unknown_group");
    let r = with(server, globex, Method::POST, "/api/v1/operations").json(&ring("tagged")).send().await.unwrap();
    assert_eq!(refused(r, StatusCode::BAD_REQUEST).await.0, "unknown_group", "the operators' group");
    let r = with(server, acme, Method::POST, "/api/v1/operations").json(&ring("lab")).send().await.unwrap();
    assert_eq!(created(r).await["operations"], 1);
    let r = server.admin(Method::POST, "/api/v1/operations").json(&ring("acme/tagged")).send().await.unwrap();
    assert_eq!(created(r).await["operations"], 1, "Acme's dynamic group reached Globex's tagged device");
    let ops: Value = read(server, globex, "/api/v1/operations").await;
    assert_eq!(ops["items"].as_array().unwrap().len(), 0, "{ops}");

    // A tenant's token scoped to its group `lab` reaches that group's devices.
    let r = with(server, acme, Method::POST, "/api/v1/admin-tokens")
        .json(&json!({ "name": "lab-only", "role": "viewer", "scope": { "groups": ["lab"] } }))
        .send()
        .await
        .unwrap();
    let lab_only = created(r).await["token"].as_str().unwrap().to_string();
    assert_eq!(ids(server, &lab_only, "/api/v1/devices").await, ["acme-1"]);
    let r = with(server, globex, Method::POST, "/api/v1/admin-tokens")
        .json(&json!({ "name": "lab-only", "role": "viewer", "scope": { "groups": ["acme/lab"] } }))
        .send()
        .await
        .unwrap();
    let spy = created(r).await["token"].as_str().unwrap().to_string();
    assert_eq!(ids(server, &spy, "/api/v1/devices").await, Vec::<String>::new(), "a scope naming Acme's group");

    // Deleting: one's own, never another's; each with its event.
    let r = with(server, globex, Method::DELETE, "/api/v1/groups/acme%2Ftagged").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = with(server, acme, Method::DELETE, "/api/v1/groups/tagged").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        logged(server, drover_tests::ADMIN_TOKEN, "group.").await,
        [
            "group.created group/acme/lab",
            "group.created group/globex/lab",
            "group.created group/acme/tagged",
            "group.created group/tagged",
            "group.members_added group/acme/lab",
            "group.removed group/acme/tagged",
        ]
    );
}

/// Waits (bounded) until webhook `name` has delivered up to the latest event.
async fn delivered(server: &TestServer, name: &str) {
    let latest = server.state.store.latest_event().await.unwrap();
    for _ in 0..200 {
        let w: Value = read(server, drover_tests::ADMIN_TOKEN, &format!("/api/v1/webhooks/{name}")).await;
        if w["cursor"].as_i64().unwrap() >= latest {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("webhook {name} never delivered event {latest}");
}

/// Webhooks of a tenant: named within it, managed by it alone, and sent the events about
/// its devices only, while the operators' subscription hears everything.
async fn tenant_webhooks(server: &TestServer, acme: &str, globex: &str) {
    let acme_hook = drover_tests::provider::Provider::start(vec![]).await;
    let operators_hook = drover_tests::provider::Provider::start(vec![]).await;
    let r = with(server, acme, Method::POST, "/api/v1/webhooks")
        .json(&json!({ "name": "feed", "url": acme_hook.base }))
        .send()
        .await
        .unwrap();
    let feed = created(r).await;
    assert_eq!((&feed["name"], &feed["tenant"]), (&json!("acme/feed"), &json!("acme")), "{feed}");
    let r = server
        .admin(Method::POST, "/api/v1/webhooks")
        .json(&json!({ "name": "all", "url": operators_hook.base }))
        .send()
        .await
        .unwrap();
    created(r).await;
    let r = with(server, acme, Method::POST, "/api/v1/webhooks")
        .json(&json!({ "name": "lab", "url": acme_hook.base, "group": "lab", "types": ["nothing."] }))
        .send()
        .await
        .unwrap();
    assert_eq!(created(r).await["group"], "acme/lab", "a tenant's subscription names its tenant's group");
    let r = with(server, globex, Method::POST, "/api/v1/webhooks")
        .json(&json!({ "name": "spy", "url": acme_hook.base, "group": "acme/lab" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a subscription to another tenant's group");

    // Globex neither sees nor touches Acme's subscriptions.
    let listed: Value = read(server, globex, "/api/v1/webhooks").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");
    let listed: Value = read(server, acme, "/api/v1/webhooks").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    for (method, path) in [
        (Method::GET, "/api/v1/webhooks/acme%2Ffeed"),
        (Method::GET, "/api/v1/webhooks/acme%2Ffeed/deliveries"),
        (Method::POST, "/api/v1/webhooks/acme%2Ffeed/enable"),
        (Method::POST, "/api/v1/webhooks/acme%2Ffeed/redeliver"),
        (Method::DELETE, "/api/v1/webhooks/acme%2Ffeed"),
        (Method::GET, "/api/v1/webhooks/all"),
    ] {
        let r = with(server, globex, method.clone(), path).json(&json!({ "after": 0 })).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }

    // Both tenants' devices are renamed: Acme hears about its own only; the operators
    // about both.
    for id in ["acme-1", "globex-1"] {
        let r = server
            .admin(Method::PATCH, &format!("/api/v1/devices/android/{id}"))
            .json(&json!({ "name": format!("{id} at the front desk") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    delivered(server, "acme%2Ffeed").await;
    delivered(server, "all").await;
    let heard = |p: &drover_tests::provider::Provider| -> String {
        p.received().iter().map(|r| String::from_utf8_lossy(&r.body).to_string()).collect::<Vec<_>>().join("\n")
    };
    let acme_heard = heard(&acme_hook);
    assert!(acme_heard.contains("acme-1"), "Acme's subscription heard nothing of its device: {acme_heard}");
    assert!(!acme_heard.contains("globex"), "Acme's subscription heard of Globex: {acme_heard}");
    let all_heard = heard(&operators_hook);
    assert!(all_heard.contains("acme-1") && all_heard.contains("globex-1"), "{all_heard}");
    let r = with(server, acme, Method::DELETE, "/api/v1/webhooks/lab").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "a tenant's admin removes its own by its short name");
}

/// The names of the policies that make device `android/id`'s effective policy (none: 404).
async fn effective(server: &TestServer, id: &str) -> Vec<String> {
    let r = server.admin(Method::GET, &format!("/api/v1/devices/android/{id}/policy")).send().await.unwrap();
    if r.status() == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    let body: Value = r.json().await.unwrap();
    body["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

/// Policies of a tenant: named within it, managed by it alone, applied to its devices
/// only (even with no `applies_to`, which means every device of its types), and ranked
/// below the operators' policies.
async fn tenant_policies(server: &TestServer, acme: &str, globex: &str) {
    let cameras = json!({ "name": "cameras", "priority": 100,
                          "profiles": { "android": [{ "code": "CAMERA", "payload": { "enabled": false } }] } });
    let r = with(server, acme, Method::POST, "/api/v1/policies").json(&cameras).send().await.unwrap();
    let p = created(r).await;
    assert_eq!((&p["name"], &p["tenant"]), (&json!("acme/cameras"), &json!("acme")), "{p}");
    assert_eq!(effective(server, "acme-1").await, ["acme/cameras"]);
    assert_eq!(effective(server, "globex-1").await, Vec::<String>::new(), "Acme's policy reached Globex's device");
    // Each reads its own device's policy and compliance, and not the other's.
    for path in ["/api/v1/devices/android/acme-1/policy", "/api/v1/devices/android/acme-1/compliance"] {
        let r = with(server, acme, Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let r = with(server, globex, Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }

    // Globex neither sees nor touches it.
    let listed: Value = read(server, globex, "/api/v1/policies").await;
    assert_eq!(listed.as_array().unwrap().len(), 0, "{listed}");
    let spec = json!({ "profiles": { "android": [{ "code": "CAMERA", "payload": { "enabled": true } }] } });
    for (method, path, body) in [
        (Method::GET, "/api/v1/policies/acme%2Fcameras", json!({})),
        (Method::PUT, "/api/v1/policies/acme%2Fcameras", spec),
        (Method::DELETE, "/api/v1/policies/acme%2Fcameras", json!({})),
        (Method::POST, "/api/v1/policies/acme%2Fcameras/deactivate", json!({})),
        (Method::GET, "/api/v1/policies/acme%2Fcameras/revisions", json!({})),
        (Method::POST, "/api/v1/policies/acme%2Fcameras/restore", json!({ "revision": 1 })),
        (Method::GET, "/api/v1/policies/acme%2Fcameras/compliance", json!({})),
    ] {
        let r = with(server, globex, method.clone(), path).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    assert_eq!(effective(server, "acme-1").await, ["acme/cameras"], "Globex's tries changed nothing");

    // A tenant's policy names its tenant's groups only.
    let in_group = |group: &str| {
        json!({ "name": "lab-cameras", "applies_to": { "groups": [group] },
                "profiles": { "android": [{ "code": "CAMERA", "payload": { "enabled": false } }] } })
    };
    let r = with(server, globex, Method::POST, "/api/v1/policies").json(&in_group("acme/lab")).send().await.unwrap();
    assert_eq!(refused(r, StatusCode::BAD_REQUEST).await.0, "unknown_group");
    let r = with(server, acme, Method::POST, "/api/v1/policies").json(&in_group("lab")).send().await.unwrap();
    created(r).await;

    // The operators' policy ranks above every tenant's, whatever the priorities.
    let baseline = json!({ "name": "baseline", "priority": 0,
                           "profiles": { "android": [{ "code": "CAMERA", "payload": { "enabled": true } }] } });
    let r = server.admin(Method::POST, "/api/v1/policies").json(&baseline).send().await.unwrap();
    created(r).await;
    assert_eq!(effective(server, "acme-1").await, ["baseline"]);
    assert_eq!(effective(server, "globex-1").await, ["baseline"]);
    let listed: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/policies").await;
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["baseline", "acme/cameras", "acme/lab-cameras"]);

    // Gone again, by their own admins; the devices have no policy left.
    let r = server.admin(Method::DELETE, "/api/v1/policies/baseline").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for name in ["cameras", "lab-cameras"] {
        let r = with(server, acme, Method::DELETE, &format!("/api/v1/policies/{name}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
    }
    assert_eq!(effective(server, "acme-1").await, Vec::<String>::new());
}

/// What a tenant sets for a plugin is its own: Acme's admin sets apns values for Acme's
/// devices, reads them back with the secret masked, and Globex neither reads, replaces
/// nor removes them (naming Acme is refused, its own is "nothing set"); a tenant cannot
/// set where a plugin sends (hosts, redirects); an operator reads Acme's.
async fn tenant_plugin_settings(server: &TestServer, acme: &str, globex: &str) {
    let acme_path = "/api/v1/tenants/acme/plugins/apns/settings";
    let r = with(server, acme, Method::PUT, acme_path)
        .json(&json!({ "config": { "topic": "com.apple.mgmt.External.acme", "auth_token": "acme-secret" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let shown: Value = read(server, acme, acme_path).await;
    assert_eq!(shown["config"], json!({ "topic": "com.apple.mgmt.External.acme", "auth_token": "***" }), "{shown}");
    let shown: Value = read(server, drover_tests::ADMIN_TOKEN, acme_path).await;
    assert_eq!(shown["config"]["topic"], "com.apple.mgmt.External.acme", "{shown}");
    // The server's own settings are untouched.
    let server_settings: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/plugins/apns/settings").await;
    assert!(!server_settings.to_string().contains("acme"), "{server_settings}");

    for method in [Method::GET, Method::DELETE] {
        let r = with(server, globex, method.clone(), acme_path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} of Acme's settings by Globex");
    }
    let r =
        with(server, globex, Method::PUT, acme_path).json(&json!({ "config": { "topic": "x" } })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = with(server, globex, Method::GET, "/api/v1/tenants/globex/plugins/apns/settings").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "Globex set nothing");
    let r = with(server, acme, Method::PUT, acme_path)
        .json(&json!({ "config": {}, "redirects": { "api.push.apple.com": "http://127.0.0.1:1" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a tenant redirected a provider");
    assert!(r.text().await.unwrap().contains("redirects"));
    let shown: Value = read(server, acme, acme_path).await;
    assert_eq!(shown["config"]["topic"], "com.apple.mgmt.External.acme", "the refused write changed nothing");

    // Writing back what GET shows keeps the secret; deleting forgets it all.
    let r = with(server, acme, Method::PUT, acme_path).json(&shown).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = with(server, acme, Method::DELETE, acme_path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(server, acme, Method::GET, acme_path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// An ESP8266 board of the tenant whose admin is `admin`, enrolled with its token;
/// returns its id.
async fn board(server: &TestServer, admin: &str, chip: &str) -> String {
    let body = json!({ "chip_id": chip, "model": "ESP-12F", "firmware": "1.0" }).to_string();
    enrolled(server, admin, "esp8266", body).await["device_id"].as_str().unwrap().to_string()
}

/// Upload image `fw` 2.0 (the same bytes for everyone) as `token`'s caller, with more
/// form fields.
async fn upload(server: &TestServer, token: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut form =
        reqwest::multipart::Form::new().text("name", "fw").text("version", "2.0").text("device_types", "esp8266");
    for (k, v) in extra {
        form = form.text(k.to_string(), v.to_string());
    }
    let form = form.part("file", reqwest::multipart::Part::bytes(vec![7u8; 4096]).file_name("fw.bin"));
    with(server, token, Method::POST, "/api/v1/artifacts").multipart(form).send().await.unwrap()
}

/// `name` of each item of the list at `path`, as `token` reads it.
async fn names(server: &TestServer, token: &str, path: &str) -> Vec<String> {
    let body = read(server, token, path).await;
    body["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect()
}

/// Artifacts and rollouts of a tenant: each tenant uploads its own `fw` 2.0 (named within
/// it), sees and removes its own only, and rolls it out to its own boards only, even when
/// it names the other's board or an operator makes the rollout; the other tenant cannot
/// name its artifact in a rollout of its own, nor see, pause or cancel its rollout.
async fn tenant_rollouts(server: &TestServer, acme: &str, globex: &str) {
    let acme_board = board(server, acme, "00a1c3e0").await;
    let globex_board = board(server, globex, "00b1c3e0").await;
    for (admin, name) in [(acme, "acme/fw"), (globex, "globex/fw")] {
        let a = created(upload(server, admin, &[]).await).await;
        assert_eq!((&a["name"], a["tenant"].is_string()), (&json!(name), true), "{a}");
    }
    // A tenant's admin cannot upload into another tenant; an operator can.
    let r = upload(server, globex, &[("tenant", "acme")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = upload(server, drover_tests::ADMIN_TOKEN, &[("tenant", "acme")]).await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "acme/fw 2.0 exists: the operator's upload went into Acme");
    assert_eq!(names(server, globex, "/api/v1/artifacts").await, ["globex/fw"]);
    assert_eq!(names(server, drover_tests::ADMIN_TOKEN, "/api/v1/artifacts").await, ["acme/fw", "globex/fw"]);
    let r = with(server, globex, Method::GET, "/api/v1/artifacts/fw/2.0").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "globex/fw", "a tenant names its own without TENANT/");
    for method in [Method::GET, Method::DELETE] {
        let r = with(server, globex, method.clone(), "/api/v1/artifacts/acme%2Ffw/2.0").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} of Acme's artifact by Globex");
    }

    // Acme's rollout names both boards and reaches its own only.
    let spec = |name: &str, artifact: &str| {
        json!({ "name": name, "artifact": { "name": artifact, "version": "2.0" },
                "targets": { "devices": [{ "type": "esp8266", "id": acme_board }, { "type": "esp8266", "id": globex_board }] },
                "phases": [{ "percent": 100 }], "advance": { "manual": true } })
    };
    let r = with(server, acme, Method::POST, "/api/v1/rollouts").json(&spec("r1", "fw")).send().await.unwrap();
    let r1 = created(r).await;
    assert_eq!(
        (&r1["name"], &r1["tenant"], &r1["artifact"]["name"]),
        (&json!("acme/r1"), &json!("acme"), &json!("acme/fw"))
    );
    let devices = read(server, acme, "/api/v1/rollouts/r1/devices").await;
    let ids: Vec<&str> = devices["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [acme_board.as_str()], "{devices}");
    // Globex cannot roll out Acme's artifact: it names its own tenant's only.
    let r = with(server, globex, Method::POST, "/api/v1/rollouts").json(&spec("r2", "acme/fw")).send().await.unwrap();
    assert_eq!(refused(r, StatusCode::BAD_REQUEST).await.0, "unknown_artifact");
    // An operator's rollout of Acme's artifact is Acme's, and reaches Acme's board only.
    let r = server.admin(Method::POST, "/api/v1/rollouts").json(&spec("op", "acme/fw")).send().await.unwrap();
    let op = created(r).await;
    assert_eq!((&op["name"], &op["tenant"]), (&json!("acme/op"), &json!("acme")), "{op}");
    assert_eq!(op["counts"].as_object().unwrap().values().map(|n| n.as_i64().unwrap()).sum::<i64>(), 1, "{op}");

    // Globex neither sees nor drives Acme's rollouts.
    assert!(names(server, globex, "/api/v1/rollouts").await.is_empty());
    assert_eq!(names(server, acme, "/api/v1/rollouts").await, ["acme/r1", "acme/op"]);
    for (method, path) in [
        (Method::GET, "/api/v1/rollouts/acme%2Fr1"),
        (Method::GET, "/api/v1/rollouts/acme%2Fr1/devices"),
        (Method::POST, "/api/v1/rollouts/acme%2Fr1/pause"),
        (Method::POST, "/api/v1/rollouts/acme%2Fr1/cancel"),
        (Method::POST, "/api/v1/rollouts/acme%2Fr1/advance"),
        (Method::DELETE, "/api/v1/rollouts/acme%2Fr1"),
    ] {
        let r = with(server, globex, method.clone(), path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    let r = read(server, acme, "/api/v1/rollouts/r1").await;
    assert_eq!(r["state"], "running", "Globex's tries changed nothing");
    // Its metrics hold its rollouts; Globex's none.
    let text = read_text(server, acme, "/metrics").await;
    assert!(text.contains(r#"drover_rollout_devices{rollout="acme/r1",state="#), "{text}");
    assert!(!read_text(server, globex, "/metrics").await.contains("acme/"));

    // Their events are Acme's, never Globex's.
    let acme_events = logged(server, acme, "rollout.").await;
    assert!(acme_events.contains(&"rollout.created rollout/acme/r1".to_string()), "{acme_events:?}");
    assert!(logged(server, acme, "artifact.").await.contains(&"artifact.added artifact/acme/fw/2.0".to_string()));
    assert!(logged(server, globex, "rollout.").await.is_empty());
    assert_eq!(logged(server, globex, "artifact.").await, ["artifact.added artifact/globex/fw/2.0"]);

    // Acme stops and removes its own; then its artifact can go.
    for name in ["r1", "op"] {
        let r = with(server, acme, Method::POST, &format!("/api/v1/rollouts/{name}/cancel")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        // It is over once the driver saw its devices finish (the next tick).
        let mut status = StatusCode::CONFLICT;
        for _ in 0..100 {
            let r = with(server, acme, Method::DELETE, &format!("/api/v1/rollouts/{name}")).send().await.unwrap();
            status = r.status();
            if status != StatusCode::CONFLICT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, StatusCode::NO_CONTENT, "{name}");
    }
    let r = with(server, acme, Method::DELETE, "/api/v1/artifacts/fw/2.0").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Globex's, of the same bytes, is still served.
    assert_eq!(names(server, globex, "/api/v1/artifacts").await, ["globex/fw"]);

    // A tenant that holds an artifact stays until the artifact goes (its bytes are in the
    // artifact storage).
    let r = server.admin(Method::POST, "/api/v1/tenants").json(&json!({ "name": "vacant" })).send().await.unwrap();
    created(r).await;
    created(upload(server, drover_tests::ADMIN_TOKEN, &[("tenant", "vacant")]).await).await;
    let r = server.admin(Method::DELETE, "/api/v1/tenants/vacant").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("1 artifact(s)"));
    let r = server.admin(Method::DELETE, "/api/v1/artifacts/vacant%2Ffw/2.0").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = server.admin(Method::DELETE, "/api/v1/tenants/vacant").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// A battery level from Android phone `id` (its access token `token`), now.
async fn battery(server: &TestServer, id: &str, token: &str, level: i64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let r = server
        .http
        .post(server.url(&format!("/agent/v1/android/devices/{id}/telemetry")))
        .bearer_auth(token)
        .json(&json!({ "timestamp": now, "battery": level }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

/// Alert rules, alerts, series and metrics of a tenant: Acme's rule is named within it,
/// seen and managed by Acme alone, and judges Acme's phone only though both phones run
/// flat; Globex reads neither Acme's alert nor its phone's series, and its metric over
/// the whole fleet counts its own phone only.
async fn tenant_alerts(server: &TestServer, acme: &str, globex: &str) {
    let acme_phone = enroll(server, acme, "acme-tel").await;
    let globex_phone = enroll(server, globex, "globex-tel").await;
    let spec = json!({ "name": "low-battery", "kind": "threshold", "metric": "battery", "below": 20 });
    let r = with(server, acme, Method::POST, "/api/v1/alert-rules").json(&spec).send().await.unwrap();
    let made = created(r).await;
    assert_eq!((&made["name"], &made["tenant"]), (&json!("acme/low-battery"), &json!("acme")), "{made}");
    let r = with(server, globex, Method::POST, "/api/v1/alert-rules")
        .json(&json!({ "name": "in-lab", "kind": "speed", "limit_kmh": 80, "applies_to": { "groups": ["acme/lab"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused(r, StatusCode::BAD_REQUEST).await.0, "unknown_group", "Globex named Acme's group");

    battery(server, "acme-tel", &acme_phone, 5).await;
    battery(server, "globex-tel", &globex_phone, 5).await;
    let mut open = Vec::new();
    for _ in 0..100 {
        open = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/alerts?rule=acme/low-battery").await["items"]
            .as_array()
            .unwrap()
            .clone();
        if !open.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["device"], "android/acme-tel", "Acme's rule judged Acme's phone only: {open:?}");
    let alert = open[0]["id"].as_i64().unwrap();

    // Globex sees none of it.
    let listed: Value = read(server, globex, "/api/v1/alert-rules").await;
    assert_eq!(listed, json!([]));
    let listed: Value = read(server, globex, "/api/v1/alerts").await;
    assert_eq!(listed["items"], json!([]), "{listed}");
    let listed: Value = read(server, acme, "/api/v1/alerts").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    for (method, path) in [
        (Method::GET, "/api/v1/alert-rules/acme%2Flow-battery".to_string()),
        (Method::PUT, "/api/v1/alert-rules/acme%2Flow-battery".to_string()),
        (Method::DELETE, "/api/v1/alert-rules/acme%2Flow-battery".to_string()),
        (Method::GET, format!("/api/v1/alerts/{alert}")),
        (Method::POST, format!("/api/v1/alerts/{alert}/resolve")),
        (Method::GET, "/api/v1/devices/android/acme-tel/telemetry/series?name=battery&resolution=minute".to_string()),
        (Method::GET, "/api/v1/alerts?device_type=android&device_id=acme-tel".to_string()),
    ] {
        let r = with(server, globex, method.clone(), &path).json(&spec).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    let metric: Value = read(server, globex, "/api/v1/telemetry/metrics?name=battery&resolution=minute").await;
    let devices: i64 =
        metric["buckets"].as_array().unwrap().iter().map(|b| b["devices"].as_i64().unwrap()).max().unwrap();
    assert_eq!(devices, 1, "Globex's metric counted Acme's phone: {metric}");
    let metric: Value =
        read(server, drover_tests::ADMIN_TOKEN, "/api/v1/telemetry/metrics?name=battery&resolution=minute").await;
    let devices: i64 =
        metric["buckets"].as_array().unwrap().iter().map(|b| b["devices"].as_i64().unwrap()).max().unwrap();
    assert_eq!(devices, 2, "{metric}");
    let series: Value =
        read(server, acme, "/api/v1/devices/android/acme-tel/telemetry/series?name=battery&resolution=minute").await;
    assert_eq!(series["buckets"][0]["min"], 5.0, "{series}");

    // Acme changes it, naming it as GET shows it, and removes it; its open alert resolves.
    let changed = json!({ "name": "acme/low-battery", "kind": "threshold", "metric": "battery", "below": 15 });
    let r = with(server, acme, Method::PUT, "/api/v1/alert-rules/low-battery").json(&changed).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let shown: Value = read(server, acme, "/api/v1/alert-rules/low-battery").await;
    assert_eq!((&shown["name"], &shown["below"]), (&json!("acme/low-battery"), &json!(15.0)), "{shown}");
    assert_eq!(logged(server, globex, "alert_rule.").await, Vec::<String>::new());
    assert_eq!(
        logged(server, acme, "alert_rule.").await,
        ["alert_rule.changed alert-rule/acme/low-battery", "alert_rule.changed alert-rule/acme/low-battery"]
    );
    let r = with(server, acme, Method::DELETE, "/api/v1/alert-rules/low-battery").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["resolved_alerts"], 1);
}

/// The Android plugin renamed throughout (its manifest and what `describe` says) to a
/// name of the same length.
fn android_as(name: &[u8; 7]) -> Vec<u8> {
    let mut out = drover_tests::android().to_vec();
    let mut at = 0;
    while let Some(i) = out[at..].windows(7).position(|w| w == b"android") {
        out[at + i..at + i + 7].copy_from_slice(name);
        at += i + 7;
    }
    out
}

/// Upload `component` as `token`'s caller (unsigned: the operators allow it here).
async fn upload_plugin(server: &TestServer, token: &str, component: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new().part("component", reqwest::multipart::Part::bytes(component));
    with(server, token, Method::POST, "/api/v1/plugins").multipart(form).send().await.unwrap()
}

/// Plugins of a tenant: Acme's admin uploads a device type of its own (`acme-an`, the
/// Android plugin renamed), which Globex neither sees, manages nor enrolls into, and
/// which takes no device of another tenant (nor an open enrollment); a tenant cannot
/// replace or suspend a shared plugin, upload another kind, or grant files or network.
async fn tenant_plugins(server: &TestServer, acme: &str, globex: &str) {
    let r = server.admin(Method::PUT, "/api/v1/settings").json(&json!({"allow_unsigned_plugins": true})).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::OK);
    let ours = android_as(b"acme-an");
    let grants = |caps: Value| json!({ "capabilities": caps });
    // Grants first, as an admin would: sandbox-only ones, on its own name only.
    let r =
        with(server, acme, Method::PUT, "/api/v1/plugins/acme-an/grants").json(&grants(json!(["log", "kv"]))).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    let r = with(server, acme, Method::PUT, "/api/v1/plugins/acme-an/grants").json(&grants(json!(["network"]))).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::FORBIDDEN, "a tenant granted network access");
    let r = with(server, globex, Method::PUT, "/api/v1/plugins/acme-an/grants").json(&grants(json!([]))).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::BAD_REQUEST, "Globex granted Acme's plugin");
    let r = with(server, acme, Method::PUT, "/api/v1/plugins/android/grants").json(&grants(json!([]))).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::BAD_REQUEST, "Acme changed a shared plugin's grants");

    // Globex cannot upload it (not its name); Acme cannot replace a shared plugin.
    assert_eq!(upload_plugin(server, globex, ours.clone()).await.status(), StatusCode::BAD_REQUEST);
    let r = upload_plugin(server, acme, drover_tests::android().to_vec()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "Acme uploaded over the first-party android");
    let r = upload_plugin(server, acme, ours).await;
    let up: Value = created(r).await;
    assert_eq!((&up["plugin"]["name"], &up["plugin"]["tenant"]), (&json!("acme-an"), &json!("acme")), "{up}");

    // Who sees it.
    assert!(names(server, acme, "/api/v1/plugins").await.contains(&"acme-an".to_string()));
    let all: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/plugins").await;
    assert!(all["items"].as_array().unwrap().iter().any(|p| p["name"] == "acme-an" && p["tenant"] == "acme"));
    let theirs = names(server, globex, "/api/v1/plugins").await;
    assert!(theirs.contains(&"android".to_string()) && !theirs.contains(&"acme-an".to_string()), "{theirs:?}");
    let types = |v: Value| v["items"].as_array().unwrap().len();
    let (ours, theirs) = (
        types(read(server, acme, "/api/v1/device-types").await),
        types(read(server, globex, "/api/v1/device-types").await),
    );
    assert_eq!(ours, theirs + 1, "Globex sees Acme's device type");
    for (method, path) in [
        (Method::GET, "/api/v1/plugins/acme-an"),
        (Method::GET, "/api/v1/plugins/acme-an/grants"),
        (Method::POST, "/api/v1/plugins/acme-an/suspend"),
        (Method::POST, "/api/v1/plugins/acme-an/rollback"),
    ] {
        let r = with(server, globex, method.clone(), path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    // A tenant manages its own, not the shared ones.
    let r = with(server, acme, Method::POST, "/api/v1/plugins/android/suspend").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for action in ["suspend", "enable"] {
        let r = with(server, acme, Method::POST, &format!("/api/v1/plugins/acme-an/{action}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{action}");
    }
    let r = with(server, acme, Method::PUT, "/api/v1/tenants/globex/plugins/acme-an/settings").json(&json!({})).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::FORBIDDEN);
    let r =
        with(server, globex, Method::PUT, "/api/v1/tenants/globex/plugins/acme-an/settings").json(&json!({})).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::NOT_FOUND, "Globex set Acme's plugin");

    // Only Acme's devices are of its type.
    let token = |admin: &str| {
        with(server, admin, Method::POST, "/api/v1/enrollment-tokens").json(&json!({ "device_type": "acme-an" })).send()
    };
    assert_eq!(token(globex).await.unwrap().status(), StatusCode::BAD_REQUEST);
    let r = token(drover_tests::ADMIN_TOKEN).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "an operator's token into default");
    let t = created(token(acme).await.unwrap()).await;
    let enroll = |token: Option<&str>, id: &str| {
        let mut r = server.http.post(server.url("/agent/v1/acme-an/enroll")).body(enroll_body(id));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = enroll(None, "acme-an-open").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "an open enrollment into Acme's type");
    let r = enroll(t["token"].as_str(), "acme-an-1").await.unwrap();
    let d = created(r).await;
    assert_eq!(d["device_id"], "acme-an-1", "{d}");
    let device: Value = read(server, acme, "/api/v1/devices/acme-an/acme-an-1").await;
    assert_eq!(device["tenant"], "acme", "{device}");
    // Its plugin's changes are in its event log, not Globex's; a shared plugin's in neither.
    let changes = logged(server, acme, "plugin.").await;
    assert_eq!(changes, ["plugin.changed plugin/acme-an"; 4], "regrant, install, suspend, enable");
    assert_eq!(logged(server, globex, "plugin.").await, Vec::<String>::new());

    // A removed tenant's plugin is no one's: a tenant made again with its name does not
    // inherit it.
    let admin_of = |tenant: &'static str, name: &'static str| async move {
        let r = server
            .admin(Method::POST, "/api/v1/admin-tokens")
            .json(&json!({ "name": name, "role": "admin", "tenant": tenant }))
            .send()
            .await
            .unwrap();
        created(r).await["token"].as_str().unwrap().to_string()
    };
    let r = server.admin(Method::POST, "/api/v1/tenants").json(&json!({ "name": "gone" })).send().await.unwrap();
    created(r).await;
    let gone = admin_of("gone", "first").await;
    created(upload_plugin(server, &gone, android_as(b"gone-an")).await).await;
    let r = server.admin(Method::DELETE, "/api/v1/admin-tokens/gone%2Ffirst").send().await.unwrap();
    assert!(r.status().is_success());
    let r = server.admin(Method::DELETE, "/api/v1/tenants/gone").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = server.admin(Method::POST, "/api/v1/tenants").json(&json!({ "name": "gone" })).send().await.unwrap();
    created(r).await;
    let again = admin_of("gone", "second").await;
    assert!(!names(server, &again, "/api/v1/plugins").await.contains(&"gone-an".to_string()));
    let r = with(server, &again, Method::POST, "/api/v1/enrollment-tokens")
        .json(&json!({ "device_type": "gone-an" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "the new `gone` enrolls into the old one's type");
    let r = with(server, &again, Method::POST, "/api/v1/plugins/gone-an/suspend").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let all: Value = read(server, drover_tests::ADMIN_TOKEN, "/api/v1/plugins").await;
    assert!(all["items"].as_array().unwrap().iter().any(|p| p["name"] == "gone-an" && p["tenant"] == "-gone"), "{all}");
}

async fn run(backend: Backend) {
    let server = TestServer::start_with(backend, |c| {
        c.mqtt_events = true;
        // The webhook receivers are on loopback.
        c.webhooks.allow_private = true;
    })
    .await;
    two_tenants(&server).await;
    server.stop().await;
}

/// A tenant's uploads stop at its quota (`--tenant-storage-mb`): artifacts and plugin
/// components count, another tenant's and the operators' do not, and what a removal
/// frees can be used again. The plugin names a tenant holds stop at 50.
async fn storage_quota(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.tenant_storage = 6000).await;
    for name in ["acme", "globex"] {
        let r = server.admin(Method::POST, "/api/v1/tenants").json(&json!({ "name": name })).send().await.unwrap();
        created(r).await;
    }
    let (acme, globex) = (tenant_admin(&server, "acme").await, tenant_admin(&server, "globex").await);
    let r = server.admin(Method::PUT, "/api/v1/settings").json(&json!({"allow_unsigned_plugins": true})).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::OK);
    created(upload(&server, &acme, &[]).await).await;
    // 4096 more bytes would pass 6000.
    let mut form = reqwest::multipart::Form::new().text("name", "fw2").text("version", "2.0");
    form = form.text("device_types", "esp8266");
    let form = form.part("file", reqwest::multipart::Part::bytes(vec![8u8; 4096]).file_name("fw.bin"));
    let r = with(&server, &acme, Method::POST, "/api/v1/artifacts").multipart(form).send().await.unwrap();
    let (code, body) = refused(r, StatusCode::CONFLICT).await;
    assert_eq!(code, "quota", "{body}");
    assert!(body.contains("--tenant-storage-mb"), "{body}");
    // A plugin component counts too.
    let r = upload_plugin(&server, &acme, android_as(b"acme-an")).await;
    assert_eq!(refused(r, StatusCode::CONFLICT).await.0, "quota");
    // Another tenant's quota is its own, and the operators' uploads count for no tenant.
    created(upload(&server, &globex, &[]).await).await;
    created(upload(&server, drover_tests::ADMIN_TOKEN, &[]).await).await;
    // What a removal frees is Acme's again.
    let r = with(&server, &acme, Method::DELETE, "/api/v1/artifacts/fw/2.0").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    created(upload(&server, &acme, &[]).await).await;

    // Plugin names too: a grant claims one, and a tenant holds at most 50.
    for i in 0..51 {
        let r = with(&server, &globex, Method::PUT, &format!("/api/v1/plugins/globex-p{i}/grants"))
            .json(&json!({ "capabilities": ["log"] }))
            .send()
            .await
            .unwrap();
        if i < 50 {
            assert_eq!(r.status(), StatusCode::OK, "{i}");
        } else {
            assert!(refused(r, StatusCode::CONFLICT).await.1.contains("50 plugin names"));
        }
    }
    // Names it holds stay its own to grant again.
    let r =
        with(&server, &globex, Method::PUT, "/api/v1/plugins/globex-p0/grants").json(&json!({ "capabilities": [] }));
    assert_eq!(r.send().await.unwrap().status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_quota_sqlite() {
    storage_quota(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_quota_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    storage_quota(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_sqlite() {
    run(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    run(backend).await;
}
