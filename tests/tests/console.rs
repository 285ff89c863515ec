//! The web console (docs/console.md) in a real browser: headless Chromium driven over
//! WebDriver by Debian's chromedriver, against a real server. Log in, find a device by
//! tag, send it an operation from the form (a bad payload shows the plugin's message),
//! watch its state change without a reload, make an enrollment token and read its QR
//! code back from a screenshot, roll a plugin back; and the refusals: no session, a bad
//! CSRF token, a revoked token's session. Screenshots of every page are written to
//! `target/tmp/console-screenshots/` (not committed).

use drover_tests::{ADMIN_TOKEN, Backend, TestServer, android, with_version};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver on a free port and a headless Chromium session. Without Chromium the
/// test is skipped with a message, except in CI (`CI` set), where `.ci/run` installs it.
async fn browser() -> Option<(Driver, Client)> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must have Debian's chromium and chromium-driver");
        eprintln!("skipped: install Debian's chromium and chromium-driver to run the console tests");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = tempfile::tempdir().unwrap().keep();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1100", format!("--user-data-dir={}", profile.display())],
        }),
    );
    // fantoccini's rustls and the tests' own (ring) both link: name the provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ClientBuilder::rustls()
        .expect("rustls client")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session in headless Chromium");
    Some((driver, client))
}

fn shots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// Wait (bounded, 20 s) until the element `css` has text containing `want`.
async fn text_soon(c: &Client, css: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if last.contains(want) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("`{css}` never showed `{want}`; last: {last:?}");
}

