//! Helpers for Drover's end-to-end tests: the compiled test plugins, a runtime shared by
//! the tests of one binary (so each component compiles once), and a real server on a
//! free loopback port.

use drover::plugins::{Limits, Runtime};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Paths of the compiled test plugins (tests/plugins/*), built by build.rs.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// A small seeded generator (xorshift64*) for the randomised tests (the engine's
/// property test, the fuzzer): random but replayable from the seed they print.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

/// The bytes of a compiled test plugin.
pub fn component(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The first-party Android plugin, as embedded in the server.
pub fn android() -> &'static [u8] {
    drover::plugins::first_party::PLUGINS
        .iter()
        .find(|(n, _)| *n == "android")
        .map(|(_, b)| *b)
        .expect("android is a first-party plugin")
}

/// Compiled artifacts shared by every test binary and run, so components compile once.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-cache/compiled"))
}

/// `component` as another version of itself: the manifest's `version = "…"` rewritten
/// in place. The new version must have the same length, so every section length still
/// holds; the result is a valid component with another sha256, as a rebuild would be.
pub fn with_version(component: &[u8], version: &str) -> Vec<u8> {
    let manifest = drover::plugins::Manifest::from_component(component).expect("a plugin component");
    let out = with_manifest_value(component, "version", &manifest.version, version);
    assert_eq!(drover::plugins::Manifest::from_component(&out).unwrap().version, version);
    out
}

/// `component` with its manifest's name changed to `name`, which must be as long as the
/// old one. Nothing else changes (what its `describe` says may then disagree).
pub fn with_name(component: &[u8], name: &str) -> Vec<u8> {
    let manifest = drover::plugins::Manifest::from_component(component).expect("a plugin component");
    let out = with_manifest_value(component, "name", &manifest.name, name);
    assert_eq!(drover::plugins::Manifest::from_component(&out).unwrap().name, name);
    out
}

/// Replace `key = "old"` by `key = "new"` in every copy: the manifest section, and the
/// text the SDK's static leaves in data.
fn with_manifest_value(component: &[u8], key: &str, old: &str, new: &str) -> Vec<u8> {
    let (old, new) = (format!("{key} = \"{old}\""), format!("{key} = \"{new}\""));
    assert_eq!(old.len(), new.len(), "{new} must be as long as {old}");
    let mut out = component.to_vec();
    let mut found = false;
    let mut at = 0;
    while let Some(i) = out[at..].windows(old.len()).position(|w| w == old.as_bytes()) {
        out[at + i..at + i + new.len()].copy_from_slice(new.as_bytes());
        at += i + new.len();
        found = true;
    }
    assert!(found, "the manifest's {key} line");
    out
}

/// One runtime with default limits for all tests of a binary.
pub fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME.get_or_init(|| Arc::new(Runtime::new(Limits::default(), Some(cache_dir())).expect("runtime"))).clone()
}

/// The database an end-to-end test runs against.
pub enum Backend {
    Sqlite,
    /// A PostgreSQL schema of the test's own, on the server `DROVER_TEST_POSTGRES_URL` names.
    Postgres(String),
}

/// Environment variable naming the PostgreSQL server for the PostgreSQL suite.
pub const POSTGRES_ENV: &str = "DROVER_TEST_POSTGRES_URL";

impl Backend {
    /// The PostgreSQL backend, or `None` (after saying so once, uncaptured) when
    /// `DROVER_TEST_POSTGRES_URL` is not set.
    pub fn postgres() -> Option<Backend> {
        match std::env::var(POSTGRES_ENV) {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres(url)),
            _ => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    use std::io::Write;
                    // Written past the test harness's capture, so a plain `cargo test` shows it.
                    let _ = writeln!(
                        std::io::stderr(),
                        "note: the PostgreSQL suite was SKIPPED: set {POSTGRES_ENV}=postgres://USER@127.0.0.1:5432/DB to run it"
                    );
                });
                None
            }
        }
    }
}

/// The bootstrap admin token every test server starts with.
pub const ADMIN_TOKEN: &str = "drv_admin_test_bootstrap_token";

/// A real Drover server on a free loopback port, in this process.
pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub data: tempfile::TempDir,
    pub state: drover::core::Core,
    /// The embedded MQTT broker's address (`None` with an external broker).
    pub mqtt: Option<std::net::SocketAddr>,
    /// Where LwM2M devices register (CoAP over UDP).
    pub coap: std::net::SocketAddr,
    /// Where LwM2M devices with a pre-shared key register (CoAP over DTLS).
    pub coaps: std::net::SocketAddr,
    config: drover::config::Config,
    /// (server URL, schema) of a PostgreSQL test, dropped at `stop`.
    pg_schema: Option<(String, String)>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The endpoints written to serve scoped callers (narrowed to the scope), by method and
/// route; every other one must refuse them (`TestServer::walk_refused`).
pub const SCOPED: &[(&str, &str)] = &[
    ("get", "/api/v1/devices"),
    ("get", "/api/v1/devices/{device_type}/{device_id}"),
    ("get", "/api/v1/devices/{device_type}/{device_id}/telemetry"),
    ("get", "/api/v1/devices/{device_type}/{device_id}/telemetry/series"),
    ("get", "/api/v1/telemetry/metrics"),
    ("get", "/api/v1/alerts"),
    ("get", "/api/v1/alerts/{id}"),
    ("post", "/api/v1/alerts/{id}/resolve"),
    ("get", "/api/v1/devices/{device_type}/{device_id}/certificates"),
    ("get", "/api/v1/devices/{device_type}/{device_id}/psk"),
    ("get", "/api/v1/devices/{type}/{id}/policy"),
    ("get", "/api/v1/devices/{type}/{id}/compliance"),
    ("get", "/api/v1/device-types"),
    ("get", "/api/v1/operations"),
    ("post", "/api/v1/operations"),
    ("get", "/api/v1/operations/{id}"),
    ("post", "/api/v1/operations/{id}/cancel"),
    ("get", "/api/v1/whoami"),
    ("get", "/api/v1/events"),
    ("post", "/api/v1/logout"),
    ("post", "/api/v1/login"),
];

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}_{}", std::process::id(), t % 1_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    /// Start with the test configuration changed by `adjust`.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut drover::config::Config)) -> TestServer {
        let data = tempfile::tempdir().unwrap();
        let mut pg_schema = None;
        let database_url = match backend {
            Backend::Sqlite => format!("sqlite://{}", data.path().join("drover.db").display()),
            Backend::Postgres(url) => {
                use sqlx::Connection;
                let schema = unique("drover_test");
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect to the PostgreSQL test server");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&mut conn).await.unwrap();
                let sep = if url.contains('?') { '&' } else { '?' };
                pg_schema = Some((url.clone(), schema.clone()));
                format!("{url}{sep}options=-c%20search_path%3D{schema}")
            }
        };
        // Compiled plugins are shared by every test server.
        let cache = cache_dir();
        std::fs::create_dir_all(data.path().join("cache")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&cache, data.path().join("cache/compiled")).ok();
        let mut config = drover::config::Config {
            database_url,
            admin_token: Some(ADMIN_TOKEN.into()),
            ..drover::config::Config::local(data.path())
        };
        // A test's devices all come from 127.0.0.1, a whole fleet behind one address: no
        // limit on requests before a credential (`limits.rs` tests the limit itself).
        config.http.enroll_rate_per_sec = 0;
        adjust(&mut config);
        std::fs::create_dir_all(&cache).unwrap();
        Self::boot(config, data, pg_schema).await
    }

    /// Stop the server and start it again on the same data (database, data directory),
    /// as after a crash or an upgrade. Listeners get new ports.
    pub async fn restart(mut self) -> TestServer {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.state.store.close().await;
        let (config, data, pg_schema) = (
            self.config.clone(),
            std::mem::replace(&mut self.data, tempfile::tempdir().unwrap()),
            self.pg_schema.take(),
        );
        Self::boot(config, data, pg_schema).await
    }

    async fn boot(
        config: drover::config::Config,
        data: tempfile::TempDir,
        pg_schema: Option<(String, String)>,
    ) -> TestServer {
        let server = drover::server::Server::start(&config).await.expect("server starts");
        let base = format!("http://{}", server.local_addr().unwrap());
        let state = server.state.core.clone();
        let mqtt = server.mqtt_addr();
        let coap = server.coap_addr().expect("the CoAP listener");
        let coaps = server.coaps_addr().expect("the CoAP over DTLS listener");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .serve(async {
                    rx.await.ok();
                })
                .await
                .unwrap();
        });
        TestServer {
            base,
            http: reqwest::Client::new(),
            data,
            state,
            mqtt,
            coap,
            coaps,
            config,
            pg_schema,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The database this server uses: start another server on it for a second replica.
    pub fn database_url(&self) -> String {
        self.config.database_url.clone()
    }

    /// Another server on this one's database: a second replica.
    pub async fn replica(&self) -> TestServer {
        self.replica_with(|_| {}).await
    }

    /// [`TestServer::replica`], with its configuration changed by `adjust` (an external
    /// broker, say).
    pub async fn replica_with(&self, adjust: impl FnOnce(&mut drover::config::Config)) -> TestServer {
        let url = self.database_url();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::postgres().expect("a PostgreSQL test server")
        };
        // Replicas of one database share the key that seals its secrets (docs/security.md).
        let key = self.config.secret_key_file.clone();
        TestServer::start_with(backend, move |c| {
            c.database_url = url;
            c.secret_key_file = key;
            adjust(c);
        })
        .await
    }

    /// Run one statement on this server's database, as an operator at the console would:
    /// for a state no API makes (a device last seen an hour ago).
    pub async fn sql(&self, statement: &str) {
        use sqlx::Connection;
        let url = self.database_url();
        let statement = sqlx::AssertSqlSafe(statement.to_string());
        if url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(statement).execute(&mut c).await.unwrap();
        } else {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(statement).execute(&mut c).await.unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Enroll an Android device `id` by open self-enrollment (the agent's real enrollment
    /// request, `plugins/android/fixtures/enroll.json`); its access token.
    pub async fn enroll_android(&self, id: &str) -> String {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/enroll.json");
        let body = std::fs::read_to_string(fixture).unwrap().replace("354956090214718", id);
        let r = self.http.post(self.url("/agent/v1/android/enroll")).body(body).send().await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED, "enrolling {id}");
        r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
    }

    /// A device's compliance (`GET …/compliance`) once `until` holds: the compliance loop
    /// evaluates a few seconds after a report. Panics with the last answer after 30 s.
    pub async fn compliance_when(
        &self,
        device_type: &str,
        id: &str,
        until: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        for _ in 0..150 {
            let r = self
                .admin(reqwest::Method::GET, &format!("/api/v1/devices/{device_type}/{id}/compliance"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), reqwest::StatusCode::OK);
            let body: serde_json::Value = r.json().await.unwrap();
            if until(&body) {
                return body;
            }
            last = body;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        panic!("compliance of {device_type}/{id} never got there: {last}");
    }

    /// An Android device's poll (`PUT …/pending-operations`) as the device holding
    /// `token`, carrying `body` (its results in the agent's JSON; `[]` for none).
    pub async fn poll_android(&self, id: &str, token: &str, body: &str) -> reqwest::Response {
        self.http
            .put(self.url(&format!("/agent/v1/android/devices/{id}/pending-operations")))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Walk every path and method of the OpenAPI document as `token` (a confined caller:
    /// scoped, or a tenant's): the endpoints in `served` (method, route) serve it and are
    /// checked by the caller; every other one must answer 403 `scoped`, and no answer may
    /// name `hidden` (a device out of its reach). A new endpoint that forgets confined
    /// callers fails here.
    pub async fn walk_refused(&self, token: &str, served: &[(&str, &str)], hidden: &str, other_op: i64) {
        use reqwest::{Method, StatusCode};
        let doc: serde_json::Value =
            self.http.get(self.url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
        let (mut refused, mut operations) = (0, 0);
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "post", "put", "patch", "delete"] {
                operations += usize::from(item.get(method).is_some());
                if item.get(method).is_none() || served.contains(&(method, path.as_str())) {
                    continue;
                }
                let concrete = path
                    .replace("{device_type}", "android")
                    .replace("{device_id}", hidden)
                    .replace("{id}", &other_op.to_string())
                    .replace("{name}", "lab")
                    .replace("{tenant}", "default")
                    .replace("{serial}", "00")
                    .replace("{version}", "1.0.0")
                    .replace("{plugin}", "android")
                    .replace("{metric}", "battery");
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let r = self
                    .http
                    .request(m, self.url(&concrete))
                    .bearer_auth(token)
                    .json(&serde_json::json!({}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body = r.text().await.unwrap();
                assert!(!body.contains(hidden), "{method} {concrete} named a device out of reach: {body}");
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {concrete} served a confined caller: {body}");
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["error"]["code"], "scoped", "{method} {concrete}: {body}");
                refused += 1;
            }
        }
        assert!(operations > 100, "only {operations} operations in the OpenAPI document: is it whole?");
        // The operators' own endpoints (tokens of the server, tenants, plugins, settings,
        // metrics …) are always among those refused.
        assert!(refused > 20, "only {refused} of {operations} endpoints refused this caller");
    }

    /// An admin-API request with the bootstrap token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(ADMIN_TOKEN)
    }

    /// Add `code` (with `payload`) for one device as an admin; the operation's id.
    pub async fn add_operation(
        &self,
        device_type: &str,
        device_id: &str,
        code: &str,
        payload: Option<serde_json::Value>,
    ) -> i64 {
        use reqwest::{Method, StatusCode};
        let mut body =
            serde_json::json!({"code": code, "targets": {"devices": [{"type": device_type, "id": device_id}]}});
        if let Some(p) = payload {
            body["payload"] = p;
        }
        let r = self.admin(Method::POST, "/api/v1/operations").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{code}: {}", r.text().await.unwrap());
        let activity = r.json::<serde_json::Value>().await.unwrap()["activity"]["id"].as_i64().unwrap();
        let path = format!("/api/v1/operations?activity={activity}");
        let ops: serde_json::Value = self.admin(Method::GET, &path).send().await.unwrap().json().await.unwrap();
        ops["items"][0]["id"].as_i64().expect("the activity's operation")
    }

    /// A device as the admin API shows it (metadata, telemetry, wake-up …).
    pub async fn device(&self, device_type: &str, device_id: &str) -> serde_json::Value {
        let path = format!("/api/v1/devices/{device_type}/{device_id}");
        self.admin(reqwest::Method::GET, &path).send().await.unwrap().json().await.unwrap()
    }

    /// Operation `id` as the admin API shows it.
    pub async fn operation(&self, id: i64) -> serde_json::Value {
        self.admin(reqwest::Method::GET, &format!("/api/v1/operations/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Wait (15 s at most) until operation `id` is in `state`; the operation then.
    pub async fn until_state(&self, id: i64, state: &str) -> serde_json::Value {
        for _ in 0..300 {
            let op = self.operation(id).await;
            if op["state"] == state {
                return op;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("operation {id} never reached {state}: {}", self.operation(id).await);
    }

    /// Install `component` as an admin would: trust a fresh key for `publisher`, grant
    /// plugin `name` its `capabilities`, upload the component signed. Panics unless it serves.
    pub async fn install_signed(&self, name: &str, publisher: &str, capabilities: &[&str], component: &[u8]) {
        use drover::plugins::signing;
        use reqwest::{Method, StatusCode};
        let (private, public) = signing::generate().unwrap();
        let r = self
            .admin(Method::POST, "/api/v1/publisher-keys")
            .json(&serde_json::json!({"publisher": publisher, "public_key": public}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = self
            .admin(Method::PUT, &format!("/api/v1/plugins/{name}/grants"))
            .json(&serde_json::json!({"capabilities": capabilities}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let signature = signing::encode_signature(&signing::sign(&private, component).unwrap());
        let form = reqwest::multipart::Form::new()
            .part("component", reqwest::multipart::Part::bytes(component.to_vec()))
            .part("signature", reqwest::multipart::Part::text(signature));
        let r = self.admin(Method::POST, "/api/v1/plugins").multipart(form).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.state.store.close().await;
        if let Some((url, schema)) = self.pg_schema.take() {
            use sqlx::Connection;
            if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                let _ =
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&mut conn).await;
            }
        }
    }
}

/// Like [`e2e!`], with the server configuration adjusted by `$adjust` (a fn(&mut Config)).
#[macro_export]
macro_rules! e2e_with {
    ($name:ident, $adjust:path, $scenario:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let server = $crate::TestServer::start_with($crate::Backend::Sqlite, $adjust).await;
                $scenario(&server).await;
                server.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(backend) = $crate::Backend::postgres() else { return };
                let server = $crate::TestServer::start_with(backend, $adjust).await;
                $scenario(&server).await;
                server.stop().await;
            }
        }
    };
}

/// Run an end-to-end scenario on SQLite and, when configured, on PostgreSQL:
/// `e2e!(name, scenario_fn)` makes tests `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! e2e {
    ($name:ident, $scenario:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let server = $crate::TestServer::start($crate::Backend::Sqlite).await;
                $scenario(&server).await;
                server.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(backend) = $crate::Backend::postgres() else { return };
                let server = $crate::TestServer::start(backend).await;
                $scenario(&server).await;
                server.stop().await;
            }
        }
    };
}

/// A real HTTP server on loopback standing in for a push provider (FCM, APNs, WNS, a
/// webhook endpoint): it records every request and answers from a script. Plain HTTP, or
/// TLS with HTTP/2 only and a client certificate required, as APNs is.
pub mod provider {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// One request as the provider received it.
    #[derive(Debug, Clone)]
    pub struct Received {
        pub method: String,
        /// Path and query.
        pub uri: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        pub at: Instant,
        /// `HTTP/1.1`, `HTTP/2.0`.
        pub version: String,
        /// DER of the certificate the client presented (TLS providers).
        pub client_certificate: Option<Vec<u8>>,
    }

    impl Received {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("the request body is JSON")
        }
    }

    /// An answer: status, headers, body.
    pub type Answer = (u16, Vec<(&'static str, &'static str)>, &'static str);

    #[derive(Default)]
    struct Inner {
        received: Vec<Received>,
        script: VecDeque<Answer>,
        /// TLS handshakes that failed (no client certificate, an unknown one).
        refused: usize,
        /// How long each answer waits after the request is recorded.
        delay: Duration,
    }

    /// A TLS provider's own certificate and key, and the CA its clients' certificates
    /// must chain to. PEM.
    pub struct Tls {
        pub cert: String,
        pub key: String,
        pub client_ca: String,
    }

    pub struct Provider {
        /// `http://127.0.0.1:PORT` (`https://` for TLS).
        pub base: String,
        inner: Arc<Mutex<Inner>>,
        task: tokio::task::JoinHandle<()>,
    }

    /// The recording handler; `client_certificate` is the connection's.
    fn app(shared: Arc<Mutex<Inner>>, client_certificate: Option<Vec<u8>>) -> axum::Router {
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let shared = shared.clone();
            let client_certificate = client_certificate.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default().to_vec();
                let received = Received {
                    method: parts.method.to_string(),
                    uri: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect(),
                    body,
                    at: Instant::now(),
                    version: format!("{:?}", parts.version),
                    client_certificate,
                };
                let (status, headers, body, delay) = {
                    let mut i = shared.lock().unwrap();
                    i.received.push(received);
                    let (status, headers, body) = i.script.pop_front().unwrap_or((200, vec![], ""));
                    (status, headers, body, i.delay)
                };
                tokio::time::sleep(delay).await;
                let mut r = axum::response::Response::builder().status(status);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                r.body(axum::body::Body::from(body)).unwrap()
            }
        })
    }

    impl Provider {
        /// Start a provider that answers `script` in order, then 200 with an empty body.
        pub async fn start(script: Vec<Answer>) -> Provider {
            let inner = Arc::new(Mutex::new(Inner { script: script.into(), ..Default::default() }));
            let app = app(inner.clone(), None);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let task = tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
            Provider { base, inner, task }
        }

        /// As [`Provider::start`], over TLS: HTTP/2 only (ALPN `h2`), and a client
        /// certificate issued by `tls.client_ca` is required.
        pub async fn start_tls(script: Vec<Answer>, tls: Tls) -> Provider {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let ring = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(tls.client_ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ring.clone())
                .build()
                .unwrap();
            let certs: Vec<_> = CertificateDer::pem_slice_iter(tls.cert.as_bytes()).map(Result::unwrap).collect();
            let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes()).unwrap();
            let mut config = rustls::ServerConfig::builder_with_provider(ring)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

            let inner = Arc::new(Mutex::new(Inner { script: script.into(), ..Default::default() }));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("https://{}", listener.local_addr().unwrap());
            let shared = inner.clone();
            let task = tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, shared) = (acceptor.clone(), shared.clone());
                    connections.spawn(async move {
                        let stream = match acceptor.accept(tcp).await {
                            Ok(s) => s,
                            Err(_) => {
                                shared.lock().unwrap().refused += 1;
                                return;
                            }
                        };
                        let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                        let service = hyper_util::service::TowerToHyperService::new(app(shared, cert));
                        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Provider { base, inner, task }
        }

        pub fn received(&self) -> Vec<Received> {
            self.inner.lock().unwrap().received.clone()
        }

        /// From now on, answer each request `delay` after receiving it (a slow provider).
        pub fn slow(&self, delay: Duration) {
            self.inner.lock().unwrap().delay = delay;
        }

        /// TLS handshakes refused so far.
        pub fn refused(&self) -> usize {
            self.inner.lock().unwrap().refused
        }

        /// Wait (bounded, 15 s) until at least `n` requests arrived; returns them all.
        pub async fn wait_for(&self, n: usize) -> Vec<Received> {
            for _ in 0..300 {
                let r = self.received();
                if r.len() >= n {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the provider got {} requests, expected {n}", self.received().len());
        }
    }

    impl Drop for Provider {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}
