//! The operation engine end to end: a real server over HTTP, the real Android plugin,
//! devices speaking the WSO2 agent's JSON. Every scenario runs on SQLite and PostgreSQL.

use drover_tests::{TestServer, e2e};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../plugins/android/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A simulated Android agent.
struct Agent<'a> {
    server: &'a TestServer,
    id: String,
    token: String,
}

impl<'a> Agent<'a> {
    async fn enroll(server: &'a TestServer, id: &str) -> Agent<'a> {
        let body = fixture("enroll.json").replace("354956090214718", id);
        let r = server
            .http
            .post(server.url("/agent/v1/android/enroll"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["device_id"], id);
        Agent { server, id: id.into(), token: v["access_token"].as_str().unwrap().into() }
    }

    /// PUT the agent's results and return (status, body).
    async fn poll_raw(&self, body: &str) -> (StatusCode, String) {
        let r = self.server.poll_android(&self.id, &self.token, body).await;
        (r.status(), r.text().await.unwrap())
    }

    /// Report `results` and return the operations handed out.
    async fn poll(&self, results: Value) -> Vec<Value> {
        let (status, body) = self.poll_raw(&results.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str::<Vec<Value>>(&body).unwrap()
    }
}

fn result(op: &Value, status: &str, response: Value) -> Value {
    json!({"id": op["id"], "code": op["code"], "type": op["type"], "status": status, "operationResponse": response})
}

async fn add(server: &TestServer, body: Value) -> (StatusCode, Value) {
    let r = server.admin(Method::POST, "/api/v1/operations").json(&body).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn add_ok(server: &TestServer, device: &str, code: &str, payload: Value) -> i64 {
    let (status, v) = add(
        server,
        json!({"code": code, "payload": payload, "targets": {"devices": [{"type": "android", "id": device}]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["activity"]["id"].as_i64().unwrap()
}

async fn get(server: &TestServer, path: &str) -> Value {
    let r = server.admin(Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

async fn op(server: &TestServer, id: &Value) -> Value {
    get(server, &format!("/api/v1/operations/{id}")).await
}

async fn ops_of_activity(server: &TestServer, activity: i64) -> Vec<Value> {
    get(server, &format!("/api/v1/operations?activity={activity}")).await["items"].as_array().unwrap().clone()
}

fn states(transitions: &Value) -> Vec<(String, String, String)> {
    transitions
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from_state"].as_str().unwrap().into(),
                t["to_state"].as_str().unwrap().into(),
                t["actor"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

async fn poll_delivers_and_results_complete(server: &TestServer) {
    let agent = Agent::enroll(server, "355000000000001").await;
    assert!(agent.poll(json!([])).await.is_empty(), "nothing queued yet");
    add_ok(server, &agent.id, "DEVICE_RING", Value::Null).await;
    let got = agent.poll(json!([])).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["code"], "DEVICE_RING");
    assert_eq!(got[0]["type"], "COMMAND");
    assert_eq!(op(server, &got[0]["id"]).await["state"], "IN_PROGRESS");

    let report = json!([result(&got[0], "COMPLETED", json!("rang"))]);
    assert!(agent.poll(report.clone()).await.is_empty());
    let done = op(server, &got[0]["id"]).await;
    assert_eq!(done["state"], "COMPLETED");
    assert_eq!(done["response"], "\"rang\"");
    assert_eq!(done["device"], json!({"type": "android", "id": agent.id}));
    let expected = vec![s("PENDING", "IN_PROGRESS", "delivery:poll"), s("IN_PROGRESS", "COMPLETED", "device")];
    assert_eq!(states(&done["transitions"]), expected);

    // The same report again changes nothing and records nothing.
    assert!(agent.poll(report).await.is_empty());
    assert_eq!(states(&op(server, &got[0]["id"]).await["transitions"]), expected);
}
e2e!(poll_delivers_and_results_complete, super::poll_delivers_and_results_complete);

async fn order_and_repeated(server: &TestServer) {
    let agent = Agent::enroll(server, "355000000000002").await;
    let first_ring = add_ok(server, &agent.id, "DEVICE_RING", Value::Null).await;
    add_ok(server, &agent.id, "NOTIFICATION", json!({"messageTitle": "Hi", "messageText": "Update tonight"})).await;
    add_ok(server, &agent.id, "CAMERA", json!({"enabled": false})).await;
    let second_ring = add_ok(server, &agent.id, "DEVICE_RING", Value::Null).await;
    add_ok(server, &agent.id, "DEVICE_LOCK", json!({"message": "Locked by IT"})).await;

    let older = &ops_of_activity(server, first_ring).await[0];
    assert_eq!(older["state"], "REPEATED");
    // A list's items name their device, as one operation's detail does.
    assert_eq!(older["device"], json!({"type": "android", "id": agent.id}), "{older}");
    let t = op(server, &older["id"]).await;
    assert_eq!(states(&t["transitions"]), vec![s("PENDING", "REPEATED", "admin:bootstrap")]);

    let got = agent.poll(json!([])).await;
    let codes: Vec<&str> = got.iter().map(|o| o["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["NOTIFICATION", "CAMERA", "DEVICE_RING", "DEVICE_LOCK"]);
    assert_eq!(got[2]["id"], ops_of_activity(server, second_ring).await[0]["id"]);
    assert_eq!(got[1]["type"], "PROFILE");
    // The payload reaches the agent as the JSON string it parses.
    let payload: Value = serde_json::from_str(got[1]["payLoad"].as_str().unwrap()).unwrap();
    assert_eq!(payload, json!({"enabled": false}));
    let ids: Vec<i64> = got.iter().map(|o| o["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "adding order: {ids:?}");
}
e2e!(order_and_repeated, super::order_and_repeated);

async fn retries_not_now_and_poison(server: &TestServer) {
    let agent = Agent::enroll(server, "355000000000003").await;
    let (status, v) = add(
        server,
        json!({"code": "REBOOT", "retries": 1, "targets": {"devices": [{"type": "android", "id": agent.id}]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let got = agent.poll(json!([])).await;
    // First failure: one retry left, so it is queued again and re-delivered.
    let again = agent.poll(json!([result(&got[0], "ERROR", json!("busy"))])).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["id"], got[0]["id"]);
    assert!(agent.poll(json!([result(&again[0], "ERROR", json!("still busy"))])).await.is_empty());
    let o = op(server, &got[0]["id"]).await;
    assert_eq!(o["state"], "ERROR");
    assert_eq!(o["attempts"], 2);

    // NOTNOW keeps it queued; it is not offered in the answer to the NOT_NOW itself (the
    // device would only refuse it again), but on the next call.
    add_ok(server, &agent.id, "DEVICE_INFO", Value::Null).await;
    let info = agent.poll(json!([])).await;
    let offered = agent.poll(json!([result(&info[0], "NOT_NOW", Value::Null)])).await;
    assert!(offered.is_empty(), "{offered:?}");
    assert_eq!(op(server, &info[0]["id"]).await["state"], "NOTNOW");
    let offered = agent.poll(json!([])).await;
    assert_eq!(offered[0]["id"], info[0]["id"]);
    assert_eq!(op(server, &info[0]["id"]).await["state"], "IN_PROGRESS");
    let t = states(&op(server, &info[0]["id"]).await["transitions"]);
    assert_eq!(t[1], s("IN_PROGRESS", "NOTNOW", "device"));
    assert_eq!(t[2], s("NOTNOW", "IN_PROGRESS", "delivery:poll"));
}
e2e!(retries_not_now_and_poison, super::retries_not_now_and_poison);

async fn cancel_ttl_and_disenroll(server: &TestServer) {
    let agent = Agent::enroll(server, "355000000000004").await;
    let a = add_ok(server, &agent.id, "DEVICE_RING", Value::Null).await;
    let ring = ops_of_activity(server, a).await[0]["id"].clone();
    let r = server.admin(Method::POST, &format!("/api/v1/operations/{ring}/cancel")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = server.admin(Method::POST, &format!("/api/v1/operations/{ring}/cancel")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(agent.poll(json!([])).await.is_empty(), "a cancelled operation is not delivered");

    // TTL: expires before the device calls in.
    let (status, v) = add(
        server,
        json!({"code": "DEVICE_INFO", "ttl_secs": 1, "targets": {"devices": [{"type": "android", "id": agent.id}]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(agent.poll(json!([])).await.is_empty(), "an expired operation is not delivered");
    let expired = &ops_of_activity(server, v["activity"]["id"].as_i64().unwrap()).await[0];
    assert_eq!(expired["state"], "EXPIRED");

    // Activity cancel, with counts per state.
    let act = add_ok(server, &agent.id, "DEVICE_LOCK", Value::Null).await;
    let r = server.admin(Method::POST, &format!("/api/v1/activities/{act}/cancel")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["cancelled"], 1);
    assert_eq!(get(server, &format!("/api/v1/activities/{act}")).await["counts"], json!({"CANCELLED": 1}));

    // Disenrollment cancels what is live and revokes the credential.
    add_ok(server, &agent.id, "DEVICE_LOCATION", Value::Null).await;
    let delivered = agent.poll(json!([])).await;
    let pending = add_ok(server, &agent.id, "DEVICE_INFO", Value::Null).await;
    let r = server.admin(Method::DELETE, &format!("/api/v1/devices/android/{}", agent.id)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["cancelled_operations"], 2);
    assert_eq!(op(server, &delivered[0]["id"]).await["state"], "CANCELLED");
    assert_eq!(ops_of_activity(server, pending).await[0]["state"], "CANCELLED");
    let (status, _) = agent.poll_raw("[]").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
e2e!(cancel_ttl_and_disenroll, super::cancel_ttl_and_disenroll);

async fn bad_input_changes_nothing(server: &TestServer) {
    let agent = Agent::enroll(server, "355000000000005").await;
    let other = Agent::enroll(server, "355000000000006").await;
    let target = json!({"devices": [{"type": "android", "id": agent.id}]});

    let (st, v) =
        add(server, json!({"code": "DEVICE_RING", "targets": {"devices": [{"type": "android", "id": "nope"}]}})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_device")), "{v}");
    let (st, v) = add(server, json!({"code": "FLY_AWAY", "targets": target})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_operation")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("FLY_AWAY"));
    let (st, v) = add(server, json!({"code": "WIPE_DATA", "payload": {"pin": "12"}, "targets": target})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("pin"), "{v}");
    let r = server
        .admin(Method::POST, "/api/v1/operations")
        .header("content-type", "application/json")
        .body("{\"code\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "malformed_json");

    // Roles: no token, a bad token, a viewer writing.
    let r = server.http.post(server.url("/api/v1/operations")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = server.http.get(server.url("/api/v1/devices")).bearer_auth("drv_admin_forged").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({"name": "auditor", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let viewer = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let r = server
        .http
        .post(server.url("/api/v1/operations"))
        .bearer_auth(&viewer)
        .json(&json!({"code": "DEVICE_RING", "targets": target}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = server.http.get(server.url("/api/v1/devices")).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Device tokens are not admin tokens.
    let r = server.http.get(server.url("/api/v1/devices")).bearer_auth(&agent.token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A delivered operation, then bad reports: nothing may change.
    add_ok(server, &agent.id, "DEVICE_INFO", Value::Null).await;
    let got = agent.poll(json!([])).await;
    let before = op(server, &got[0]["id"]).await;
    let (st, body) = agent.poll_raw("[{\"id\": \"seven\"}]").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("bad_device_message") && body.contains("result 0"), "{body}");
    let (st, _) = agent.poll_raw("{not json").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // Another device's token on this device's path: refused by the plugin, nothing changes.
    let body = json!([result(&got[0], "COMPLETED", Value::Null)]).to_string();
    let r = server.poll_android(&agent.id, &other.token, &body).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Another device reporting this device's operation on its own path: ignored.
    assert!(other.poll(json!([result(&got[0], "COMPLETED", Value::Null)])).await.is_empty());
    assert_eq!(op(server, &got[0]["id"]).await, before, "bad reports changed the operation");
}
e2e!(bad_input_changes_nothing, super::bad_input_changes_nothing);

async fn groups_and_tags_fan_out(server: &TestServer) {
    let a = Agent::enroll(server, "355000000000007").await;
    let b = Agent::enroll(server, "355000000000008").await;
    let c = Agent::enroll(server, "355000000000009").await;
    let r = server.admin(Method::POST, "/api/v1/groups").json(&json!({"name": "field-team"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = server
        .admin(Method::POST, "/api/v1/groups/field-team/members")
        .json(&json!({"devices": [{"type": "android", "id": a.id}, {"type": "android", "id": b.id}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = server
        .admin(Method::PUT, &format!("/api/v1/devices/android/{}/tags", c.id))
        .json(&json!({"tags": ["floor-3"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = server
        .admin(Method::PUT, &format!("/api/v1/devices/android/{}/tags", b.id))
        .json(&json!({"tags": ["floor-3"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let (st, v) = add(server, json!({"code": "CAMERA", "payload": {"enabled": false}, "targets": {"groups": ["field-team"], "tags": ["floor-3"]}})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["operations"], 3, "union of group and tag, each device once");
    assert_eq!(v["activity"]["kind"], "profile");
    let act = v["activity"]["id"].as_i64().unwrap();
    for agent in [&a, &b, &c] {
        let got = agent.poll(json!([])).await;
        assert_eq!(got.len(), 1);
        agent.poll(json!([result(&got[0], "COMPLETED", Value::Null)])).await;
    }
    assert_eq!(get(server, &format!("/api/v1/activities/{act}")).await["counts"], json!({"COMPLETED": 3}));

    let listed = get(server, "/api/v1/devices?tag=floor-3").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    let listed = get(server, "/api/v1/devices?group=field-team&limit=1").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let next = listed["next_after"].as_i64().unwrap();
    let rest = get(server, &format!("/api/v1/devices?group=field-team&after={next}")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_ne!(rest["items"][0]["device_id"], listed["items"][0]["device_id"]);

    let (st, v) =
        add(server, json!({"code": "CAMERA", "payload": {"enabled": true}, "targets": {"groups": ["nobody"]}})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_group")));
    // Enrolling the same device twice is a conflict, not a second device.
    let r = server
        .http
        .post(server.url("/agent/v1/android/enroll"))
        .body(fixture("enroll.json").replace("354956090214718", &a.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
}
e2e!(groups_and_tags_fan_out, super::groups_and_tags_fan_out);

async fn enroll_with_os(server: &TestServer, id: &str, os: &str) -> String {
    let body = fixture("enroll.json")
        .replace("354956090214718", id)
        .replace(r#"{"name": "OS_VERSION", "value": "14"}"#, &format!(r#"{{"name": "OS_VERSION", "value": "{os}"}}"#));
    let r = server.http.post(server.url("/agent/v1/android/enroll")).body(body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
}

async fn tag(server: &TestServer, id: &str, tags: Value) {
    let r = server
        .admin(Method::PUT, &format!("/api/v1/devices/android/{id}/tags"))
        .json(&json!({ "tags": tags }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A dynamic group is a saved query over tags and reported metadata, evaluated each time
/// it is used: a device that comes to match later is in it without being added.
async fn dynamic_groups(server: &TestServer) {
    for (id, os) in [("356000000000001", "14"), ("356000000000002", "13"), ("356000000000003", "14")] {
        enroll_with_os(server, id, os).await;
    }
    tag(server, "356000000000001", json!(["lab"])).await;
    tag(server, "356000000000002", json!(["lab"])).await;
    let query = json!({"device_type": "android", "tags": ["lab"], "metadata": {"OS_VERSION": "14"}});
    let r = server
        .admin(Method::POST, "/api/v1/groups")
        .json(&json!({"name": "lab-14", "description": "Lab phones on Android 14", "query": query}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let g: Value = r.json().await.unwrap();
    assert_eq!((g["devices"].as_i64(), &g["query"]), (Some(1), &query));
    let members = get(server, "/api/v1/devices?group=lab-14").await;
    assert_eq!(members["items"].as_array().unwrap().len(), 1);
    assert_eq!(members["items"][0]["device_id"], "356000000000001");

    // The third phone is tagged later: it is in the group from then on.
    tag(server, "356000000000003", json!(["lab", "eu"])).await;
    assert_eq!(get(server, "/api/v1/groups/lab-14").await["devices"], 2);
    let (st, v) = add(server, json!({"code": "DEVICE_RING", "targets": {"groups": ["lab-14"]}})).await;
    assert_eq!((st, v["operations"].as_i64()), (StatusCode::CREATED, Some(2)), "{v}");
    let act = v["activity"]["id"].as_i64().unwrap();
    let mut reached: Vec<String> = Vec::new();
    for o in ops_of_activity(server, act).await {
        reached.push(op(server, &o["id"]).await["device"]["id"].as_str().unwrap().into());
    }
    reached.sort();
    assert_eq!(reached, ["356000000000001", "356000000000003"]);

    // Its members come from its query only.
    let r = server
        .admin(Method::POST, "/api/v1/groups/lab-14/members")
        .json(&json!({"devices": [{"type": "android", "id": "356000000000002"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "dynamic_group");

    // Bad queries are refused with the problem named.
    for (query, says) in [
        (json!({}), "no criteria"),
        (json!({"metadata": {"os version": "14"}}), "metadata key `os version`"),
        (json!({"ownership": "mine"}), "ownership `mine`"),
        (json!({"tags": ["no spaces"]}), "tag `no spaces`"),
    ] {
        let r = server
            .admin(Method::POST, "/api/v1/groups")
            .json(&json!({"name": "bad", "query": query}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{e}");
    }
    let r = server
        .admin(Method::POST, "/api/v1/groups")
        .json(&json!({"name": "bad", "query": {"colour": "red"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("colour"));

    // Deleting the group leaves its devices and their queued operations alone.
    let r = server.admin(Method::DELETE, "/api/v1/groups/lab-14").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = server.admin(Method::GET, "/api/v1/groups/lab-14").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(server, &format!("/api/v1/activities/{act}")).await["counts"], json!({"PENDING": 2}));
    let listed = get(server, "/api/v1/activities?code=DEVICE_RING").await;
    assert_eq!(listed["items"][0]["id"], act);
}
e2e!(dynamic_groups, super::dynamic_groups);

/// Answers within a second, so the server's own sweep (every 10 s) finds the first
/// unanswered delivery.
fn answer_timeout_of_a_second(config: &mut drover::config::Config) {
    config.answer_timeout = Some(std::time::Duration::from_secs(1));
}

/// A poll's answer lost on the way (or a device that crashed running the operation): the
/// operation it took goes back to the queue after the answer timeout and is offered
/// again; a late answer to the first delivery completes it once; a progress report keeps
/// it out for another timeout; three silences are the most, and pushes are not swept.
async fn unanswered_polls_are_offered_again(server: &TestServer) {
    use drover::store::{MAX_UNANSWERED, NO_ANSWER_ACTOR};
    let store = &server.state.store;
    let poll_actor = drover::delivery::POLL_ACTOR;
    let agent = Agent::enroll(server, "355000000000070").await;
    add_ok(server, &agent.id, "DEVICE_RING", Value::Null).await;
    let got = agent.poll(json!([])).await;
    assert_eq!(got.len(), 1);
    // The device never answers: the server's sweep puts it back.
    let id = got[0]["id"].as_i64().unwrap();
    server.until_state(id, "PENDING").await;
    let again = agent.poll(json!([])).await;
    assert_eq!(again.len(), 1, "the unanswered operation is offered again");
    assert_eq!(again[0]["id"], got[0]["id"]);
    // The answer to the first delivery arrives late, then the one to the second: one
    // completion.
    assert!(agent.poll(json!([result(&got[0], "COMPLETED", json!("rang"))])).await.is_empty());
    assert!(agent.poll(json!([result(&again[0], "COMPLETED", json!("rang"))])).await.is_empty());
    let done = op(server, &got[0]["id"]).await;
    assert_eq!(done["state"], "COMPLETED");
    assert_eq!(done["attempts"], 2);
    assert_eq!(
        states(&done["transitions"]),
        vec![
            s("PENDING", "IN_PROGRESS", poll_actor),
            s("IN_PROGRESS", "PENDING", NO_ANSWER_ACTOR),
            s("PENDING", "IN_PROGRESS", poll_actor),
            s("IN_PROGRESS", "COMPLETED", "device"),
        ]
    );

    // A progress report (IN_PROGRESS, no response) is an answer: the timeout starts again.
    add_ok(server, &agent.id, "DEVICE_INFO", Value::Null).await;
    let info = agent.poll(json!([])).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // A cutoff after the delivery and before the report (milliseconds: a poll can take
    // less than one, so a cutoff taken just before it may equal the report's time).
    let before_report = drover::store::now_ms() - 1;
    assert!(agent.poll(json!([result(&info[0], "IN_PROGRESS", Value::Null)])).await.is_empty());
    let swept = store.requeue_unanswered(poll_actor, before_report).await.unwrap();
    let kept = op(server, &info[0]["id"]).await;
    assert_eq!(kept["state"], "IN_PROGRESS", "the progress report is an answer (swept {swept:?}): {kept}");
    assert!(
        !states(&kept["transitions"]).iter().any(|t| t.2 == NO_ANSWER_ACTOR),
        "the progress report is an answer (swept {swept:?}): {kept}"
    );
    agent.poll(json!([result(&info[0], "COMPLETED", json!({}))])).await;

    // Offered at most MAX_UNANSWERED more times; the next silence ends it in ERROR.
    add_ok(server, &agent.id, "REBOOT", Value::Null).await;
    let mut reboot = agent.poll(json!([])).await;
    let reboot_id = reboot[0]["id"].as_i64().unwrap();
    for n in 0..MAX_UNANSWERED {
        let later = drover::store::now_ms() + 1;
        assert_eq!(store.requeue_unanswered(poll_actor, later).await.unwrap(), (1, 0), "silence {n}");
        reboot = agent.poll(json!([])).await;
        assert_eq!(reboot[0]["id"], reboot_id);
    }
    let later = drover::store::now_ms() + 1;
    assert_eq!(store.requeue_unanswered(poll_actor, later).await.unwrap(), (0, 1));
    let ended = op(server, &json!(reboot_id)).await;
    assert_eq!(ended["state"], "ERROR");
    assert!(ended["response"].as_str().unwrap().contains("no answer"), "{ended}");
    assert!(agent.poll(json!([])).await.is_empty());

    // What a push delivered is not swept: the device gets it again when it comes online.
    add_ok(server, &agent.id, "DEVICE_LOCATION", Value::Null).await;
    let device = store.device("android", &agent.id).await.unwrap().unwrap();
    let queued = store.queued(device.id, 10, false).await.unwrap();
    assert!(store.mark_delivered(device.id, &[queued[0].id], "delivery:push").await.unwrap());
    let later = drover::store::now_ms() + 1;
    assert_eq!(store.requeue_unanswered(poll_actor, later).await.unwrap(), (0, 0));
}
drover_tests::e2e_with!(
    unanswered_polls_are_offered_again,
    super::answer_timeout_of_a_second,
    super::unanswered_polls_are_offered_again
);

/// A TTL covers an operation the device took too: past it, the sweep (every 10 s) ends it
/// EXPIRED from IN_PROGRESS, and a result that comes after that changes nothing (the admin
/// said the operation is worth nothing after its TTL; docs/operations.md, "TTL").
async fn ttl_ends_an_operation_in_progress(server: &TestServer) {
    let agent = Agent::enroll(server, "355000000000031").await;
    let (status, v) = add(
        server,
        json!({"code": "DEVICE_INFO", "ttl_secs": 1, "targets": {"devices": [{"type": "android", "id": agent.id}]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let got = agent.poll(json!([])).await;
    assert_eq!(got.len(), 1);
    let id = got[0]["id"].as_i64().unwrap();
    server.until_state(id, "IN_PROGRESS").await;
    let expired = server.until_state(id, "EXPIRED").await;
    assert_eq!(
        states(&expired["transitions"]),
        vec![s("PENDING", "IN_PROGRESS", "delivery:poll"), s("IN_PROGRESS", "EXPIRED", "system")]
    );
    // The late result is taken (200) and changes nothing.
    assert!(agent.poll(json!([result(&got[0], "COMPLETED", json!({"late": true}))])).await.is_empty());
    let after = op(server, &json!(id)).await;
    assert_eq!(after["state"], "EXPIRED");
    assert_eq!(after["transitions"].as_array().unwrap().len(), 2, "{after}");
}
e2e!(ttl_ends_an_operation_in_progress, super::ttl_ends_an_operation_in_progress);

/// One activity over several device types: each type's plugin validates it, and one that
/// does not know the code (or refuses the payload) refuses the whole activity, naming the
/// type, with nothing stored. The kind is the one the catalogues give; two types whose
/// catalogues give the code different kinds are refused (an activity has one kind).
async fn mixed_type_activity(server: &TestServer) {
    let agent = Agent::enroll(server, "355000000000032").await;
    let r = server
        .admin(Method::POST, "/api/v1/devices/import")
        .header("content-type", "text/csv")
        .body("device_type,device_id\nwindows,mixed-pc-1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let both = json!({"devices": [{"type": "android", "id": agent.id}, {"type": "windows", "id": "mixed-pc-1"}]});

    // A code Windows does not have.
    let (status, v) = add(server, json!({"code": "DEVICE_RING", "targets": both})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("windows"), "the refusal names the type: {v}");
    // A payload both refuse.
    let (status, v) = add(server, json!({"code": "CAMERA", "payload": {"enabled": "no"}, "targets": both})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // A kind that is not the catalogues'.
    let (status, v) =
        add(server, json!({"code": "CAMERA", "kind": "command", "payload": {"enabled": false}, "targets": both})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("profile"), "{v}");
    assert!(agent.poll(json!([])).await.is_empty(), "nothing was stored");
    let listed = get(server, "/api/v1/activities?code=CAMERA").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");

    // Both know it, as a profile: one operation each.
    let (status, v) = add(server, json!({"code": "CAMERA", "payload": {"enabled": false}, "targets": both})).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["activity"]["kind"], "profile", "{v}");
    let ops = ops_of_activity(server, v["activity"]["id"].as_i64().unwrap()).await;
    let mut types = Vec::new();
    for o in &ops {
        types.push(op(server, &o["id"]).await["device"]["type"].as_str().unwrap().to_string());
    }
    types.sort();
    assert_eq!(types, ["android", "windows"]);
    let got = agent.poll(json!([])).await;
    assert_eq!((got[0]["code"].as_str(), got[0]["type"].as_str()), (Some("CAMERA"), Some("PROFILE")), "{got:?}");

    // Testbed's catalogue has CAMERA as a command: with Android's profile, refused.
    server
        .install_signed(
            "testbed",
            "drover-tests",
            &["log", "kv", "config"],
            &drover_tests::component(drover_tests::components::TESTBED),
        )
        .await;
    let r = server.http.post(server.url("/agent/v1/testbed/enroll")).body("mixed-tb-1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let targets = json!({"devices": [{"type": "android", "id": agent.id}, {"type": "testbed", "id": "mixed-tb-1"}]});
    let (status, v) = add(server, json!({"code": "CAMERA", "payload": {"enabled": true}, "targets": targets})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let message = v.to_string();
    assert!(message.contains("kind_conflict") && message.contains("testbed"), "{v}");
}
e2e!(mixed_type_activity, super::mixed_type_activity);