/// Wait (bounded, 20 s) until the browser is at a URL containing `want`.
async fn at(c: &Client, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = c.current_url().await.unwrap().to_string();
        if url.contains(want) {
            return;
        }
        assert!(Instant::now() < deadline, "never got to `{want}`; at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(c: &Client, form_css: &str) {
    c.find(Locator::Css(&format!("{form_css} button[type=submit]"))).await.unwrap().click().await.unwrap();
}

/// The agent's result for an operation it received.
fn result(op: &Value, status: &str) -> Value {
    json!({"id": op["id"], "code": op["code"], "type": op["type"], "status": status, "operationResponse": null})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser() {
    let Some((_driver, c)) = browser().await else { return };
    let server = TestServer::start(Backend::Sqlite).await;
    let lobby = "356000000000101";
    let lobby_token = server.enroll_android(lobby).await;
    server.enroll_android("356000000000102").await;
    let r = server
        .admin(Method::PUT, &format!("/api/v1/devices/android/{lobby}/tags"))
        .json(&json!({"tags": ["lobby"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Not logged in: sent to the login page, which brings the admin back after.
    c.goto(&server.url("/console/devices")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/console/login"));
    c.find(Locator::Css("#token")).await.unwrap().send_keys("drv_admin_wrong").await.unwrap();
    submit(&c, "#token-login").await;
    text_soon(&c, "p.error", "Unknown, expired or revoked admin token").await;
    shot(&c, "login").await;
    c.find(Locator::Css("#token")).await.unwrap().send_keys(ADMIN_TOKEN).await.unwrap();
    submit(&c, "#token-login").await;
    text_soon(&c, "h1", "Devices").await;
    // The session cookie is HttpOnly: scripts on the page cannot read it.
    let cookies = c.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""), "the session cookie is visible to scripts");

    // Find the device by its tag, with the filter form.
    c.find(Locator::Css("form.filters input[name=tag]")).await.unwrap().send_keys("lobby").await.unwrap();
    submit(&c, "form.filters").await;
    at(&c, "tag=lobby").await;
    let table = text_soon(&c, "main table", lobby).await;
    assert!(!table.contains("356000000000102"), "the tag filter let through an untagged device: {table}");
    shot(&c, "devices").await;
    c.find(Locator::LinkText(lobby)).await.unwrap().click().await.unwrap();
    at(&c, &format!("/console/devices/android/{lobby}")).await;
    text_soon(&c, "h1", &format!("android {lobby}")).await;

    // A payload the plugin refuses: its message, and nothing queued.
    c.find(Locator::Css("#op-code option[value=NOTIFICATION]")).await.unwrap().click().await.unwrap();
    let payload = c.find(Locator::Css("#op-payload")).await.unwrap();
    // The script filled in the code's example payload from its schema.
    let example = payload.prop("value").await.unwrap().unwrap_or_default();
    assert!(example.contains("messageTitle"), "{example}");
    payload.clear().await.unwrap();
    payload.send_keys(r#"{"messageTitle": " ", "messageText": "hi"}"#).await.unwrap();
    submit(&c, "form.card[action$='/operations/add']").await;
    let error = text_soon(&c, "#op-error", "messageTitle").await;
    assert!(error.contains("must be 1 to 256 characters"), "{error}");
    shot(&c, "operation-refused").await;
    let ops: Value = server
        .admin(Method::GET, &format!("/api/v1/operations?device_type=android&device_id={lobby}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ops["items"].as_array().unwrap().len(), 0, "a refused payload queued something: {ops}");

    // A good one: queued, then its state follows the device without a reload.
    c.find(Locator::Css("#op-code option[value=DEVICE_RING]")).await.unwrap().click().await.unwrap();
    let payload = c.find(Locator::Css("#op-payload")).await.unwrap();
    payload.clear().await.unwrap();
    submit(&c, "form.card[action$='/operations/add']").await;
    text_soon(&c, "p.ok", "Operation added").await;
    text_soon(&c, "#ops td.state", "PENDING").await;
    c.execute("window.__sameDocument = 42", vec![]).await.unwrap();
    let got: Value = server.poll_android(lobby, &lobby_token, "[]").await.json().await.unwrap();
    assert_eq!(got[0]["code"], "DEVICE_RING", "{got}");
    text_soon(&c, "#ops td.state", "IN_PROGRESS").await;
    let report = json!([result(&got[0], "COMPLETED")]).to_string();
    let r = server.poll_android(lobby, &lobby_token, &report).await;
    assert!(r.status().is_success());
    text_soon(&c, "#ops td.state", "COMPLETED").await;
    let same = c.execute("return window.__sameDocument", vec![]).await.unwrap();
    assert_eq!(same, json!(42), "the page was reloaded to show the change");
    shot(&c, "device").await;

    // The operation's page: its transitions.
    c.find(Locator::Css("#ops td a")).await.unwrap().click().await.unwrap();
    let transitions = text_soon(&c, "main", "Transitions").await;
    assert!(transitions.contains("delivery:poll") && transitions.contains("COMPLETED"), "{transitions}");
    shot(&c, "operation").await;

    // An enrollment token, and its QR code read back from what the browser drew.
    c.goto(&server.url("/console/enrollment")).await.unwrap();
    submit(&c, "form.card[action$='/tokens']").await;
    let url = text_soon(&c, "#enroll-url", "/agent/v1/android/enroll?token=drv_enroll_").await;
    shot(&c, "enrollment").await;
    let png = c.find(Locator::Css("#enroll-qr")).await.unwrap().screenshot().await.unwrap();
    let img = image::load_from_memory(&png).unwrap().to_luma8();
    let mut prepared =
        rqrr::PreparedImage::prepare_from_greyscale(img.width() as usize, img.height() as usize, |x, y| {
            img.get_pixel(x as u32, y as u32).0[0]
        });
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    let (_, content) = grids[0].decode().unwrap();
    assert_eq!(content, url.trim());
    // The token the QR carries enrolls a device.
    let r = server
        .http
        .post(content.replace(&format!("http://{}", server.base.trim_start_matches("http://")), &server.base))
        .body(
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/enroll.json"))
                .unwrap()
                .replace("354956090214718", "356000000000103"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A plugin rolled back from its page.
    let grants: Value =
        server.admin(Method::GET, "/api/v1/plugins/android/grants").send().await.unwrap().json().await.unwrap();
    let caps: Vec<&str> = grants["capabilities"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    server.install_signed("android", "drover", &caps, &with_version(android(), "0.1.9")).await;
    c.goto(&server.url("/console/plugins/android")).await.unwrap();
    text_soon(&c, "#serving-version", "0.1.9").await;
    shot(&c, "plugin").await;
    c.find(Locator::XPath("//button[text()='Roll back']")).await.unwrap().click().await.unwrap();
    text_soon(&c, "#serving-version", "0.1.0").await;
    let p: Value = server.admin(Method::GET, "/api/v1/plugins/android").send().await.unwrap().json().await.unwrap();
    assert_eq!(p["plugin"]["version"], "0.1.0");
    // The audit trail names the console's actions with the token that logged in.
    let audit: Value = server
        .admin(Method::GET, "/api/v1/audit?action=POST%20/api/v1/plugins/%7Bname%7D/rollback")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"][0]["actor"], "bootstrap", "{audit}");

    // The group query editor counts the devices a query matches as it is typed.
    c.goto(&server.url("/console/groups")).await.unwrap();
    let editor = c.find(Locator::Css("#g-query")).await.unwrap();
    editor.send_keys(r#"{"tags": ["lobby"]}"#).await.unwrap();
    text_soon(&c, "#g-count", "1 devices match now").await;
    editor.clear().await.unwrap();
    editor.send_keys(r#"{"device_type": "android"}"#).await.unwrap();
    text_soon(&c, "#g-count", "3 devices match now").await;

    // Every other page renders.
    for (path, name, heading) in [
        ("/console", "overview", "Overview"),
        ("/console/activities", "activities", "Activities"),
        ("/console/groups", "groups", "Groups"),
        ("/console/plugins", "plugins", "Plugins"),
        ("/console/policies", "policies", "Policies"),
        ("/console/rollouts", "rollouts", "Rollouts"),
        ("/console/audit", "audit", "Audit trail"),
    ] {
        c.goto(&server.url(path)).await.unwrap();
        text_soon(&c, "h1", heading).await;
        shot(&c, name).await;
    }
    // Usable on a phone: one column, nothing wider than the screen.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&server.url(&format!("/console/devices/android/{lobby}"))).await.unwrap();
    text_soon(&c, "h1", lobby).await;
    let overflow =
        c.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![]).await.unwrap();
    assert_eq!(overflow, json!(true), "the device page is wider than a phone");
    shot(&c, "device-phone").await;
    c.set_window_size(1280, 1100).await.unwrap();
    let overview_cards = {
        c.goto(&server.url("/console")).await.unwrap();
        text_soon(&c, "section.cards", "devices").await
    };
    assert!(overview_cards.starts_with('3'), "three devices enrolled: {overview_cards}");

    // Refusals, with the browser's own session cookie.
    let session = c.get_named_cookie("drover_session").await.unwrap();
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    let cookie = format!("drover_session={}", session.value());
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let remove = server.url(&format!("/console/devices/android/{lobby}/remove"));
    // No session: to the login page, and nothing happens.
    let r = plain.post(&remove).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/console/login"));
    // A session but a wrong or missing CSRF token (a form from another site): 403.
    for form in [vec![("csrf", "0000")], vec![]] {
        let r = plain.post(&remove).header("cookie", &cookie).form(&form).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.text().await.unwrap().contains("CSRF token is missing or wrong"));
    }
    assert_eq!(server.device("android", lobby).await["status"], "active", "a refused form removed the device");
    // The pages forbid framing and inline scripts.
    let r = plain.get(server.url("/console")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    // Revoking the token ends its sessions at once.
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({"name": "console-op", "role": "operator"}))
        .send()
        .await
        .unwrap();
    let op_token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let login = plain.post(server.url("/console/login")).form(&[("token", op_token.as_str())]).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let set = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/console"), "{set}");
    let op_cookie = set.split(';').next().unwrap().to_string();
    let page = plain.get(server.url("/console/devices")).header("cookie", &op_cookie).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // An operator sees no admin-only actions.
    let page = plain
        .get(server.url(&format!("/console/devices/android/{lobby}")))
        .header("cookie", &op_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Send an operation") && !page.contains("Remove device"), "operator page");
    let r = server.admin(Method::DELETE, "/api/v1/admin-tokens/console-op").send().await.unwrap();
    assert!(r.status().is_success());
    let page = plain.get(server.url("/console/devices")).header("cookie", &op_cookie).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER, "a revoked token's session still works");

    // Analytics: a rule added from the form (a refused one shows why), an alert it
    // opens, resolved from the page; a device's metric charted from its rollups.
    c.goto(&server.url("/console/alerts")).await.unwrap();
    text_soon(&c, "h1", "Alerts").await;
    let spec = c.find(Locator::Css("#r-spec")).await.unwrap();
    spec.send_keys(r#"{"name": "lobby-zone", "kind": "geofence", "shape": {"circle": {"lat": 1.0, "lon": 1.0}}}"#)
        .await
        .unwrap();
    submit(&c, "form.card[action='/console/alert-rules']").await;
    text_soon(&c, "p.error", "radius_m").await;
    let spec = c.find(Locator::Css("#r-spec")).await.unwrap();
    spec.clear().await.unwrap();
    spec.send_keys(r#"{"name": "lobby-zone", "kind": "geofence", "applies_to": {"tags": ["lobby"]}, "shape": {"circle": {"lat": 1.0, "lon": 1.0, "radius_m": 150}}}"#)
        .await
        .unwrap();
    submit(&c, "form.card[action='/console/alert-rules']").await;
    text_soon(&c, "#rules-h + table, section[aria-labelledby=rules-h]", "circle of 150 m").await;
    let now = drover::store::now_ms();
    for (k, (lat, battery)) in [(1.01, 80), (1.0, 78), (1.0, 77), (1.0005, 75)].iter().enumerate() {
        let body = json!({"timestamp": now - 300_000 + k as i64 * 60_000, "battery": battery, "location": {"lat": lat, "lon": 1.0}});
        let r = server
            .http
            .post(server.url(&format!("/agent/v1/android/devices/{lobby}/telemetry")))
            .bearer_auth(&lobby_token)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    c.goto(&server.url("/console/alerts")).await.unwrap();
    let open = text_soon(&c, "section[aria-labelledby=open-h]", "lobby-zone").await;
    assert!(open.contains(&format!("android {lobby}")) && open.contains("enter at 1.00000"), "{open}");
    shot(&c, "alerts").await;
    submit(&c, "section[aria-labelledby=open-h] form").await;
    text_soon(&c, "section[aria-labelledby=open-h]", "No alert is open").await;
    text_soon(&c, "section[aria-labelledby=recent-h]", "admin").await;
    c.goto(&server.url(&format!("/console/devices/android/{lobby}?metric=battery"))).await.unwrap();
    c.find(Locator::Css("a[href^='/console/metrics?']")).await.unwrap().click().await.unwrap();
    text_soon(&c, "h1", "Metrics").await;
    let table = text_soon(&c, "main table", "78.00").await;
    assert!(table.contains("75.00") && table.contains("80.00"), "{table}");
    c.find(Locator::Css("figure.chart svg polyline")).await.expect("a chart of the battery");
    shot(&c, "metrics").await;

    // A pre-registered LwM2M device gets its pre-shared key from its page, shown once.
    let r = server
        .admin(Method::POST, "/api/v1/devices/import")
        .header("content-type", "text/csv")
        .body("device_type,device_id\nlwm2m,urn:imei:490154203237518\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    c.goto(&server.url("/console/devices/lwm2m/urn:imei:490154203237518")).await.unwrap();
    c.find(Locator::Css("details:has(form[action$='/psk']) summary")).await.unwrap().click().await.unwrap();
    submit(&c, "form[action$='/psk']").await;
    let issued = text_soon(&c, "#psk-issued", "Shown this once").await;
    let key = c.find(Locator::Css("#psk-key")).await.unwrap().text().await.unwrap();
    assert!(key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{issued}");
    text_soon(&c, "#psk", "urn:imei:490154203237518").await;
    let shown: Value = server
        .admin(Method::GET, "/api/v1/devices/lwm2m/urn:imei:490154203237518/psk")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["identity"], "urn:imei:490154203237518");
    // Reloaded, the page no longer shows the key.
    c.goto(&server.url("/console/devices/lwm2m/urn:imei:490154203237518")).await.unwrap();
    assert!(!c.source().await.unwrap().contains(&key), "the key is shown again");

    c.close().await.unwrap();
    server.stop().await;
}

/// Sessions, CSRF and the pages over plain HTTP, on SQLite and PostgreSQL (the browser
/// test above runs on SQLite only).
async fn sessions(server: &TestServer) {
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    server.enroll_android("356000000000301").await;
    // Login refused with a wrong token; a session with the right one.
    let r = plain.post(server.url("/console/login")).form(&[("token", "drv_admin_nope")]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = plain
        .post(server.url("/console/login"))
        .form(&[("token", ADMIN_TOKEN), ("next", "https://evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // A login form posted from another site is refused (login CSRF).
    let forged = plain
        .post(server.url("/console/login"))
        .header("origin", "https://evil.example")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.headers().get("set-cookie").is_none());
    // `next` only leads back into the console, never to another site.
    assert_eq!(r.headers()["location"], "/console");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let page = |path: &str| {
        let cookie = cookie.clone();
        let url = server.url(path);
        let plain = plain.clone();
        async move { plain.get(url).header("cookie", cookie).send().await.unwrap() }
    };
    for path in [
        "/console",
        "/console/devices?q=3013&status=active",
        "/console/devices/android/356000000000301",
        "/console/activities",
        "/console/groups",
        "/console/enrollment",
        "/console/plugins",
        "/console/plugins/android",
        "/console/policies",
        "/console/rollouts",
        "/console/audit",
    ] {
        let r = page(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let html = r.text().await.unwrap();
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("bootstrap (admin)"), "{path}");
    }
    // Where a policy applies, the device's page shows it and the device's compliance.
    let r = server
        .admin(Method::POST, "/api/v1/policies")
        .json(&json!({"name": "baseline", "priority": 1,
                      "profiles": {"android": [{"code": "CAMERA", "payload": {"enabled": false}}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let html = page("/console/devices/android/356000000000301").await.text().await.unwrap();
    assert!(html.contains("Policy and compliance") && html.contains("baseline (revision 1)"), "policy section");
    assert!(html.contains("id=\"compliance\""), "compliance row");
    // A CSV with an error: the line is named on the page, and nothing is stored.
    let html = page("/console/enrollment").await.text().await.unwrap();
    let csrf_e = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let r = plain
        .post(server.url("/console/enrollment/import"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf_e.as_str()), ("csv", "device_type,device_id\nandroid,356000000000302\nandroid,\n")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let html = r.text().await.unwrap();
    assert!(html.contains("line 3: `device_id` is empty"), "import error by line");
    assert!(html.contains("356000000000302"), "the CSV is kept in the form to fix");
    let r = server.admin(Method::GET, "/api/v1/devices/android/356000000000302").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a refused import stored a row");

    // What the API refuses shows as the error page with the API's status and message.
    let r = page("/console/devices/android/000").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let html = r.text().await.unwrap();
    assert!(html.contains("not found") && html.contains("Error code: <code>not_found</code>"), "{html}");
    // A metadata key is held to the rule of a dynamic group's keys (it becomes a JSON path).
    let r = server.admin(Method::GET, "/api/v1/devices?metadata=a%22b%3Dx").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("metadata key `a\"b`"), "{body}");
    let r = page("/console/devices?metadata=a%22b%3Dx").await;
    assert!(r.text().await.unwrap().contains("metadata key"), "the page names the problem");
    // A search with characters that mean something to SQL LIKE matches them literally.
    let r = page("/console/devices?q=%25").await;
    assert!(!r.text().await.unwrap().contains("356000000000301"), "`%` matched every device");
    // The form token is on the page; a form with it works, without it does not.
    let html = page("/console/groups").await.text().await.unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let post = |path: &str, form: Vec<(&str, &str)>| {
        let cookie = cookie.clone();
        let url = server.url(path);
        let plain = plain.clone();
        let form: Vec<(String, String)> = form.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        async move { plain.post(url).header("cookie", cookie).form(&form).send().await.unwrap() }
    };
    let r = post("/console/groups", vec![("name", "lobby"), ("query", "{\"tags\": [\"lobby\"]}")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r =
        post("/console/groups", vec![("csrf", &csrf), ("name", "lobby"), ("query", "{\"tags\": [\"lobby\"]}")]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/console/groups/lobby");
    // A bad query is shown on the form with the API's message, and nothing is created.
    let r = post("/console/groups", vec![("csrf", &csrf), ("name", "bad"), ("query", "{\"colour\": 1}")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("colour"));
    let r = server.admin(Method::GET, "/api/v1/groups/bad").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Logged out: the session is gone from the database.
    let r = post("/console/logout", vec![("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(page("/console").await.status(), StatusCode::SEE_OTHER);
    // Both are in the audit trail with the token's name.
    let audit: Value =
        server.admin(Method::GET, "/api/v1/audit?target=/console/").send().await.unwrap().json().await.unwrap();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["POST /console/login", "POST /console/logout"], "{audit}");
    assert_eq!(audit["items"][0]["actor"], "bootstrap");

    users(server, &plain).await;
    tenants(server, &plain).await;
}

/// The users page, and a scoped user's console: their devices only.
async fn users(server: &TestServer, plain: &reqwest::Client) {
    server.enroll_android("356000000000309").await;
    let login = |form: Vec<(&'static str, String)>| {
        let url = server.url("/console/login");
        let plain = plain.clone();
        async move { plain.post(url).form(&form).send().await.unwrap() }
    };
    let r = login(vec![("token", ADMIN_TOKEN.to_string())]).await;
    let admin = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let get = |cookie: &str, path: &str| {
        let (cookie, url, plain) = (cookie.to_string(), server.url(path), plain.clone());
        async move { plain.get(url).header("cookie", cookie).send().await.unwrap() }
    };
    let html = get(&admin, "/console/users").await.text().await.unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let post = |cookie: &str, path: &str, form: Vec<(&str, &str)>| {
        let (cookie, url, plain) = (cookie.to_string(), server.url(path), plain.clone());
        let form: Vec<(String, String)> = form.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        async move { plain.post(url).header("cookie", cookie).form(&form).send().await.unwrap() }
    };
    // A weak password is named on the form, and no user is made.
    let weak = vec![("csrf", csrf.as_str()), ("name", "kiosk"), ("password", "short"), ("role", "viewer")];
    let r = post(&admin, "/console/users", weak).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("at least 12"));
    let form = vec![
        ("csrf", csrf.as_str()),
        ("name", "kiosk"),
        ("password", "a long enough passphrase"),
        ("role", "operator"),
        ("device_types", "android"),
        ("operations", ""),
    ];
    let r = post(&admin, "/console/users", form).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let html = get(&admin, "/console/users").await.text().await.unwrap();
    assert!(html.contains("kiosk") && html.contains("types android"), "the users table");
    // Scoped to Android devices: the user logs in with a password, and the device's page
    // offers what the scope lets them do (operations), not what it refuses (tags, keys).
    let r = login(vec![("name", "kiosk".into()), ("password", "a long enough passphrase".into())]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let kiosk = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let html = get(&kiosk, "/console/devices/android/356000000000309").await.text().await.unwrap();
    assert!(html.contains("Send an operation"), "the operation form");
    assert!(!html.contains("Save tags") && !html.contains("Revoke credentials"), "forms the scope refuses");
    // Narrowed to none: the same session sees nothing at its next request.
    let r = server
        .admin(Method::PATCH, "/api/v1/users/kiosk")
        .json(&json!({ "scope": { "groups": ["nobody-here"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let wrong = login(vec![("name", "kiosk".into()), ("password", "not the passphrase".into())]).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("unknown user or wrong password"));
    // The overview counts the whole fleet: a scoped session starts at its devices.
    let r = get(&kiosk, "/console").await;
    assert_eq!(r.headers()["location"], "/console/devices");
    let html = get(&kiosk, "/console/devices").await.text().await.unwrap();
    assert!(html.contains("kiosk (operator, scoped)"), "who is logged in");
    assert!(!html.contains("356000000000309"), "a device outside the scope is listed");
    assert!(!html.contains("href=\"/console/plugins\""), "fleet-wide pages are offered");
    let r = get(&kiosk, "/console/devices/android/356000000000309").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = get(&kiosk, "/console/plugins").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Disabled from the users page: the user's session ends.
    let r = post(&admin, "/console/users/kiosk/disable", vec![("csrf", csrf.as_str())]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(get(&kiosk, "/console/devices").await.status(), StatusCode::SEE_OTHER, "to the login page");
    let r = post(&admin, "/console/users/kiosk/remove", vec![("csrf", csrf.as_str())]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(!get(&admin, "/console/users").await.text().await.unwrap().contains("kiosk"));
}

/// The Tenants page (operators), and a tenant admin's session: its devices and the
/// enrollment page, into its tenant, and no fleet-wide page.
async fn tenants(server: &TestServer, plain: &reqwest::Client) {
    let login = |token: String| {
        let url = server.url("/console/login");
        let plain = plain.clone();
        async move {
            let r = plain.post(url).form(&[("token", token)]).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::SEE_OTHER);
            r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string()
        }
    };
    let get = |cookie: &str, path: &str| {
        let (cookie, url, plain) = (cookie.to_string(), server.url(path), plain.clone());
        async move { plain.get(url).header("cookie", cookie).send().await.unwrap() }
    };
    let post = |cookie: &str, path: &str, form: Vec<(&str, &str)>| {
        let (cookie, url, plain) = (cookie.to_string(), server.url(path), plain.clone());
        let form: Vec<(String, String)> = form.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        async move { plain.post(url).header("cookie", cookie).form(&form).send().await.unwrap() }
    };
    let admin = login(ADMIN_TOKEN.to_string()).await;
    let html = get(&admin, "/console/tenants").await.text().await.unwrap();
    assert!(html.contains("<td>default</td>"), "the default tenant is listed");
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let r = post(&admin, "/console/tenants", vec![("csrf", &csrf), ("name", "Bad Name"), ("description", "")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("lower-case"), "the refusal is named on the form");
    for name in ["initech", "short-lived"] {
        let r =
            post(&admin, "/console/tenants", vec![("csrf", &csrf), ("name", name), ("description", "Initech")]).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
    }
    let r = post(&admin, "/console/tenants/short-lived/remove", vec![("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let html = get(&admin, "/console/tenants").await.text().await.unwrap();
    assert!(html.contains("<td>initech</td>") && !html.contains("short-lived"), "the tenants table");

    // A tenant admin's session: its devices only, enrollment into its tenant.
    let r = server
        .admin(Method::POST, "/api/v1/admin-tokens")
        .json(&json!({ "name": "boss", "role": "admin", "tenant": "initech" }))
        .send()
        .await
        .unwrap();
    let boss_token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let boss = login(boss_token.clone()).await;
    let html = get(&boss, "/console/devices").await.text().await.unwrap();
    assert!(html.contains("initech/boss (admin, tenant initech)"), "who is logged in");
    assert!(!html.contains("356000000000301"), "another tenant's device is listed");
    assert!(html.contains("href=\"/console/enrollment\"") && !html.contains("href=\"/console/tenants\""));
    let html = get(&boss, "/console/enrollment").await.text().await.unwrap();
    assert!(!html.contains("e-tenant"), "a tenant admin does not choose the tenant");
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let form = vec![("csrf", csrf.as_str()), ("device_type", "android"), ("uses", "2"), ("hours", "1")];
    let html = post(&boss, "/console/enrollment/tokens", form).await.text().await.unwrap();
    assert!(html.contains("devices of tenant initech"), "the token enrolls into the tenant");
    assert_eq!(get(&boss, "/console/tenants").await.status(), StatusCode::FORBIDDEN);

    // Its tenant's groups: made there as TENANT/NAME; the operators see whose each is.
    let html = get(&boss, "/console/groups").await.text().await.unwrap();
    assert!(html.contains("href=\"/console/groups\"") && !html.contains("g-tenant"), "offered, into its tenant");
    let form = vec![("csrf", csrf.as_str()), ("name", "kiosks"), ("description", "Lobby kiosks"), ("query", "")];
    let r = post(&boss, "/console/groups", form).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], "/console/groups/initech%2Fkiosks", "to the new group's page");
    let html = get(&boss, "/console/groups/initech%2Fkiosks").await.text().await.unwrap();
    assert!(html.contains("Lobby kiosks"), "the new group's page");
    let html = get(&admin, "/console/groups").await.text().await.unwrap();
    assert!(html.contains("initech/kiosks") && html.contains("<td>initech</td>"), "the operators' view");

    // Its tenant's policies, listed; the operators' are not.
    let policy = |name: &str| json!({ "name": name, "profiles": { "android": [{ "code": "CAMERA", "payload": { "enabled": false } }] } });
    let r = server.admin(Method::POST, "/api/v1/policies").json(&policy("operators-only")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let r = server
        .http
        .post(server.url("/api/v1/policies"))
        .bearer_auth(&boss_token)
        .json(&policy("no-camera"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let html = get(&boss, "/console/policies").await.text().await.unwrap();
    assert!(html.contains("initech/no-camera") && !html.contains("operators-only"), "{html}");
    assert!(html.contains("href=\"/console/policies\""), "offered in the navigation");
    let html = get(&admin, "/console/policies").await.text().await.unwrap();
    assert!(html.contains("<td>operators-only</td>") && html.contains("<td>initech</td>"), "the operators' view");

    // Its alerts, metrics and rollouts pages serve it; the plugins page shows the shared
    // plugins without the operators' controls.
    for page in ["/console/alerts", "/console/metrics", "/console/rollouts", "/console/plugins"] {
        let r = get(&boss, page).await;
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        let html = r.text().await.unwrap();
        assert!(html.contains(&format!("href=\"{page}\"")), "{page} offered in the navigation");
    }
    let html = get(&boss, "/console/plugins").await.text().await.unwrap();
    assert!(html.contains("/console/plugins/android") && !html.contains("(shared)"), "{html}");
    let html = get(&boss, "/console/plugins/android").await.text().await.unwrap();
    assert!(!html.contains("/suspend") && !html.contains("Save grants"), "a shared plugin's controls: {html}");
    let html = get(&admin, "/console/plugins").await.text().await.unwrap();
    assert!(html.contains("(shared)"), "the operators' view says whose each plugin is");

    // Its overview counts its tenant's devices (none yet), without the server's push
    // connections; its audit trail holds its own calls only.
    let r = get(&boss, "/console").await;
    assert_eq!(r.status(), StatusCode::OK, "the overview is offered to a tenant's whole session");
    let html = r.text().await.unwrap();
    assert!(html.contains("<div class=\"big\">0</div>devices"), "{html}");
    assert!(!html.contains("online for push now"), "the server's connection count shown to a tenant");
    let html = get(&admin, "/console").await.text().await.unwrap();
    assert!(html.contains("online for push now"), "the operators' overview");
    let html = get(&boss, "/console/audit").await.text().await.unwrap();
    assert!(html.contains("POST /api/v1/policies") && html.contains("POST /console/login"), "its own calls: {html}");
    assert!(!html.contains("/api/v1/tenants") && !html.contains("/console/tenants"), "the operators' calls: {html}");
    let html = get(&admin, "/console/audit").await.text().await.unwrap();
    assert!(
        html.contains("<th scope=\"col\">Tenant</th>") && html.contains("<td>initech</td>"),
        "the operators' trail"
    );
}

drover_tests::e2e!(console_sessions, super::sessions);
