//! The audit trail and admin tokens (issue 24), on SQLite and PostgreSQL: every admin-API
//! write is recorded with the acting token's name and role and its outcome, refused
//! attempts included; tokens expire, are listed and revoked, and a revoked token is
//! refused from its next request on, across a restart too.

use drover_tests::{ADMIN_TOKEN, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn audit(server: &TestServer, query: &str) -> Vec<Value> {
    let r = server.admin(Method::GET, &format!("/api/v1/audit{query}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    let body: Value = r.json().await.unwrap();
    body["items"].as_array().unwrap().clone()
}

async fn create_token(server: &TestServer, body: Value) -> reqwest::Response {
    server.admin(Method::POST, "/api/v1/admin-tokens").json(&body).send().await.unwrap()
}

async fn token(server: &TestServer, name: &str, role: &str) -> String {
    let r = create_token(server, json!({ "name": name, "role": role })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
}

fn with(server: &TestServer, token: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    server.http.request(method, server.url(path)).bearer_auth(token)
}

async fn trail_and_tokens(backend: Backend) {
    let server = TestServer::start(backend).await;

    // An admin creates a viewer token: recorded with the actor, and never the token itself.
    let viewer = token(&server, "dashboard", "viewer").await;
    let rows = audit(&server, "").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["type"], "admin.action");
    assert_eq!(row["actor"], "bootstrap");
    assert_eq!(row["role"], "admin");
    assert_eq!(row["action"], "POST /api/v1/admin-tokens");
    assert_eq!(row["target"], "/api/v1/admin-tokens");
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["status"], 201);
    assert_eq!(row["data"]["name"], "dashboard");
    assert_eq!(row["data"]["role"], "viewer");
    assert!(!row.to_string().contains(&viewer), "the token leaked into the trail: {row}");

    // The viewer may read but not write: the refused write is in the trail, under its name.
    let r = with(&server, &viewer, Method::GET, "/api/v1/groups").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r =
        with(&server, &viewer, Method::POST, "/api/v1/groups").json(&json!({ "name": "lobby" })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let refused = audit(&server, "?actor=dashboard").await;
    assert_eq!(refused.len(), 1, "reads are not audited, the refused write is: {refused:?}");
    assert_eq!(refused[0]["role"], "viewer");
    assert_eq!(refused[0]["action"], "POST /api/v1/groups");
    assert_eq!(refused[0]["outcome"], "refused");
    assert_eq!(refused[0]["status"], 403);
    // The viewer's group does not exist.
    let r = server.admin(Method::GET, "/api/v1/groups/lobby").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A group created, edited and deleted: each step with its route and concrete path.
    let r = server.admin(Method::POST, "/api/v1/groups").json(&json!({ "name": "lobby" })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    server.enroll_android("audit-1").await;
    let r = server
        .admin(Method::POST, "/api/v1/groups/lobby/members")
        .json(&json!({ "devices": [{ "type": "android", "id": "audit-1" }] }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // A malformed edit fails: recorded as failed, and it changed nothing.
    let r = server.admin(Method::POST, "/api/v1/groups/lobby/members").body("{").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let edits = audit(&server, "?target=/api/v1/groups/lobby").await;
    let summary: Vec<(String, String)> = edits
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["outcome"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        summary,
        [
            ("POST /api/v1/groups/{name}/members".to_string(), "ok".to_string()),
            ("POST /api/v1/groups/{name}/members".to_string(), "failed".to_string()),
        ]
    );
    assert_eq!(edits[0]["target"], "/api/v1/groups/lobby/members");
    assert_eq!(audit(&server, "?outcome=failed").await.len(), 1);
    let r = server.admin(Method::GET, "/api/v1/audit?outcome=maybe").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A call without a valid token has no actor: not in the trail.
    let before = audit(&server, "").await.len();
    let r = server.http.post(server.url("/api/v1/groups")).json(&json!({"name": "x"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(audit(&server, "").await.len(), before);

    // Paging: `after` and `limit` walk the trail in order.
    let all = audit(&server, "").await;
    let first = audit(&server, "?limit=2").await;
    assert_eq!(first, all[..2]);
    let rest = audit(&server, &format!("?after={}", first[1]["seq"])).await;
    assert_eq!(rest, all[2..]);

    // One live token per name.
    let r = create_token(&server, json!({ "name": "dashboard", "role": "admin" })).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // Revoked: refused from the next request on, listed as revoked, gone for a second revoke.
    let r = server.admin(Method::DELETE, "/api/v1/admin-tokens/dashboard").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(&server, &viewer, Method::GET, "/api/v1/groups").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = server.admin(Method::DELETE, "/api/v1/admin-tokens/dashboard").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let list: Value = server.admin(Method::GET, "/api/v1/admin-tokens").send().await.unwrap().json().await.unwrap();
    let dashboard = list["items"].as_array().unwrap().iter().find(|t| t["name"] == "dashboard").unwrap();
    assert_eq!(dashboard["state"], "revoked");
    assert!(!list.to_string().contains("token_hash") && !list.to_string().contains(&viewer));
    // The name is free again.
    token(&server, "dashboard", "viewer").await;

    // An expiring token works until it expires, then is refused.
    let r = create_token(&server, json!({ "name": "ci-job", "role": "operator", "expires_in": 1 })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert!(created["expires_at"].as_i64().unwrap() > 0);
    let short = created["token"].as_str().unwrap().to_string();
    let r = with(&server, &short, Method::GET, "/api/v1/devices").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let r = with(&server, &short, Method::GET, "/api/v1/devices").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for bad in [json!(0), json!(-5), json!(400_000_000)] {
        let r = create_token(&server, json!({ "name": "bad", "role": "viewer", "expires_in": bad })).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // The last live admin token cannot be revoked: nobody could manage tokens after it.
    let r = server.admin(Method::DELETE, "/api/v1/admin-tokens/bootstrap").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "refused");
    // With another admin, it can; a restart does not bring it back.
    let second = token(&server, "second-admin", "admin").await;
    let r = with(&server, &second, Method::DELETE, "/api/v1/admin-tokens/bootstrap").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let server = server.restart().await;
    let r = server.http.get(server.url("/api/v1/devices")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the revoked bootstrap token came back after a restart");
    let r = with(&server, &second, Method::GET, "/api/v1/audit?actor=second-admin").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let rows: Value = r.json().await.unwrap();
    let rows = rows["items"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["action"], "DELETE /api/v1/admin-tokens/{name}");
    assert_eq!(rows[0]["target"], "/api/v1/admin-tokens/bootstrap");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_and_admin_tokens_sqlite() {
    trail_and_tokens(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_and_admin_tokens_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    trail_and_tokens(backend).await;
}
