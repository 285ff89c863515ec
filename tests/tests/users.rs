//! Users and scoped roles (issue 29), on SQLite and PostgreSQL: users log in with a
//! password and act with their role and scope; a scoped caller sees and touches only
//! the devices its scope admits, and every other endpoint of the OpenAPI document
//! refuses it (the walk below fails for an endpoint added without thought for scopes);
//! failed logins lock a user for a while; a change to a user applies at their next
//! request; device owners reach only their own devices and the codes their scope lists.

use drover_tests::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

fn with(server: &TestServer, token: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    server.http.request(method, server.url(path)).bearer_auth(token)
}

async fn login(server: &TestServer, name: &str, password: &str) -> reqwest::Response {
    server
        .http
        .post(server.url("/api/v1/login"))
        .json(&json!({ "name": name, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn token_of(server: &TestServer, name: &str) -> String {
    let r = login(server, name, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
}

async fn ids(server: &TestServer, token: &str, path: &str) -> Vec<String> {
    let r = with(server, token, Method::GET, path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}: {}", r.text().await.unwrap());
    let body: Value = r.json().await.unwrap();
    let mut ids: Vec<String> =
        body["items"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

async fn add(server: &TestServer, token: &str, code: &str, targets: Value) -> reqwest::Response {
    with(server, token, Method::POST, "/api/v1/operations")
        .json(&json!({ "code": code, "targets": targets }))
        .send()
        .await
        .unwrap()
}

async fn users_and_scopes(backend: Backend) {
    let server = TestServer::start(backend).await;
    for id in ["lab-1", "lab-2", "desk-1"] {
        server.enroll_android(id).await;
    }
    let r = server.admin(Method::POST, "/api/v1/groups").json(&json!({ "name": "lab" })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = server
        .admin(Method::POST, "/api/v1/groups/lab/members")
        .json(&json!({ "devices": [{ "type": "android", "id": "lab-1" }, { "type": "android", "id": "lab-2" }] }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    for (id, tag) in [("lab-1", "floor-2"), ("desk-1", "floor-2")] {
        let path = format!("/api/v1/devices/android/{id}/tags");
        let r = server.admin(Method::PUT, &path).json(&json!({ "tags": [tag] })).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let desk_op = server.add_operation("android", "desk-1", "DEVICE_INFO", None).await;

    // Bad users are named and refused.
    let new_user = |body: Value| server.admin(Method::POST, "/api/v1/users").json(&body).send();
    for (body, says) in [
        (json!({ "name": "olive", "password": "short", "role": "operator" }), "at least 12"),
        (json!({ "name": "a/b", "password": PASSWORD, "role": "operator" }), "user name"),
        (json!({ "name": "olive", "password": PASSWORD, "role": "operator", "scope": {} }), "scope is empty"),
        (
            json!({ "name": "olive", "password": PASSWORD, "role": "operator", "scope": { "group": ["lab"] } }),
            "unknown field",
        ),
    ] {
        let r = new_user(body.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(says), "{body}: {text}");
    }
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({ "name": "mine", "role": "operator", "scope": { "own_devices": true } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a token cannot own devices");

    // Olive operates the lab group.
    let r =
        new_user(json!({ "name": "olive", "password": PASSWORD, "role": "operator", "scope": { "groups": ["lab"] } }))
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let created: Value = r.json().await.unwrap();
    assert!(created.get("password").is_none() && !created.to_string().contains("argon2"), "{created}");
    let r = new_user(json!({ "name": "olive", "password": PASSWORD, "role": "viewer" })).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // A wrong password and an unknown name are refused alike.
    let wrong = login(&server, "olive", "not the password at all").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let wrong: Value = wrong.json().await.unwrap();
    let unknown = login(&server, "nobody", PASSWORD).await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.json::<Value>().await.unwrap(), wrong, "the answers tell names apart");

    let olive = token_of(&server, "olive").await;
    let me: Value = with(&server, &olive, Method::GET, "/api/v1/whoami").send().await.unwrap().json().await.unwrap();
    assert_eq!(me["user"], "olive");
    assert_eq!(me["role"], "operator");
    assert_eq!(me["scope"]["groups"], json!(["lab"]));

    // Olive sees the lab only; a device outside it does not exist for her.
    assert_eq!(ids(&server, &olive, "/api/v1/devices").await, ["lab-1", "lab-2"]);
    assert_eq!(ids(&server, &olive, "/api/v1/devices?tag=floor-2").await, ["lab-1"]);
    let r = with(&server, &olive, Method::GET, "/api/v1/devices/android/desk-1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = with(&server, &olive, Method::GET, "/api/v1/devices/android/lab-1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for path in [
        "/api/v1/devices/android/desk-1/telemetry",
        "/api/v1/devices/android/desk-1/certificates",
        "/api/v1/operations?device_type=android&device_id=desk-1",
    ] {
        let r = with(&server, &olive, Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let op = format!("/api/v1/operations/{desk_op}");
    let r = with(&server, &olive, Method::GET, &op).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = with(&server, &olive, Method::POST, &format!("{op}/cancel")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(server.operation(desk_op).await["state"], "PENDING", "the refused cancel changed the operation");

    // She adds operations inside the lab; a target reaching outside is refused whole.
    let r = add(&server, &olive, "DEVICE_RING", json!({ "groups": ["lab"] })).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    assert_eq!(r.json::<Value>().await.unwrap()["operations"], 2);
    for targets in [
        json!({ "devices": [{ "type": "android", "id": "desk-1" }] }),
        json!({ "tags": ["floor-2"] }),
        json!({ "devices": [{ "type": "android", "id": "lab-1" }, { "type": "android", "id": "desk-1" }] }),
    ] {
        let r = add(&server, &olive, "DEVICE_RING", targets.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{targets}");
        assert!(r.text().await.unwrap().contains("outside your scope"));
    }
    let ops: Value =
        with(&server, &olive, Method::GET, "/api/v1/operations").send().await.unwrap().json().await.unwrap();
    let ops = ops["items"].as_array().unwrap();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(ops.iter().all(|o| o["id"] != desk_op));
    let all: Value = server.admin(Method::GET, "/api/v1/operations").send().await.unwrap().json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "a refused add stored operations");

    // Every other endpoint refuses her, and none names the desk device.
    server.walk_refused(&olive, drover_tests::SCOPED, "desk-1", desk_op).await;

    // Her refused writes are in the audit trail under her name; her actions carry it.
    let trail: Value =
        server.admin(Method::GET, "/api/v1/audit?actor=user:olive").send().await.unwrap().json().await.unwrap();
    let trail = trail["items"].as_array().unwrap();
    assert!(trail.iter().any(|r| r["outcome"] == "refused" && r["status"] == 403), "{trail:?}");
    let events: Value =
        server.admin(Method::GET, "/api/v1/events?type=user.").send().await.unwrap().json().await.unwrap();
    let types: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["user.created", "user.logged_in"], "{events}");
    assert!(!events.to_string().contains(PASSWORD) && !events.to_string().contains("argon2"));
    let activity: Value =
        server.admin(Method::GET, "/api/v1/activities?before=999999").send().await.unwrap().json().await.unwrap();
    assert_eq!(activity["items"][0]["created_by"], "user:olive");

    // A new scope applies at her next request, without a new login.
    let r = server
        .admin(Method::PATCH, "/api/v1/users/olive")
        .json(&json!({ "scope": { "device_types": ["android"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(ids(&server, &olive, "/api/v1/devices").await, ["desk-1", "lab-1", "lab-2"]);
    // The whole fleet: then the fleet-wide endpoints serve her too.
    let r = server.admin(Method::PATCH, "/api/v1/users/olive").json(&json!({ "scope": null })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = with(&server, &olive, Method::GET, "/api/v1/groups").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Disabled: her token stops at once, and she cannot log in.
    let r = server.admin(Method::PATCH, "/api/v1/users/olive").json(&json!({ "disabled": true })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = with(&server, &olive, Method::GET, "/api/v1/devices").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(&server, "olive", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    let r =
        server.admin(Method::PATCH, "/api/v1/users/olive").json(&json!({ "disabled": false })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = with(&server, &olive, Method::GET, "/api/v1/devices").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "enabling brought an ended session back");
    let again = token_of(&server, "olive").await;
    // Logging out ends that token.
    let r = with(&server, &again, Method::POST, "/api/v1/logout").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(&server, &again, Method::GET, "/api/v1/whoami").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Five failures in a row lock her: then even the right password waits.
    for _ in 0..5 {
        assert_eq!(login(&server, "olive", "guess guess guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login(&server, "olive", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "locked");
    let events: Value =
        server.admin(Method::GET, "/api/v1/events?type=user.locked").send().await.unwrap().json().await.unwrap();
    assert_eq!(events["items"].as_array().unwrap().len(), 1, "{events}");
    // The first lock is a second long.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    token_of(&server, "olive").await;

    // A scoped token: android devices, ring only.
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({ "name": "helpdesk", "role": "operator",
                       "scope": { "device_types": ["android"], "operations": ["DEVICE_RING"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let helpdesk = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let one = json!({ "devices": [{ "type": "android", "id": "desk-1" }] });
    let r = add(&server, &helpdesk, "WIPE_DATA", one.clone()).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("not among the operations"));
    assert_eq!(add(&server, &helpdesk, "DEVICE_RING", one).await.status(), StatusCode::CREATED);
    // The event log: only events about its devices, none of the server's own.
    let r = with(&server, &helpdesk, Method::GET, "/api/v1/events").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events: Value = r.json().await.unwrap();
    let items = events["items"].as_array().unwrap();
    assert!(items.iter().any(|e| e["type"] == "device.enrolled"), "{events}");
    assert!(items.iter().all(|e| !e["device"].is_null()), "an event about no device: {events}");

    // Removing a user ends their sessions.
    let last = token_of(&server, "olive").await;
    let r = server.admin(Method::DELETE, "/api/v1/users/olive").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(&server, &last, Method::GET, "/api/v1/whoami").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

/// A device owner's self-service: their own devices, the codes their scope lists.
async fn device_owners(backend: Backend) {
    let server = TestServer::start(backend).await;
    for id in ["byod-1", "byod-2"] {
        server.enroll_android(id).await;
    }
    let r = server
        .admin(Method::PATCH, "/api/v1/devices/android/byod-1")
        .json(&json!({ "owner": "bob@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = server
        .admin(Method::POST, "/api/v1/users")
        .json(&json!({ "name": "bob@example.com", "password": PASSWORD, "role": "operator",
                       "scope": { "own_devices": true, "operations": ["DEVICE_RING", "DEVICE_LOCATION", "WIPE_DATA"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let bob = token_of(&server, "bob@example.com").await;
    assert_eq!(ids(&server, &bob, "/api/v1/devices").await, ["byod-1"]);
    let mine = json!({ "devices": [{ "type": "android", "id": "byod-1" }] });
    assert_eq!(add(&server, &bob, "DEVICE_RING", mine.clone()).await.status(), StatusCode::CREATED);
    assert_eq!(add(&server, &bob, "DEVICE_LOCK", mine).await.status(), StatusCode::FORBIDDEN);
    let theirs = json!({ "devices": [{ "type": "android", "id": "byod-2" }] });
    assert_eq!(add(&server, &bob, "DEVICE_RING", theirs).await.status(), StatusCode::FORBIDDEN);
    // Given to someone else, the device is out of his reach at once.
    let r = server
        .admin(Method::PATCH, "/api/v1/devices/android/byod-1")
        .json(&json!({ "owner": "carol@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(ids(&server, &bob, "/api/v1/devices").await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_scopes_sqlite() {
    users_and_scopes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_scopes_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    users_and_scopes(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_owners_sqlite() {
    device_owners(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_owners_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    device_owners(backend).await;
}

/// An OpenID Connect provider on loopback: its discovery document and its keys (JWKS),
/// which the test rotates. Keys are made and tokens signed with the openssl command,
/// not with the code Drover checks them with.
mod provider {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde_json::{Value, json};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::{Arc, Mutex};

    pub struct Key {
        pub kid: String,
        pem: PathBuf,
        pub jwk: Value,
    }

    pub fn key(dir: &Path, kid: &str) -> Key {
        let pem = dir.join(format!("{kid}.pem"));
        let ok = Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
            .arg(&pem)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let out = Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(&pem).output().unwrap();
        let modulus = String::from_utf8(out.stdout).unwrap();
        let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
        let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let jwk = json!({ "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": B64.encode(n), "e": "AQAB" });
        Key { kid: kid.into(), pem, jwk }
    }

    /// A JWT with `header` and `claims`, signed RS256 by `key` with `openssl dgst`.
    pub fn sign(key: &Key, header: Value, claims: Value) -> String {
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let data = key.pem.with_extension("in");
        std::fs::write(&data, &input).unwrap();
        let out = Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(&key.pem).arg(&data).output().unwrap();
        assert!(out.status.success());
        format!("{input}.{}", B64.encode(out.stdout))
    }

    pub fn token(key: &Key, issuer: &str, claims: Value) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mut all = json!({ "iss": issuer, "aud": "drover", "iat": now, "exp": now + 300 });
        for (k, v) in claims.as_object().unwrap() {
            all[k] = v.clone();
        }
        sign(key, json!({ "alg": "RS256", "typ": "JWT", "kid": key.kid }), all)
    }

    pub struct Provider {
        pub issuer: String,
        keys: Arc<Mutex<Vec<Value>>>,
    }

    impl Provider {
        pub async fn start() -> Provider {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let issuer = format!("http://{}", listener.local_addr().unwrap());
            let keys: Arc<Mutex<Vec<Value>>> = Arc::default();
            let (k, i) = (keys.clone(), issuer.clone());
            let app = axum::Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    axum::routing::get(move || {
                        let i = i.clone();
                        async move { axum::Json(json!({ "issuer": i, "jwks_uri": format!("{i}/jwks") })) }
                    }),
                )
                .route(
                    "/jwks",
                    axum::routing::get(move || {
                        let keys = k.lock().unwrap().clone();
                        async move { axum::Json(json!({ "keys": keys })) }
                    }),
                );
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Provider { issuer, keys }
        }

        pub fn publish(&self, keys: &[&Key]) {
            *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
        }
    }
}

/// Users signing in at an OpenID Connect provider: its tokens stand for users added here.
async fn openid_provider(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let idp = provider::Provider::start().await;
    let (first, second, stranger) =
        (provider::key(dir.path(), "k1"), provider::key(dir.path(), "k2"), provider::key(dir.path(), "k3"));
    idp.publish(&[&first]);
    let issuer = idp.issuer.clone();
    let server = TestServer::start_with(backend, |c| {
        c.oidc = Some(drover::oidc::Settings {
            issuer: issuer.clone(),
            audience: "drover".into(),
            user_claim: "email".into(),
        })
    })
    .await;
    for id in ["sso-1", "sso-2"] {
        server.enroll_android(id).await;
    }
    let r = server
        .admin(Method::POST, "/api/v1/users")
        .json(&json!({ "name": "nina@example.com", "role": "viewer", "scope": { "device_types": ["android"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    // Without a password she cannot log in with one.
    assert_eq!(login(&server, "nina@example.com", "").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(&server, "nina@example.com", "!").await.status(), StatusCode::UNAUTHORIZED);

    let nina = provider::token(&first, &idp.issuer, json!({ "email": "nina@example.com" }));
    let r = with(&server, &nina, Method::GET, "/api/v1/whoami").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let me: Value = r.json().await.unwrap();
    assert_eq!((me["user"].as_str(), me["role"].as_str()), (Some("nina@example.com"), Some("viewer")));
    assert_eq!(ids(&server, &nina, "/api/v1/devices").await, ["sso-1", "sso-2"]);
    let r = with(&server, &nina, Method::GET, "/api/v1/audit").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "her scope still holds");
    // Her provider's token cannot be logged out of here (it would go on working).
    let r = with(&server, &nina, Method::POST, "/api/v1/logout").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("sign out at the provider"));

    // Every way a token can be wrong is refused.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = json!({ "iss": idp.issuer, "aud": "drover", "exp": now + 300, "email": "nina@example.com" });
    let cases = [
        (
            "another audience",
            provider::token(&first, &idp.issuer, json!({ "email": "nina@example.com", "aud": "other" })),
        ),
        ("another issuer", provider::token(&first, "http://127.0.0.1:1", json!({ "email": "nina@example.com" }))),
        ("expired", provider::token(&first, &idp.issuer, json!({ "email": "nina@example.com", "exp": now - 3600 }))),
        ("an unknown user", provider::token(&first, &idp.issuer, json!({ "email": "mallory@example.com" }))),
        ("no user claim", provider::token(&first, &idp.issuer, json!({ "sub": "nina" }))),
        (
            "a stranger's key under the provider's key id",
            provider::sign(&stranger, json!({ "alg": "RS256", "kid": "k1" }), claims.clone()),
        ),
        ("alg none", format!("{}.{}.", b64(json!({ "alg": "none", "kid": "k1" })), b64(claims.clone()))),
        ("HS256", format!("{}.{}.c2lnbmF0dXJl", b64(json!({ "alg": "HS256", "kid": "k1" })), b64(claims.clone()))),
        ("a tampered claim", {
            let good = provider::token(&first, &idp.issuer, json!({ "email": "other@example.com" }));
            let parts: Vec<&str> = good.split('.').collect();
            format!("{}.{}.{}", parts[0], b64(claims.clone()), parts[2])
        }),
    ];
    for (what, token) in cases {
        let r = with(&server, &token, Method::GET, "/api/v1/whoami").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what} was accepted: {}", r.text().await.unwrap());
    }

    // The provider rotates its key: a token with the new key id is accepted once the keys
    // are fetched again (at most once per 5 s for an unknown key id).
    idp.publish(&[&first, &second]);
    tokio::time::sleep(drover::oidc::MISS_REFETCH + std::time::Duration::from_millis(300)).await;
    let rotated = provider::token(&second, &idp.issuer, json!({ "email": "nina@example.com" }));
    let r = with(&server, &rotated, Method::GET, "/api/v1/whoami").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());

    // Disabled here, her provider's tokens stop working at once.
    let r = server
        .admin(Method::PATCH, "/api/v1/users/nina@example.com")
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = with(&server, &nina, Method::GET, "/api/v1/whoami").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_provider_sqlite() {
    openid_provider(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_provider_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    openid_provider(backend).await;
}
