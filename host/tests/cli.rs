//! The `drover` binary as a user runs it: `serve` on a real port, `plugin inspect`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn drover() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
    // Never pick up a developer's drover.toml or environment.
    c.env_remove("DROVER_CONFIG")
        .env_remove("DROVER_HTTP_ADDR")
        .env_remove("DROVER_DATA_DIR")
        .env_remove("DROVER_ADMIN_TOKEN")
        .env_remove("DROVER_DATABASE_URL")
        .env_remove("DROVER_SECRET_KEY")
        .env_remove("DROVER_BROKER");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp() -> String {
    format!("127.0.0.1:{}", std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `drover serve` and wait (bounded) until it listens. Its output goes to
/// `DATA/serve.log`, shown when it exits early or never listens (a first start compiles
/// every first-party plugin, which takes a while on a busy machine).
fn serve(data: &std::path::Path, port: u16) -> Served {
    let log = data.join("serve.log");
    let child = drover()
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--http-addr", &format!("127.0.0.1:{port}"), "--mqtt-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--coap-addr", &free_udp(), "--coaps-addr", "127.0.0.1:0", "--plaintext", "true"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let mut served = Served(child);
    let tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return served;
        }
        if let Ok(Some(status)) = served.0.try_wait() {
            panic!("drover serve exited ({status}) before listening on {port}:\n{}", tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("drover serve did not listen on {port} within 180 s:\n{}", tail());
}

fn get(port: u16, path: &str) -> String {
    get_with_token(port, path, "")
}

fn get_with_token(port: u16, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = if token.is_empty() { String::new() } else { format!("Authorization: Bearer {token}\r\n") };
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_comes_up_with_the_first_party_plugins() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(data.path(), port);
    let resp = get(port, "/healthz");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""status":"ok""#) && resp.contains("android@0.1.0"), "{resp}");
    for transport in
        ["esp8266", "ios", "windows", "lwm2m", "fcm", "apns", "wns", "webhook", "version-range", "telemetry-threshold"]
    {
        assert!(resp.contains(&format!("{transport}@0.1.0")), "{resp}");
    }
    // The compiled artifacts were cached in the data directory, one per plugin.
    let cached = std::fs::read_dir(data.path().join("cache/compiled")).unwrap().count();
    assert_eq!(cached, 11);
    // A bootstrap admin token was generated, readable by the owner only, and works.
    let token_file = data.path().join("admin-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let token = std::fs::read_to_string(&token_file).unwrap();
    let resp = get_with_token(port, "/api/v1/plugins", token.trim());
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("\"name\":\"android\""), "{resp}");
    assert!(get(port, "/api/v1/plugins").starts_with("HTTP/1.1 401"));
}

#[test]
fn a_taken_port_is_a_clear_error_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let out = drover()
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--http-addr") && err.contains(&port.to_string()) && err.contains("in use"), "{err}");
}

#[test]
fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    // Under systemd, a container runtime or `> drover.log`, stdout is not a terminal:
    // escape codes there garble every line. Here stdout is a pipe; the run ends early on a
    // taken port, after it has logged.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = drover()
        .env_remove("NO_COLOR")
        .env_remove("DROVER_LOG")
        .env_remove("DROVER_LOG_FORMAT")
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--http-addr", &taken.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("starting drover") && log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in a log written to a pipe: {log:?}");
}

#[test]
fn a_taken_mqtt_port_names_the_flag_and_the_way_out() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let out = drover()
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port()), "--mqtt-addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mqtt-addr") && err.contains(&port.to_string()) && err.contains("--broker"), "{err}");
}

#[test]
fn a_taken_coap_port_names_the_flag() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    // Plain CoAP's port, then the DTLS listener's.
    for (flag, coap, coaps) in
        [("--coap-addr", addr.clone(), "127.0.0.1:0".to_string()), ("--coaps-addr", free_udp(), addr.clone())]
    {
        let out = drover()
            .args(["serve", "--data-dir"])
            .arg(data.path())
            .args([
                "--http-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--mqtt-addr",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .args(["--coap-addr", &coap, "--coaps-addr", &coaps])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains(&addr), "{flag}: {err}");
    }
}

#[test]
fn a_bad_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("drover.toml");
    std::fs::write(&file, "htp_addr = \"127.0.0.1:1\"\n").unwrap();
    let out = drover().args(["serve", "--config"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("drover.toml") && err.contains("htp_addr"), "{err}");
}

