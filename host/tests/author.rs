//! The plugin author's path outside this repository: the built `drover` binary alone, copied
//! into an empty directory, makes a plugin of each kind (`plugin new`, no `--sdk-path`),
//! and every command of the generated README runs as written from the new crate (`cargo
//! test`, `plugin build`, `plugin test`, keygen, trust, sign, install) against a running
//! `drover serve`. The device type then enrolls a device and completes an operation. The
//! same for a device type in Python (`--lang python`, built with componentize-py, which
//! `DROVER_COMPONENTIZE_PY` names) and in JavaScript (`--lang javascript`, built with jco,
//! which its README's `npm install` fetches). CI has both toolchains; elsewhere a missing
//! one is skipped with a message, while under CI that is a failure.
//!
//! Only the crate registry is reached (dependencies pinned by the Cargo.lock the binary
//! writes); the compiled dependencies are shared through CARGO_TARGET_DIR.

use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The ```sh block of a README, one command a line.
fn commands(readme: &str) -> Vec<String> {
    let block = readme.split("```sh\n").nth(1).expect("the README has a ```sh block");
    let block = &block[..block.find("```").unwrap()];
    block.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// Run `line` with `sh` in `dir`; its output, or a panic that shows it.
fn sh(dir: &Path, line: &str, env: &[(&str, String)]) -> String {
    let mut c = Command::new("sh");
    c.arg("-c").arg(line).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    // Never a developer's configuration.
    c.env_remove("DROVER_CONFIG").env_remove("DROVER_DATA_DIR");
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "`{line}` failed in {}:\n{stdout}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The binary alone in a directory of its own, a `drover serve` from it, and the
/// environment an author's shell would have: the binary first on PATH (cargo, rustc,
/// npm stay), the server and an admin token. Dropped, the server stops.
struct Author {
    _bin: tempfile::TempDir,
    _data: tempfile::TempDir,
    _served: Served,
    server: String,
    token: String,
    env: Vec<(&'static str, String)>,
}

fn author() -> Author {
    let bin = tempfile::tempdir().unwrap();
    let drover = bin.path().join("drover");
    std::fs::copy(env!("CARGO_BIN_EXE_drover"), &drover).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut serve = Command::new(&drover);
    serve
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--mqtt-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--coap-addr", &format!("127.0.0.1:{}", free_port()), "--coaps-addr", "127.0.0.1:0"])
        .args(["--plaintext", "true"])
        .env_remove("DROVER_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The copy was open for writing a moment ago; a process the other test forked in that
    // moment holds the descriptor until it execs, and Linux refuses to run a file open for
    // writing (ETXTBSY, seen once in CI). It passes within milliseconds: try again briefly.
    let mut tries = 0;
    let mut child = loop {
        match serve.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    let stderr = child.stderr.take().unwrap();
    let served = Served(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "drover serve did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Keep the server's log flowing (a full pipe would stop it).
    std::thread::spawn(move || {
        let _ = std::io::BufReader::new(stderr).read_to_end(&mut Vec::new());
    });
    let token = std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let server = format!("http://127.0.0.1:{port}");
    let workspace = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let env = vec![
        ("PATH", path),
        ("DROVER_SERVER", server.clone()),
        ("DROVER_ADMIN_TOKEN", token.clone()),
        // Compiled dependencies shared between the kinds and with other test runs.
        ("CARGO_TARGET_DIR", workspace.join("target/author").display().to_string()),
    ];
    Author { _bin: bin, _data: data, _served: served, server, token, env }
}

/// docs/plugin-authoring.md as a newcomer follows it: every `$ ` command of its console
/// blocks runs, in order, from an empty directory (`cd` moves), and every line of output
/// it shows (but those with `…`, which vary) is in what the command printed.
#[test]
fn the_authoring_guide_runs_as_written() {
    let a = author();
    let work = tempfile::tempdir().unwrap();
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/plugin-authoring.md")).unwrap();
    let mut dir = work.path().to_path_buf();
    let mut ran = 0;
    for block in guide.split("```console\n").skip(1) {
        let block = &block[..block.find("```").unwrap()];
        for step in block.split("$ ").skip(1) {
            let mut lines = step.lines();
            let command = lines.next().unwrap().trim();
            if let Some(to) = command.strip_prefix("cd ") {
                dir = dir.join(to);
                continue;
            }
            let out = sh(&dir, command, &a.env);
            for expected in lines.map(str::trim_end).filter(|l| !l.is_empty() && !l.contains('…')) {
                assert!(
                    out.contains(expected.trim_start()),
                    "`{command}` printed\n{out}\nwithout the guide's line\n{expected}"
                );
            }
            ran += 1;
        }
    }
    assert!(ran >= 8, "the guide's console blocks hold {ran} commands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_author_with_only_the_binary_builds_installs_and_serves_each_kind() {
    let a = author();
    let work = tempfile::tempdir().unwrap();
    assert!(!work.path().starts_with(env!("CARGO_MANIFEST_DIR").trim_end_matches("/host")));
    let (server, token) = (a.server.clone(), a.token.clone());
    let env = a.env.clone();

    let python = componentize_py();
    let mut plugins = vec![
        ("acme-tracker", "device-type", "rust"),
        ("acme-push", "transport", "rust"),
        ("acme-battery", "policy-rule", "rust"),
    ];
    let mut env = env;
    match &python {
        Some(tool) => {
            plugins.push(("acme-py", "device-type", "python"));
            env.push(("COMPONENTIZE_PY", tool.clone()));
        }
        None => {
            assert!(std::env::var_os("CI").is_none(), "CI must provide componentize-py (DROVER_COMPONENTIZE_PY)");
            eprintln!("author: componentize-py not found (set DROVER_COMPONENTIZE_PY): the Python template skipped");
        }
    }
    if Command::new("npm").arg("--version").output().is_ok_and(|o| o.status.success()) {
        plugins.push(("acme-js", "device-type", "javascript"));
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI must provide npm (for the JavaScript template)");
        eprintln!("author: npm not found: the JavaScript template skipped");
    }
    let env = env.as_slice();

    for (name, kind, lang) in plugins {
        let out = sh(work.path(), &format!("drover plugin new {name} --kind {kind} --lang {lang}"), env);
        assert!(out.contains(&format!("created {kind} plugin `{name}`")), "{out}");
        let dir = work.path().join(name);
        if lang == "rust" {
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            assert!(manifest.contains(r#"path = "drover-sdk""#), "the carried SDK, not a checkout: {manifest}");
            assert!(dir.join("drover-sdk/wit/worlds.wit").is_file());
        } else {
            assert!(dir.join("wit/worlds.wit").is_file() && dir.join("fixtures/cases.toml").is_file());
        }
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        let mut outputs = Vec::new();
        for line in commands(&readme) {
            outputs.push((line.clone(), sh(&dir, &line, env)));
        }
        let said =
            |cmd: &str| outputs.iter().find(|(l, _)| l.starts_with(cmd)).map(|(_, o)| o.clone()).unwrap_or_default();
        let built = said("drover plugin build");
        assert!(built.contains(&format!("{name} 0.1.0 ({kind})")) && built.contains("built "), "{built}");
        if kind == "device-type" {
            assert!(built.contains("REBOOT"), "the operation catalogue: {built}");
            assert!(said("drover plugin test").contains("3 passed, 0 failed"), "{outputs:?}");
        }
        if kind == "policy-rule" {
            assert!(said("drover plugin test").contains("4 passed, 0 failed"), "{outputs:?}");
        }
        let installed = said("drover plugin install");
        assert!(installed.contains(&format!("{name}@0.1.0")), "{installed}");
        if kind == "transport" {
            assert!(said("drover plugin grant").contains("granted: config"), "{outputs:?}");
        }
        // The lifecycle from the CLI: the server shows it serving, with what was granted.
        let shown = sh(&dir, &format!("drover plugin show {name}"), env);
        assert!(shown.contains(&format!("{name:<20} 0.1.0")) && shown.contains("active"), "{shown}");
        // Its upload, signed by the author's key.
        assert!(shown.contains("uploaded:\n  0.1.0") && !shown.contains("signed by no one"), "{shown}");
    }

    operate(&server, &token, "acme-tracker", "REBOOT", None).await;
    rule_in_a_policy(&server, &token).await;
    // The Python and JavaScript plugins validate the payload: their message reaches the admin.
    let interval = || Some((json!({"seconds": 5}), json!({"seconds": 60})));
    if python.is_some() {
        operate(&server, &token, "acme-py", "SET_INTERVAL", interval()).await;
    }
    if work.path().join("acme-js").is_dir() {
        operate(&server, &token, "acme-js", "SET_INTERVAL", interval()).await;
    }

    // Suspend, enable, list, and settings from the CLI.
    let dir = work.path().join("acme-tracker");
    let out = sh(&dir, "drover plugin suspend acme-tracker --reason 'field test'", env);
    assert!(out.contains("suspended"), "{out}");
    assert!(sh(&dir, "drover plugin show acme-tracker", env).contains("field test"));
    assert!(sh(&dir, "drover plugin enable acme-tracker", env).contains("active"));
    let listed = sh(&dir, "drover plugin list", env);
    assert!(listed.contains("acme-tracker") && listed.contains("android"), "{listed}");
    let set = sh(&dir, "drover plugin settings acme-push --set api_key=k-2 --set region=eu", env);
    assert!(set.contains("\"region\": \"eu\""), "{set}");
    // A tenant's values over the server's: its own only, then forgotten.
    sh(&dir, "drover tenant add acme", env);
    let set = sh(&dir, "drover plugin settings acme-push --tenant acme --set region=us", env);
    assert!(set.contains("\"region\": \"us\"") && !set.contains("api_key"), "{set}");
    let cleared = sh(&dir, "drover plugin settings acme-push --tenant acme --clear", env);
    assert!(cleared.contains("set nothing"), "{cleared}");
    let server_settings = sh(&dir, "drover plugin settings acme-push", env);
    assert!(server_settings.contains("\"region\": \"eu\""), "{server_settings}");
}

fn componentize_py() -> Option<String> {
    if let Ok(p) = std::env::var("DROVER_COMPONENTIZE_PY") {
        return Some(p);
    }
    let found = Command::new("componentize-py").arg("--version").output().is_ok_and(|o| o.status.success());
    found.then(|| "componentize-py".to_string())
}

/// A new device type serves a device: enroll, an operation (a refused payload first, when
/// given: the plugin's message reaches the admin), a poll that delivers it, a result that
/// completes it, and a malformed report that is refused and changes nothing.
async fn operate(server: &str, admin: &str, device_type: &str, code: &str, payloads: Option<(Value, Value)>) {
    let http = reqwest::Client::new();
    let r =
        http.post(format!("{server}/agent/v1/{device_type}/enroll")).body(r#"{"id": "unit-7"}"#).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let add = |payload: Option<Value>| {
        http.post(format!("{server}/api/v1/operations"))
            .bearer_auth(admin)
            .json(&json!({"code": code, "payload": payload, "targets": {"devices": [{"type": device_type, "id": "unit-7"}]}}))
            .send()
    };
    let payload = match payloads {
        Some((refused, accepted)) => {
            let r = add(Some(refused)).await.unwrap();
            assert_eq!(r.status(), 400);
            assert!(r.text().await.unwrap().contains("seconds must be an integer >= 10"));
            Some(accepted)
        }
        None => None,
    };
    assert_eq!(add(payload).await.unwrap().status(), 201);
    let poll =
        |body: String| http.put(format!("{server}/agent/v1/{device_type}/poll")).bearer_auth(&token).body(body).send();
    let ops: Vec<Value> = poll("[]".into()).await.unwrap().json().await.unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["code"], code);
    let id = ops[0]["id"].as_i64().unwrap();
    assert_eq!(poll("[{\"id\": ".into()).await.unwrap().status(), 400, "a malformed report is refused");
    assert_eq!(poll(json!([{"id": id, "status": "COMPLETED"}]).to_string()).await.unwrap().status(), 200);
    let op: Value = http
        .get(format!("{server}/api/v1/operations/{id}"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(op["state"], "COMPLETED", "{op}");
}

/// The template's rule, installed by its author, checks a policy's parameters and judges
/// a real Android device's compliance from its telemetry.
async fn rule_in_a_policy(server: &str, admin: &str) {
    let http = reqwest::Client::new();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/enroll.json");
    let body = std::fs::read_to_string(fixture).unwrap().replace("354956090214718", "359000000000077");
    let r = http.post(format!("{server}/agent/v1/android/enroll")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let report = |battery: i64| {
        http.post(format!("{server}/agent/v1/android/devices/359000000000077/telemetry"))
            .bearer_auth(&token)
            .body(json!({"battery": battery}).to_string())
            .send()
    };
    assert_eq!(report(9).await.unwrap().status(), 200);
    let policy = |params: Value| {
        json!({"name": "battery-floor", "action": "warn",
               "rules": [{"rule": "acme-battery", "params": params}],
               "profiles": {"android": [{"code": "CAMERA", "payload": {"enabled": false}}]}})
    };
    let create = |body: Value| http.post(format!("{server}/api/v1/policies")).bearer_auth(admin).json(&body).send();
    let r = create(policy(json!({"telemetry": "battery"}))).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("`min` (a number) is required"), "the rule's own message");
    assert_eq!(create(policy(json!({"telemetry": "battery", "min": 20}))).await.unwrap().status(), 201);
    let compliance = || async {
        http.get(format!("{server}/api/v1/devices/android/359000000000077/compliance"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let mut seen = Value::Null;
    for _ in 0..150 {
        seen = compliance().await;
        if seen["state"] == "non_compliant" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen["state"], "non_compliant", "{seen}");
    assert_eq!(seen["checks"][0]["rule"], "acme-battery");
    assert_eq!(seen["checks"][0]["reason"], "battery is 9, below 20", "{seen}");
}
