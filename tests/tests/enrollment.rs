//! Enrollment methods: open self-enrollment switched off, one-time enrollment tokens (and
//! their QR-code URL), bulk pre-registration from CSV. SQLite and PostgreSQL.

use drover_tests::{TestServer, e2e, e2e_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn enroll_body(id: &str) -> String {
    std::fs::read_to_string(format!("{}/../plugins/android/fixtures/enroll.json", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace("354956090214718", id)
}

fn closed(config: &mut drover::config::Config) {
    config.open_enrollment = false;
}

async fn token(server: &TestServer, uses: i64) -> Value {
    let r = server
        .admin(Method::POST, "/api/v1/enrollment-tokens")
        .json(&json!({"device_type": "android", "uses": uses}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn tokens_and_csv(server: &TestServer) {
    // Self-enrollment is off: a device without a token is refused, and told why.
    let r = server
        .http
        .post(server.url("/agent/v1/android/enroll"))
        .body(enroll_body("356000000000001"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("enrollment token"));

    // A one-time token, used through its URL.
    let t = token(server, 1).await;
    let url = t["enrollment_url"].as_str().unwrap();
    assert!(url.contains("/agent/v1/android/enroll?token=drv_enroll_"), "{url}");
    assert!(url.starts_with(&server.base), "the URL is the server's public URL: {url}");
    // A forged Host header does not reach the URL a QR code carries.
    let forged: Value = server
        .admin(Method::POST, "/api/v1/enrollment-tokens")
        .header("host", "attacker.example")
        .json(&json!({"device_type": "android"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let forged_url = forged["enrollment_url"].as_str().unwrap();
    assert!(!forged_url.contains("attacker.example") && forged_url.starts_with(&server.base), "{forged_url}");
    let url = url.replace(&format!("http://{}", server.base.trim_start_matches("http://")), &server.base);
    // A request the plugin refuses does not use the token up.
    let r = server.http.post(&url).body("{\"deviceIdentifier\": \"\"}").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = server.http.post(&url).body(enroll_body("356000000000001")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = server.http.post(&url).body(enroll_body("356000000000002")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("used up"));

    // Bulk pre-registration from CSV.
    let csv = "device_type,device_id,name,owner,ownership\nandroid,356000000000010,Van 10,fleet,COPE\nandroid,356000000000011,,,byod\nandroid,356000000000012\n";
    let r = server
        .admin(Method::POST, "/api/v1/devices/import")
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let imported: Value = r.json().await.unwrap();
    assert_eq!((imported["rows"].as_u64(), imported["registered"].as_u64()), (Some(3), Some(3)), "{imported}");
    assert_eq!((imported["already_known"].as_u64(), imported["self_enroll"].as_bool()), (Some(0), Some(false)));
    assert!(imported["batch"].as_str().unwrap().starts_with("imp_"), "{imported}");
    let r = server.admin(Method::POST, "/api/v1/devices/import").body(csv).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["already_known"], 3);
    let bad = "device_type,device_id,ownership\nandroid,356000000000013,COPE\nandroid,356000000000014,PERSONAL\n";
    let r = server.admin(Method::POST, "/api/v1/devices/import").body(bad).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("line 3") && msg.contains("PERSONAL"), "{msg}");
    let r = server.admin(Method::GET, "/api/v1/devices/android/356000000000013").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a refused import stores nothing");
    let listed: Value =
        server.admin(Method::GET, "/api/v1/devices?status=registered").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    assert_eq!(listed["items"][1]["ownership"], "BYOD");

    // A pre-registered device enrolls with a token and becomes active.
    let t = token(server, 5).await;
    let r = server
        .http
        .post(server.url("/agent/v1/android/enroll"))
        .bearer_auth(t["token"].as_str().unwrap())
        .body(enroll_body("356000000000010"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let d: Value = server
        .admin(Method::GET, "/api/v1/devices/android/356000000000010")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["status"], "active");

    // Operators cannot make tokens.
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({"name": "ops", "role": "operator"}))
        .send()
        .await
        .unwrap();
    let op = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let r = server
        .http
        .post(server.url("/api/v1/enrollment-tokens"))
        .bearer_auth(op)
        .json(&json!({"device_type": "android"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
e2e_with!(tokens_and_csv, super::closed, super::tokens_and_csv);

async fn poll(server: &TestServer, id: &str, token: &str) -> StatusCode {
    server.poll_android(id, token, "[]").await.status()
}

/// Per-device credentials: refresh by the device (the old one keeps a short grace),
/// revocation by an admin, and the device status that follows what it does.
async fn credentials(server: &TestServer) {
    let id = "356000000000020";
    let r = server.http.post(server.url("/agent/v1/android/enroll")).body(enroll_body(id)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let first: Value = r.json().await.unwrap();
    let old = first["access_token"].as_str().unwrap().to_string();
    assert_eq!((first["token_type"].as_str(), first["expires_in"].as_i64()), (Some("Bearer"), Some(90 * 86_400)));

    // Refresh needs a live credential.
    let refresh = |token: Option<String>| {
        let mut r = server.http.post(server.url("/agent/v1/android/credential"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(refresh(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refresh(Some("drv_dev_nope".into())).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let r = refresh(Some(old.clone())).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let new = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    // Both work: the new one for 90 days, the old one for its grace period.
    assert_eq!(poll(server, id, &new).await, StatusCode::OK);
    assert_eq!(poll(server, id, &old).await, StatusCode::OK);
    // Only POST refreshes.
    let r = server.http.get(server.url("/agent/v1/android/credential")).bearer_auth(&new).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Not seen for longer than the limit: unreachable; calling in makes it active again.
    let key = server.state.store.device("android", id).await.unwrap().unwrap().id;
    assert_eq!(server.state.store.mark_unreachable(drover::store::now_ms() + 1).await.unwrap(), 1);
    let status = |v: Value| v["status"].as_str().unwrap().to_string();
    let get = || async {
        server.admin(Method::GET, &format!("/api/v1/devices/android/{id}")).send().await.unwrap().json().await.unwrap()
    };
    assert_eq!(status(get().await), "unreachable");
    assert_eq!(poll(server, id, &new).await, StatusCode::OK);
    assert_eq!(status(get().await), "active");
    assert!(server.state.store.device_by_key(key).await.unwrap().unwrap().last_seen_at.is_some());

    // An admin revokes every credential of a lost device: it can no longer call in.
    let r =
        server.admin(Method::POST, &format!("/api/v1/devices/android/{id}/revoke-credentials")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["revoked"], 2);
    for t in [&old, &new] {
        assert_eq!(poll(server, id, t).await, StatusCode::UNAUTHORIZED);
        assert_eq!(refresh(Some(t.clone())).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
}
e2e!(credentials, super::credentials);

async fn enroll(server: &TestServer, id: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = server.http.post(server.url("/agent/v1/android/enroll")).body(enroll_body(id));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn import(server: &TestServer, ids: &[&str], self_enroll: bool) -> String {
    let csv = format!("device_type,device_id\n{}", ids.iter().map(|i| format!("android,{i}\n")).collect::<String>());
    let path = if self_enroll { "/api/v1/devices/import?self_enroll=true" } else { "/api/v1/devices/import" };
    let r = server.admin(Method::POST, path).body(csv).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["batch"].as_str().unwrap().to_string()
}

async fn enrollment_token(server: &TestServer, body: Value) -> String {
    let r = server.admin(Method::POST, "/api/v1/enrollment-tokens").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
}

/// Under open self-enrollment, knowing a device's id is not enough to become it (issue
/// 21, item 2): a pre-registered identity is claimed with an enrollment token (one for
/// its import, or a general one) unless its import allowed self-enrollment, and a removed
/// device's tags, static groups and session do not pass to whoever enrolls its id next,
/// unless an admin restores it.
async fn identities_are_not_handed_out(server: &TestServer) {
    let (serial, other) = ("357000000000001", "357000000000002");
    let batch = import(server, &[serial], false).await;
    let other_batch = import(server, &[other], false).await;
    let ring = server.add_operation("android", serial, "DEVICE_RING", None).await;

    // A stranger who read the serial off a box is refused, and nothing is handed out.
    let r = enroll(server, serial, None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("pre-registered"));
    assert_eq!(server.device("android", serial).await["status"], "registered");
    assert_eq!(server.operation(ring).await["state"], "PENDING");

    // A token made for another import does not claim it, and is not used up trying.
    let wrong = enrollment_token(server, json!({"device_type": "android", "import_batch": other_batch})).await;
    assert_eq!(enroll(server, serial, Some(&wrong)).await.status(), StatusCode::UNAUTHORIZED);
    // ...nor a brand-new identity outside its import.
    assert_eq!(enroll(server, "357000000000099", Some(&wrong)).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(enroll(server, other, Some(&wrong)).await.status(), StatusCode::CREATED);

    // The token for its own import claims it; the device gets what was queued for it.
    let right = enrollment_token(server, json!({"device_type": "android", "import_batch": batch})).await;
    let r = enroll(server, serial, Some(&right)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let credential = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let polled: Value = server.poll_android(serial, &credential, "[]").await.json().await.unwrap();
    assert_eq!(polled[0]["id"].as_i64(), Some(ring));
    // Enrolled: refused to everyone, token or not.
    let general = enrollment_token(server, json!({"device_type": "android", "uses": 5})).await;
    assert_eq!(enroll(server, serial, Some(&general)).await.status(), StatusCode::CONFLICT);
    assert_eq!(enroll(server, serial, None).await.status(), StatusCode::CONFLICT);

    // An import may let its devices claim their own identities.
    let open = "357000000000003";
    import(server, &[open], true).await;
    assert_eq!(enroll(server, open, None).await.status(), StatusCode::CREATED);

    // A removed device's id enrolled again starts clean: no tags, no static groups.
    let gone = "357000000000004";
    assert_eq!(enroll(server, gone, None).await.status(), StatusCode::CREATED);
    let path = format!("/api/v1/devices/android/{gone}");
    let r = server.admin(Method::PUT, &format!("{path}/tags")).json(&json!({"tags": ["vip"]})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let group = drover_tests::unique("execs");
    let r = server.admin(Method::POST, "/api/v1/groups").json(&json!({"name": group})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = server
        .admin(Method::POST, &format!("/api/v1/groups/{group}/members"))
        .json(&json!({"devices": [{"type": "android", "id": gone}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(server.admin(Method::DELETE, &path).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(enroll(server, gone, None).await.status(), StatusCode::CREATED);
    let d = server.device("android", gone).await;
    assert_eq!((d["status"].as_str(), d["tags"].clone()), (Some("active"), json!([])), "{d}");
    let g: Value =
        server.admin(Method::GET, &format!("/api/v1/groups/{group}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(g["devices"], 0, "{g}");

    // Restored by an admin, a removed device keeps what it had, and is claimed with a token.
    let back = "357000000000005";
    assert_eq!(enroll(server, back, None).await.status(), StatusCode::CREATED);
    let path = format!("/api/v1/devices/android/{back}");
    server.admin(Method::PUT, &format!("{path}/tags")).json(&json!({"tags": ["vip"]})).send().await.unwrap();
    server.admin(Method::DELETE, &path).send().await.unwrap();
    let r = server.admin(Method::POST, &format!("{path}/restore")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "registered");
    let r = server.admin(Method::POST, &format!("{path}/restore")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT, "only a removed device is restored");
    assert_eq!(enroll(server, back, None).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(enroll(server, back, Some(&general)).await.status(), StatusCode::CREATED);
    assert_eq!(server.device("android", back).await["tags"], json!(["vip"]));
}
e2e!(identities_are_not_handed_out, super::identities_are_not_handed_out);

/// An enrollment token admits only devices of its type, only until its TTL: one made for
/// iOS presented by an Android agent, or one past its TTL, admits nothing and creates no
/// device. The refusal lists what a token may be (unknown, expired, used up, for another
/// type) without saying which: a guessed token learns nothing.
async fn token_type_and_ttl(server: &TestServer) {
    let absent = |id: &'static str| async move {
        let r = server.admin(Method::GET, &format!("/api/v1/devices/android/{id}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "device {id} was created");
    };
    let ios = enrollment_token(server, json!({"device_type": "ios", "uses": 1})).await;
    let r = enroll(server, "356000000000040", Some(&ios)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("not for android devices"));
    absent("356000000000040").await;

    let short = enrollment_token(server, json!({"device_type": "android", "uses": 1, "ttl_secs": 1})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = enroll(server, "356000000000041", Some(&short)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("expired"));
    absent("356000000000041").await;

    // The same kind of token, in its time and for its type, admits: the refusals above
    // were for the type and the TTL.
    let fine = enrollment_token(server, json!({"device_type": "android", "uses": 1, "ttl_secs": 60})).await;
    assert_eq!(enroll(server, "356000000000041", Some(&fine)).await.status(), StatusCode::CREATED);
}
e2e_with!(token_type_and_ttl, super::closed, super::token_type_and_ttl);