#[test]
fn plugin_inspect_prints_manifest_and_describe() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("android.wasm");
    let (_, bytes) = drover::plugins::first_party::PLUGINS.iter().find(|(n, _)| *n == "android").unwrap();
    std::fs::write(&file, bytes).unwrap();

    let out = drover().args(["plugin", "inspect", "--json"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifest"]["name"], "android");
    assert_eq!(v["manifest"]["kind"], "device-type");
    assert_eq!(v["describe"]["delivery"][0], "poll");
    let codes: Vec<&str> =
        v["describe"]["operations"].as_array().unwrap().iter().map(|o| o["code"].as_str().unwrap()).collect();
    assert!(codes.contains(&"WIFI") && codes.contains(&"WIPE_DATA"), "{codes:?}");

    let out = drover().args(["plugin", "inspect"]).arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = BufReader::new(text.as_bytes()).lines().map(Result::unwrap).collect();
    assert!(lines[0].starts_with("android 0.1.0 (device-type)"), "{text}");
    assert!(
        lines.iter().any(|l| l.contains("DEVICE_LOCK") && l.contains("command") && l.contains("payload")),
        "{text}"
    );

    std::fs::write(&file, b"not a component").unwrap();
    let out = drover().args(["plugin", "inspect"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid WebAssembly"));
}

/// `bytes` with every `from` replaced by `to` (same length, so the component stays valid).
fn replace_all(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(i) = out[at..].windows(from.len()).position(|w| w == from.as_bytes()) {
        out[at + i..at + i + to.len()].copy_from_slice(to.as_bytes());
        at += i + to.len();
    }
    assert_ne!(out, bytes, "`{from}` not found");
    out
}

#[test]
fn keygen_trust_sign_install_publishes_a_plugin() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(data.path(), port);
    let token = std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let server = format!("http://127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let out = drover().args(args).env("DROVER_SERVER", &server).env("DROVER_ADMIN_TOKEN", &token).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let prefix = work.path().join("acme");
    let p = |s: &std::path::Path| s.to_str().unwrap().to_string();

    let (ok, out, err) = run(&["plugin", "keygen", "--out", &p(&prefix)]);
    assert!(ok, "{err}");
    assert!(out.contains("key id"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(prefix.with_extension("key")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Never overwrites a key.
    let (ok, _, err) = run(&["plugin", "keygen", "--out", &p(&prefix)]);
    assert!(!ok && err.contains("not overwriting"), "{err}");

    let (ok, out, err) = run(&["plugin", "trust", &p(&prefix.with_extension("pub")), "--publisher", "drover"]);
    assert!(ok, "{err}");
    assert!(out.contains("trusted key"), "{out}");

    let (_, android) = drover::plugins::first_party::PLUGINS.iter().find(|(n, _)| *n == "android").unwrap();
    let file = work.path().join("android.wasm");
    std::fs::write(&file, replace_all(android, "version = \"0.1.0\"", "version = \"0.1.7\"")).unwrap();

    // Unsigned: refused by the server, with its reason.
    let (ok, _, err) = run(&["plugin", "install", &p(&file)]);
    assert!(!ok && err.contains("unsigned_plugin"), "{err}");

    let (ok, out, err) = run(&["plugin", "sign", &p(&file), "--key", &p(&prefix.with_extension("key"))]);
    assert!(ok, "{err}");
    assert!(out.contains("signed android@0.1.7"), "{out}");
    let (ok, out, err) = run(&["plugin", "install", &p(&file)]);
    assert!(ok, "{err}");
    assert!(out.contains("android@0.1.7 serving") && out.contains("previous version 0.1.0"), "{out}");
    assert!(get(port, "/healthz").contains("android@0.1.7"));
    let (ok, out, _) = run(&["plugin", "install", &p(&file)]);
    assert!(ok && out.contains("already serving"), "{out}");

    // Changed after signing: refused, and 0.1.7 keeps serving.
    let tampered = replace_all(&std::fs::read(&file).unwrap(), "version = \"0.1.7\"", "version = \"0.1.8\"");
    std::fs::write(&file, tampered).unwrap();
    let (ok, _, err) = run(&["plugin", "install", &p(&file)]);
    assert!(!ok && err.contains("bad_signature") && err.contains("does not match"), "{err}");
    assert!(get(port, "/healthz").contains("android@0.1.7"));
}

#[test]
fn plugin_test_runs_recorded_payloads_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = |name: &str| {
        let file = dir.path().join(format!("{name}.wasm"));
        let (_, bytes) = drover::plugins::first_party::PLUGINS.iter().find(|(n, _)| *n == name).unwrap();
        std::fs::write(&file, bytes).unwrap();
        file
    };
    let android = plugin("android");
    let fixtures = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures"));
    let out = drover().args(["plugin", "test"]).arg(&android).arg("--fixtures").arg(&fixtures).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("5 passed, 0 failed") && text.contains("refused as expected"), "{text}");

    // A case whose expectation the plugin does not meet fails the run, naming why.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    std::fs::copy(fixtures.join("results.json"), wrong.join("results.json")).unwrap();
    std::fs::write(
        wrong.join("cases.toml"),
        "[[case]]\nfile = \"results.json\"\npath = \"pending-operations\"\nresults = 9\n",
    )
    .unwrap();
    let out = drover().args(["plugin", "test"]).arg(&android).arg("--fixtures").arg(&wrong).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("FAIL") && text.contains("the case wants 9"), "{text}");

    // No cases.toml; a transport: clear errors.
    let out = drover().args(["plugin", "test"]).arg(&android).arg("--fixtures").arg(dir.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cases.toml"));
    let out = drover().args(["plugin", "test"]).arg(plugin("fcm")).arg("--fixtures").arg(&fixtures).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("is a transport") && said.contains("cargo test"), "{said}");
}

#[test]
fn passwords_in_urls_are_never_printed() {
    let data = tempfile::tempdir().unwrap();
    // A database that cannot be reached: the error names the URL, without its password.
    let out = drover()
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--database-url", "postgres://drover:hunter2@127.0.0.1:1/drover"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("postgres://drover:***@127.0.0.1:1/drover"), "{all}");
    assert!(!all.contains("hunter2"), "a password was printed: {all}");
    // A broker URL of the wrong form is named without its password too.
    let out = drover()
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--broker", "amqp://svc:hunter3@broker:5672"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("--broker") && !all.contains("hunter3"), "{all}");
}

#[cfg(unix)]
#[test]
fn the_data_directory_and_its_secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    // As a careless `mkdir` under umask 022 leaves it.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let _served = serve(&data, port);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for f in ["drover.db", "drover.db-wal", "secret.key", "admin-token"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    let key = std::fs::read_to_string(data.join("secret.key")).unwrap();
    assert_eq!(key.trim().len(), 64, "{key}");
}

#[test]
fn tokens_and_the_audit_trail_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(data.path(), port);
    let admin = std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let server = format!("http://127.0.0.1:{port}");
    let run = |token: &str, args: &[&str]| {
        let out = drover().args(args).env("DROVER_SERVER", &server).env("DROVER_ADMIN_TOKEN", token).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // Created: the token alone on standard output (for scripts), the rest on stderr.
    let (ok, out, err) = run(&admin, &["token", "create", "ci job", "--role", "viewer", "--expires-in", "2h"]);
    assert!(ok, "{err}");
    let viewer = out.trim().to_string();
    assert!(viewer.starts_with("drv_admin_") && !viewer.contains(' '), "{out}");
    assert!(err.contains("created ci job (role viewer, expires 20"), "{err}");

    let (ok, out, err) = run(&admin, &["token", "list"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("ci job")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("viewer") && line.contains("live") && !line.contains("never"), "{line}");
    assert!(out.lines().any(|l| l.starts_with("bootstrap") && l.contains("never")), "{out}");

    // The viewer is refused a write; the trail shows it, filtered by actor.
    let (ok, _, err) = run(&viewer, &["token", "create", "mine", "--role", "admin"]);
    assert!(!ok && err.contains("403"), "{err}");
    let (ok, out, err) = run(&viewer, &["audit", "--actor", "ci job"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("ci job (viewer)") && out.contains("refused") && out.contains("POST /api/v1/admin-tokens"),
        "{out}"
    );

    // Revoked (a name with a space travels percent-encoded): refused from then on.
    let (ok, out, err) = run(&admin, &["token", "revoke", "ci job"]);
    assert!(ok && out.contains("revoked ci job"), "{err}");
    let (ok, _, err) = run(&viewer, &["audit"]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, _) = run(&admin, &["audit", "--last", "1"]);
    assert!(ok && out.contains("bootstrap (admin)") && out.contains("-> /api/v1/admin-tokens/ci%20job"), "{out}");

    // Webhooks: a private address refused with the flag that allows it; a subscription's
    // secret printed once; listed; removed.
    let (ok, _, err) = run(&admin, &["webhook", "add", "local", "http://127.0.0.1:9/hook"]);
    assert!(!ok && err.contains("not a public address") && err.contains("--webhook-allow-private true"), "{err}");
    let (ok, out, err) = run(
        &admin,
        &["webhook", "add", "crm", "https://hooks.example.com/drover", "--type", "device.", "--type", "operation."],
    );
    assert!(ok, "{err}");
    assert!(out.trim().starts_with("whsec_") && err.contains("subscribed crm"), "{out} {err}");
    let (ok, out, err) = run(&admin, &["webhook", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("crm") && out.contains("enabled") && out.contains("[device., operation.]"), "{out}");
    assert!(!out.contains("whsec_"), "{out}");
    let (ok, _, err) = run(&admin, &["webhook", "deliveries", "crm"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&admin, &["webhook", "remove", "crm"]);
    assert!(ok && out.contains("removed crm"), "{err}");
    let (ok, _, err) = run(&admin, &["webhook", "enable", "crm"]);
    assert!(!ok && err.contains("404"), "{err}");
}

#[test]
fn users_from_the_command_line() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(data.path(), port);
    let admin = std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let server = format!("http://127.0.0.1:{port}");
    // The password on standard input, as a script pipes it (never an argument).
    let run = |token: &str, args: &[&str], stdin: &str| {
        let mut child = drover()
            .args(args)
            .env("DROVER_SERVER", &server)
            .env("DROVER_ADMIN_TOKEN", token)
            .env_remove("DROVER_PASSWORD")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let password = "a passphrase long enough\n";

    let (ok, _, err) = run(&admin, &["user", "add", "olive", "--role", "operator", "--group", "lab"], "short\n");
    assert!(!ok && err.contains("at least 12"), "{err}");
    let args = ["user", "add", "olive", "--role", "operator", "--group", "lab", "--operation", "DEVICE_RING"];
    let (ok, out, err) = run(&admin, &args, password);
    assert!(ok, "{err}");
    assert!(out.contains("added user olive (role operator, groups lab; operations DEVICE_RING)"), "{out}");
    let (ok, out, err) = run(&admin, &["user", "list"], "");
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("olive")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("operator") && line.contains("enabled") && line.contains("groups lab"), "{line}");

    // Logged in: the token alone on standard output; it says who it is.
    let (ok, _, err) = run("", &["login", "olive"], "wrong password!!\n");
    assert!(!ok && err.contains("401") && err.contains("unknown user or wrong password"), "{err}");
    let (ok, out, err) = run("", &["login", "olive", "--ttl", "1h"], password);
    assert!(ok, "{err}");
    let olive = out.trim().to_string();
    assert!(olive.starts_with("drv_user_") && err.contains("logged in as olive (role operator)"), "{out} {err}");
    // Scoped: the fleet-wide commands are refused with the reason.
    let (ok, _, err) = run(&olive, &["token", "list"], "");
    assert!(!ok && err.contains("403") && err.contains("scoped to groups [lab]"), "{err}");
    let (ok, out, err) = run(&admin, &["token", "list"], "");
    assert!(ok && out.contains("login of user olive"), "{out} {err}");

    // A scoped token from the command line.
    let (ok, out, err) =
        run(&admin, &["token", "create", "helpdesk", "--role", "operator", "--device-type", "android"], "");
    assert!(ok, "{err}");
    let helpdesk = out.trim().to_string();
    let (ok, _, err) = run(&helpdesk, &["audit"], "");
    assert!(!ok && err.contains("scoped to device types [android]"), "{err}");

    // Disabled: the login stops working; removed: gone.
    let (ok, out, err) = run(&admin, &["user", "set", "olive", "--disable", "--whole-fleet"], "");
    assert!(ok && out.contains("olive (role operator, disabled, whole fleet)"), "{out} {err}");
    let (ok, _, err) = run(&olive, &["devices", "list"], "");
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = run(&admin, &["user", "remove", "olive"], "");
    assert!(ok && out.contains("removed user olive"), "{err}");
}

/// `drover tenant`, and `--tenant` on tokens and enrollment tokens: an operator adds a
/// tenant and its admin token; that token makes enrollment tokens for its tenant only and
/// is refused the fleet-wide commands; an empty tenant is removed, one holding a token not.
#[test]
fn tenants_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(data.path(), port);
    let admin = std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let server = format!("http://127.0.0.1:{port}");
    let run = |token: &str, args: &[&str]| {
        let out = drover().args(args).env("DROVER_SERVER", &server).env("DROVER_ADMIN_TOKEN", token).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let (ok, _, err) = run(&admin, &["tenant", "add", "Acme"]);
    assert!(!ok && err.contains("lower-case"), "{err}");
    let (ok, out, err) = run(&admin, &["tenant", "add", "acme", "--description", "Acme Corp"]);
    assert!(ok && out.contains("added tenant acme"), "{out} {err}");
    let (ok, out, err) = run(&admin, &["tenant", "list"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("acme") && l.contains("Acme Corp")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("default")), "{out}");

    let (ok, out, err) = run(&admin, &["token", "create", "acme-admin", "--role", "admin", "--tenant", "acme"]);
    assert!(ok, "{err}");
    let acme = out.trim().to_string();
    let (ok, out, err) = run(&admin, &["token", "list"]);
    assert!(ok && out.lines().any(|l| l.starts_with("acme/acme-admin")), "{out} {err}");

    // The tenant's admin enrolls into its tenant, and nothing fleet-wide.
    let (ok, out, err) = run(&acme, &["devices", "enrollment-token", "android", "--uses", "3"]);
    assert!(ok && out.trim().starts_with("drv_enroll_"), "{out} {err}");
    assert!(err.contains("3 enrollment(s) of android devices into tenant acme"), "{err}");
    let (ok, _, err) = run(&acme, &["devices", "enrollment-token", "android", "--tenant", "default"]);
    assert!(!ok && err.contains("403") && err.contains("tenant `acme`"), "{err}");
    let (ok, _, err) = run(&acme, &["tenant", "list"]);
    assert!(!ok && err.contains("403") && err.contains("belongs to tenant `acme`"), "{err}");
    // Its fleet at a glance: its own devices (none yet), without the server's connections.
    let (ok, out, err) = run(&acme, &["fleet"]);
    assert!(ok && out.starts_with("devices 0, called in within 15 min 0\n"), "{out} {err}");

    // Its groups are named within it; an operator makes one in a tenant with --tenant.
    let (ok, out, err) = run(&acme, &["groups", "create", "lab"]);
    assert!(ok && out.contains("created group acme/lab"), "{out} {err}");
    let (ok, out, err) =
        run(&admin, &["groups", "create", "kiosks", "--tenant", "acme", "--query", r#"{"tags":["kiosk"]}"#]);
    assert!(ok && out.contains("created group acme/kiosks"), "{out} {err}");
    let (ok, out, err) = run(&acme, &["groups", "list"]);
    assert!(ok && out.lines().filter(|l| l.starts_with("acme/")).count() == 2, "{out} {err}");

    // Its artifacts are named within it; an operator uploads one into it with --tenant,
    // and the tenant's admin lists and removes it.
    let image = data.path().join("fw.bin");
    std::fs::write(&image, [7u8; 4096]).unwrap();
    let image = image.to_str().unwrap();
    let upload = ["artifact", "upload", image, "--name", "fw", "--image-version", "2.0", "--types", "esp8266"];
    let (ok, out, err) = run(&admin, &[&upload[..], &["--tenant", "acme"]].concat());
    assert!(ok && out.starts_with("acme/fw 2.0: 4096 bytes"), "{out} {err}");
    let (ok, _, err) = run(&acme, &[&upload[..], &["--tenant", "default"]].concat());
    assert!(!ok && err.contains("403"), "{err}");
    let (ok, out, err) = run(&acme, &["artifact", "list"]);
    assert!(ok && out.lines().any(|l| l.starts_with("acme/fw")), "{out} {err}");
    let (ok, _, err) = run(&admin, &["tenant", "remove", "acme"]);
    assert!(!ok && err.contains("1 artifact(s)"), "{err}");
    let (ok, out, err) = run(&acme, &["artifact", "remove", "fw", "2.0"]);
    assert!(ok && out.contains("removed fw 2.0"), "{out} {err}");

    let (ok, _, err) = run(&admin, &["tenant", "remove", "acme"]);
    assert!(!ok && err.contains("1 live admin token(s)"), "{err}");
    let (ok, _, err) = run(&admin, &["token", "revoke", "acme/acme-admin"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&admin, &["tenant", "remove", "acme"]);
    assert!(ok && out.contains("removed tenant acme"), "{out} {err}");
}

#[test]
fn policies_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(data.path(), port);
    let admin = std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let server = format!("http://127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let out = drover().args(args).env("DROVER_SERVER", &server).env("DROVER_ADMIN_TOKEN", &admin).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let file = data.path().join("baseline.json");
    let policy = |enabled: bool| {
        format!(
            r#"{{"name": "baseline", "priority": 3, "applies_to": {{"ownership": "COPE"}},
                 "profiles": {{"android": [{{"code": "CAMERA", "payload": {{"enabled": {enabled}}}}}]}}}}"#
        )
    };
    std::fs::write(&file, policy(false)).unwrap();
    let (ok, out, err) = run(&["policy", "apply", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("baseline: revision 1;") && out.contains("0 sent a new bundle"), "{out}");
    // Applied again with a change: the next revision.
    std::fs::write(&file, policy(true)).unwrap();
    let (ok, out, err) = run(&["policy", "apply", file.to_str().unwrap()]);
    assert!(ok && out.contains("baseline: revision 2;"), "{out} {err}");
    let (ok, out, _) = run(&["policy", "list"]);
    assert!(ok);
    let line = out.lines().find(|l| l.starts_with("baseline")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("active") && line.contains("android") && line.contains("COPE"), "{line}");
    // What `show` prints, `apply` takes back (unchanged: a revision with the same content).
    let (ok, shown, _) = run(&["policy", "show", "baseline"]);
    assert!(ok && shown.contains("\"revision\": 2"), "{shown}");
    std::fs::write(&file, &shown).unwrap();
    let (ok, out, err) = run(&["policy", "apply", file.to_str().unwrap()]);
    assert!(ok && out.contains("revision 3"), "{out} {err}");
    let (ok, out, _) = run(&["policy", "revisions", "baseline"]);
    assert!(ok && out.lines().count() == 3, "{out}");
    let (ok, out, err) = run(&["policy", "restore", "baseline", "1"]);
    assert!(ok && out.contains("baseline: restored, revision 4"), "{out} {err}");
    let (ok, out, err) = run(&["policy", "deactivate", "baseline"]);
    assert!(ok && out.contains("deactivated"), "{out} {err}");
    // A feature the plugin refuses: its message, and a failure exit.
    std::fs::write(&file, r#"{"name": "bad", "profiles": {"android": [{"code": "CAMERA", "payload": {}}]}}"#).unwrap();
    let (ok, _, err) = run(&["policy", "apply", file.to_str().unwrap()]);
    assert!(!ok && err.contains("profiles.android.CAMERA"), "{err}");
    let (ok, out, err) = run(&["policy", "remove", "baseline"]);
    assert!(ok && out.contains("removed baseline"), "{out} {err}");
}

/// One HTTP/1.1 request over a plain socket (a device's side of the conversation):
/// `(status, body)`.
fn request(port: u16, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = if token.is_empty() { String::new() } else { format!("Authorization: Bearer {token}\r\n") };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn enroll_android(port: u16, id: &str) -> String {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/enroll.json");
    let body = std::fs::read_to_string(fixture).unwrap().replace("354956090214718", id);
    let (status, answer) = request(port, "POST", "/agent/v1/android/enroll", "", &body);
    assert_eq!(status, 201, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[test]
fn devices_operations_and_groups_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(data.path(), port);
    let admin = std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let server = format!("http://127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let out = drover()
            .args(args)
            .env("DROVER_SERVER", &server)
            .env("DROVER_ADMIN_TOKEN", &admin)
            .env("DROVER_PROFILES", data.path().join("no-profiles.toml"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let json = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let (ok, out, err) = run(&all);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };

    // An import with an error: refused whole, the line named.
    let csv = data.path().join("devices.csv");
    std::fs::write(&csv, "device_type,device_id,name\nandroid,356000000000201,Front desk\nandroid,,Nobody\n").unwrap();
    let (ok, _, err) = run(&["devices", "import", csv.to_str().unwrap()]);
    assert!(!ok && err.contains("line 3") && err.contains("`device_id` is empty"), "{err}");
    std::fs::write(
        &csv,
        "device_type,device_id,name\nandroid,356000000000201,Front desk\nandroid,356000000000202,Dock\n",
    )
    .unwrap();
    let (ok, out, err) = run(&["devices", "import", csv.to_str().unwrap(), "--self-enroll"]);
    assert!(ok, "{err}");
    assert!(out.contains("2 rows, 2 new devices"), "{out}");
    let token = enroll_android(port, "356000000000201");

    // Listed, filtered, shown, tagged.
    let all = json(&["devices", "list"]);
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");
    let active = json(&["devices", "list", "--status", "active"]);
    assert_eq!(active["items"].as_array().unwrap().len(), 1, "{active}");
    let (ok, out, _) = run(&["devices", "tag", "android/356000000000201", "--add", "lobby", "--add", "floor-1"]);
    assert!(ok && out.contains("floor-1, lobby"), "{out}");
    let (ok, out, _) = run(&["devices", "tag", "android/356000000000201", "--remove", "floor-1"]);
    assert!(ok && out.trim().ends_with("tags: lobby"), "{out}");
    let tagged = json(&["devices", "list", "--tag", "lobby"]);
    assert_eq!(tagged["items"][0]["device_id"], "356000000000201", "{tagged}");
    let (ok, out, _) = run(&["devices", "list", "--search", "DOCK"]);
    assert!(ok && out.contains("356000000000202") && !out.contains("356000000000201"), "{out}");
    let shown = json(&["devices", "show", "android/356000000000201"]);
    assert_eq!(shown["status"], "active");
    let (ok, _, err) = run(&["devices", "show", "android-356000000000201"]);
    assert!(!ok && err.contains("TYPE/ID"), "{err}");

    // Groups.
    let (ok, out, err) = run(&["groups", "create", "floor1", "--description", "first floor"]);
    assert!(ok && out.contains("created group floor1"), "{err}");
    let (ok, out, _) = run(&["groups", "add", "floor1", "android/356000000000201"]);
    assert!(ok && out.contains("added 1"), "{out}");
    let groups = json(&["groups", "list"]);
    assert_eq!(groups["items"][0]["devices"], 1, "{groups}");
    let (ok, _, err) = run(&["groups", "create", "pixels", "--query", "{\"tags\": [\"lobby\"]}"]);
    assert!(ok, "{err}");
    assert_eq!(json(&["groups", "show", "pixels"])["devices"], 1);

    // An operation the plugin refuses: its message.
    let (ok, _, err) = run(&[
        "ops",
        "add",
        "NOTIFICATION",
        "--tag",
        "lobby",
        "--payload",
        r#"{"messageTitle": " ", "messageText": "x"}"#,
    ]);
    assert!(!ok && err.contains("`messageTitle` must be 1 to 256 characters"), "{err}");

    // An operation followed to the end by `ops watch` while the device polls.
    let added = json(&["ops", "add", "DEVICE_RING", "--device", "android/356000000000201"]);
    let activity = added["activity"]["id"].as_i64().unwrap();
    let watch = drover()
        .args(["ops", "watch", &activity.to_string(), "--timeout", "60s"])
        .env("DROVER_SERVER", &server)
        .env("DROVER_ADMIN_TOKEN", &admin)
        .env("DROVER_PROFILES", data.path().join("no-profiles.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let path = "/agent/v1/android/devices/356000000000201/pending-operations";
    let (status, got) = request(port, "PUT", path, &token, "[]");
    assert_eq!(status, 200, "{got}");
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    let op = &got[0];
    let listed = json(&["ops", "list", "--device", "android/356000000000201"]);
    assert_eq!(listed["items"][0]["state"], "IN_PROGRESS", "{listed}");
    let (ok, out, _) = run(&["ops", "list", "--device", "android/356000000000201"]);
    assert!(ok && out.lines().nth(1).is_some_and(|l| l.ends_with(" android/356000000000201")), "{out}");
    let report = serde_json::json!([{"id": op["id"], "code": op["code"], "type": op["type"], "status": "COMPLETED"}]);
    let (status, _) = request(port, "PUT", path, &token, &report.to_string());
    assert_eq!(status, 200);
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("activity {activity} finished: COMPLETED 1")), "{stdout}");
    let shown = json(&["ops", "show", &op["id"].to_string()]);
    assert_eq!(shown["state"], "COMPLETED");
    assert_eq!(shown["transitions"].as_array().unwrap().len(), 2, "{shown}");
    let (ok, out, _) = run(&["ops", "show", &op["id"].to_string()]);
    assert!(ok && out.contains("PENDING     -> IN_PROGRESS") && out.contains("delivery:poll"), "{out}");

    // A command superseded by a newer one (REPEATED) has ended: its watch ends too.
    let first = json(&["ops", "add", "DEVICE_MUTE", "--device", "android/356000000000202"]);
    json(&["ops", "add", "DEVICE_MUTE", "--device", "android/356000000000202"]);
    let first = first["activity"]["id"].as_i64().unwrap().to_string();
    let (ok, out, err) = run(&["ops", "watch", &first, "--timeout", "20s"]);
    assert!(ok && out.contains(&format!("activity {first} finished: REPEATED 1")), "{out} {err}");

    // Cancelled: one operation, then what is left of an activity.
    let added = json(&["ops", "add", "DEVICE_LOCK", "--group", "floor1", "--group", "pixels"]);
    let activity = added["activity"]["id"].as_i64().unwrap();
    let pending = json(&["ops", "list", "--activity", &activity.to_string(), "--state", "PENDING"]);
    let id = pending["items"][0]["id"].as_i64().unwrap();
    let (ok, out, _) = run(&["ops", "cancel", &id.to_string()]);
    assert!(ok && out.contains("cancelled 1"), "{out}");
    let (ok, out, _) = run(&["ops", "cancel", &activity.to_string(), "--activity"]);
    assert!(ok && out.contains("cancelled 0"), "{out}");

    // The fleet at a glance.
    let fleet = json(&["fleet"]);
    let total: i64 = fleet["devices"].as_array().unwrap().iter().map(|d| d["count"].as_i64().unwrap()).sum();
    assert_eq!(total, 2, "{fleet}");
    let (ok, out, _) = run(&["fleet"]);
    assert!(ok && out.starts_with("devices 2"), "{out}");

    // Removed; the group goes too.
    let (ok, out, _) = run(&["devices", "remove", "android/356000000000202"]);
    assert!(ok && out.contains("removed android/356000000000202"), "{out}");
    let (ok, out, _) = run(&["groups", "remove", "floor1"]);
    assert!(ok && out.contains("deleted group floor1"), "{out}");

    // Existing commands print JSON too.
    let tokens = json(&["token", "list"]);
    assert_eq!(tokens["items"][0]["name"], "bootstrap", "{tokens}");
    let plugins = json(&["plugin", "list"]);
    assert!(plugins["items"].as_array().unwrap().iter().any(|p| p["name"] == "android"), "{plugins}");

    // A profile file stands in for the flags; a profile that is not there is named.
    let profiles = data.path().join("profiles.toml");
    std::fs::write(&profiles, format!("[lab]\nserver = \"{server}\"\ntoken = \"{admin}\"\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&profiles, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = drover().args(["fleet", "--profile", "lab"]).env("DROVER_PROFILES", &profiles).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "a private profile file gets no warning");
    let out = drover().args(["fleet", "--profile", "prod"]).env("DROVER_PROFILES", &profiles).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no profile [prod]"));

    // Shell completions.
    let out = drover().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_drover()"));

    // A LwM2M device's pre-shared key: given with the admin's key, shown once; an Android
    // device gets none.
    std::fs::write(&csv, "device_type,device_id\nlwm2m,urn:imei:490154203237518\n").unwrap();
    assert!(run(&["devices", "import", csv.to_str().unwrap()]).0);
    let key = "00112233445566778899aabbccddeeff";
    let (ok, out, err) =
        run(&["devices", "psk", "lwm2m/urn:imei:490154203237518", "--identity", "board-7", "--key", key]);
    assert!(ok && out.contains("identity: board-7") && out.contains(key), "{out}{err}");
    let (ok, _, err) = run(&["devices", "psk", "android/356000000000201"]);
    assert!(!ok && err.contains("do not talk CoAP"), "{err}");
}

#[test]
fn analytics_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(data.path(), port);
    let admin = std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_string();
    let server = format!("http://127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let out = drover()
            .args(args)
            .env("DROVER_SERVER", &server)
            .env("DROVER_ADMIN_TOKEN", &admin)
            .env("DROVER_PROFILES", data.path().join("no-profiles.toml"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let id = "356000000000301";
    let token = enroll_android(port, id);
    let (ok, out, err) = run(&[
        "alert-rules",
        "add",
        r#"{"name": "yard", "kind": "geofence", "applies_to": {"device_types": ["android"]},
            "shape": {"circle": {"lat": 1.0, "lon": 1.0, "radius_m": 100}}}"#,
    ]);
    assert!(ok && out.contains("added geofence rule yard (type android)"), "{out} {err}");
    let file = data.path().join("hot.json");
    std::fs::write(&file, r#"{"name": "hot", "kind": "threshold", "metric": "temperature", "above": 40}"#).unwrap();
    let (ok, out, err) = run(&["alert-rules", "add", &format!("@{}", file.display())]);
    assert!(ok && out.contains("added threshold rule hot (every device)"), "{out} {err}");
    let (ok, _, err) = run(&["alert-rules", "add", r#"{"name": "bad", "kind": "threshold", "metric": "t"}"#]);
    assert!(!ok && err.contains("one of `above` or `below`"), "{err}");
    let (ok, out, _) = run(&["alert-rules", "list"]);
    assert!(ok && out.lines().count() == 3 && out.contains("temperature"), "{out}");

    // The phone reports, inside the fence and hot.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // Three points in one minute's bucket, two minutes ago: a start near a minute's end
    // would split them over two buckets.
    let start = (now - 120_000) / 60_000 * 60_000 + 1_000;
    for (k, t) in [35.0, 38.5, 41.0].iter().enumerate() {
        let body = format!(
            r#"{{"timestamp": {}, "temperature": {t}, "location": {{"lat": 1.0, "lon": 1.0}}}}"#,
            start + k as i64 * 1000
        );
        let (status, answer) =
            request(port, "POST", &format!("/agent/v1/android/devices/{id}/telemetry"), &token, &body);
        assert_eq!(status, 200, "{answer}");
    }
    let (ok, out, err) = run(&[
        "telemetry",
        "series",
        &format!("android/{id}"),
        "temperature",
        "--resolution",
        "minute",
        "--since",
        "1h",
    ]);
    assert!(ok, "{err}");
    let row = out.lines().nth(1).unwrap_or_else(|| panic!("{out}"));
    // count 3, min 35, mean 38.167, max 41, last 41
    assert!(row.contains(" 3 ") && row.contains("35") && row.contains("38.167") && row.ends_with("41"), "{out}");
    let (ok, out, _) = run(&["telemetry", "metric", "temperature", "--type", "android"]);
    assert!(ok && out.lines().nth(1).is_some_and(|l| l.contains(" 1 ") && l.contains(" 3 ")), "{out}");

    let (ok, out, _) = run(&["alerts", "list", "--state", "open"]);
    assert!(ok && out.lines().count() == 3, "the fence and the threshold: {out}");
    let hot = out.lines().find(|l| l.contains("threshold")).unwrap_or_else(|| panic!("{out}"));
    assert!(hot.contains(&format!("android/{id}")) && hot.contains("temperature") && hot.contains("41"), "{hot}");
    let alert = hot.split_whitespace().next().unwrap().to_string();
    let (ok, out, _) = run(&["alerts", "show", &alert]);
    assert!(ok && out.contains("\"above\": 40"), "{out}");
    let (ok, out, err) = run(&["alerts", "resolve", &alert]);
    assert!(ok && out.contains("resolved"), "{out} {err}");
    let (ok, _, err) = run(&["alerts", "resolve", &alert]);
    assert!(!ok && err.contains("already resolved"), "{err}");
    let (ok, out, err) = run(&["alert-rules", "remove", "yard"]);
    assert!(ok && out.contains("removed yard; 1 open alerts resolved"), "{out} {err}");
    let (ok, out, _) = run(&["alerts", "list", "--state", "open"]);
    assert!(ok && out.lines().count() == 1, "{out}");
}
