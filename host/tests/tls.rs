//! TLS on every listener Drover owns, checked with clients that are not Drover's: curl,
//! `openssl s_client`, mosquitto's clients and a mosquitto broker with a TLS listener.
//! Certificates for the operator's case are made with the openssl command line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn drover() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
    for v in [
        "DROVER_CONFIG",
        "DROVER_HTTP_ADDR",
        "DROVER_DATA_DIR",
        "DROVER_ADMIN_TOKEN",
        "DROVER_DATABASE_URL",
        "DROVER_SECRET_KEY",
        "DROVER_BROKER",
        "DROVER_PLAINTEXT",
        "DROVER_TLS_CERT",
        "DROVER_TLS_KEY",
        "DROVER_CACERT",
        "DROVER_SERVER",
    ] {
        c.env_remove(v);
    }
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp() -> String {
    format!("127.0.0.1:{}", std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// Whether `program` runs here (`arg` makes it print and exit). A test that needs it is
/// skipped without it, except in CI, which installs it.
fn present(program: &str, arg: &str) -> bool {
    let here = Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !here {
        assert!(std::env::var_os("CI").is_none(), "CI must install {program}");
        eprintln!("skipped: {program} missing");
    }
    here
}

/// Whether the third-party tools these tests drive are here (CI installs them).
fn tools() -> bool {
    let here = ["curl", "openssl", "mosquitto_sub", "mosquitto_pub"]
        .iter()
        .all(|t| Command::new(t).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok());
    if !here {
        assert!(std::env::var_os("CI").is_none(), "curl, openssl or mosquitto clients missing");
        eprintln!("skipped: curl, openssl or mosquitto clients missing");
    }
    here
}

struct Served {
    child: Child,
    http: u16,
    mqtt: u16,
    data: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("log")).unwrap_or_default()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token")).unwrap().trim().to_string()
    }

    /// An admin-API call with the bootstrap token, over the server's own TLS (its
    /// development certificate trusted): curl's exit code and the body.
    fn api(&self, method: &str, path: &str, body: Option<&str>) -> (i32, String) {
        let ca = self.data.join("tls/cert.pem");
        let admin = format!("Authorization: Bearer {}", self.token());
        let mut args = vec!["--cacert", ca.to_str().unwrap(), "-X", method, "-H", &admin];
        if let Some(b) = body {
            args.extend(["-d", b]);
        }
        curl(&format!("https://127.0.0.1:{}{path}", self.http), &args)
    }
}

/// `drover serve` with `args`, its log in `data/log`, once its HTTP port takes connections.
fn serve(data: &Path, args: &[&str]) -> Served {
    let (http, mqtt) = (free_port(), free_port());
    let log = std::fs::File::create(data.join("log")).unwrap();
    let child = drover()
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--http-addr", &format!("127.0.0.1:{http}"), "--mqtt-addr", &format!("127.0.0.1:{mqtt}")])
        .args(["--coap-addr", &free_udp(), "--coaps-addr", "127.0.0.1:0"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = Served { child, http, mqtt, data: data.to_path_buf() };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", http)).is_ok() {
            return served;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("drover serve did not listen on {http} within 60 s: {}", served.log());
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// Check, with openssl, that `cert` names `subject` (e.g. `CN=SCEP-0001`) and is a client
/// certificate the device CA (`ca`) issued.
fn issued(cert: &Path, ca: &Path, subject: &str) {
    let o = run(Command::new("openssl").args(["x509", "-noout", "-subject", "-in"]).arg(cert));
    assert!(text(&o).replace(" = ", "=").contains(subject), "not issued to {subject}: {}", text(&o));
    let o = run(Command::new("openssl").args(["verify", "-purpose", "sslclient", "-CAfile"]).arg(ca).arg(cert));
    assert!(o.status.success(), "{}", text(&o));
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// curl's exit code and body for `url`, with `extra` arguments.
fn curl(url: &str, extra: &[&str]) -> (i32, String) {
    let o = run(Command::new("curl").args(["-s", "--max-time", "10"]).args(extra).arg(url));
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A self-signed certificate for 127.0.0.1 and localhost, made by openssl.
fn openssl_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    let o = run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(o.status.success(), "{}", text(&o));
    (cert, key)
}

/// The SHA-256 fingerprint openssl computes for a PEM certificate.
fn openssl_fingerprint(cert: &Path) -> String {
    let o = run(Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(cert));
    let out = String::from_utf8_lossy(&o.stdout);
    out.trim().rsplit('=').next().unwrap().to_string()
}

/// What `openssl s_client` sees at `port` when it trusts `ca`.
fn s_client(port: u16, ca: &Path) -> String {
    let o = run(Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-verify_return_error", "-CAfile"])
        .arg(ca));
    text(&o)
}

#[test]
fn the_default_serves_tls_with_a_development_certificate_to_every_client() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--mqtt-events", "true"]);
    let cert = dir.path().join("tls/cert.pem");
    let url = format!("https://127.0.0.1:{}/healthz", server.http);

    // curl trusting the development certificate: served over TLS.
    let (code, body) = curl(&url, &["--cacert", cert.to_str().unwrap()]);
    assert_eq!(code, 0, "{body} {}", server.log());
    assert!(body.contains(r#""status":"ok""#), "{body}");
    // Not trusting it: refused by curl's own verification (exit 60).
    assert_eq!(curl(&url, &[]).0, 60);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let (code, body) = curl(&format!("http://127.0.0.1:{}/healthz", server.http), &[]);
    assert_ne!(code, 0, "plaintext was answered: {body}");

    // openssl verifies the chain, and the fingerprint Drover logged is the certificate's.
    let seen = s_client(server.http, &cert);
    assert!(seen.contains("Verify return code: 0 (ok)"), "{seen}");
    let fingerprint = openssl_fingerprint(&cert);
    assert!(server.log().contains(&fingerprint), "fingerprint {fingerprint} not logged: {}", server.log());

    // The embedded broker: MQTT over TLS with mosquitto's clients. An admin token reads
    // the event feed; an event made over HTTPS arrives.
    let token = server.token();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &server.mqtt.to_string(), "--cafile", cert.to_str().unwrap()])
        .args(["-u", "admin", "-P", &token, "-t", "drover-events/admin.action", "-C", "1", "-W", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Settle the subscription, then make the event (a group) until it is heard.
    std::thread::sleep(Duration::from_millis(700));
    let (code, body) = curl(
        &format!("https://127.0.0.1:{}/api/v1/groups", server.http),
        &[
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-d",
            r#"{"name":"tls-lab"}"#,
        ],
    );
    assert_eq!(code, 0, "{body}");
    let heard = sub.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&heard.stdout).contains("/api/v1/groups"), "{}", text(&heard));
    // Plain MQTT to the TLS listener is not served.
    let plain = run(Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &server.mqtt.to_string(), "-u", "admin", "-P", &token])
        .args(["-t", "drover-events/x", "-m", "x", "-q", "1"]));
    assert!(!plain.status.success(), "plain MQTT was served: {}", text(&plain));

    // The admin CLI trusts the development certificate of the data directory it is
    // pointed at, and refuses the server when told to trust another CA.
    let cli = |envs: &[(&str, &str)]| {
        let mut c = drover();
        c.args(["fleet", "--output", "json"])
            .env("DROVER_SERVER", format!("https://127.0.0.1:{}", server.http))
            .env("DROVER_ADMIN_TOKEN", &token);
        for (k, v) in envs {
            c.env(k, v);
        }
        run(&mut c)
    };
    let ok = cli(&[("DROVER_DATA_DIR", dir.path().to_str().unwrap())]);
    assert!(ok.status.success(), "{}", text(&ok));
    let other = tempfile::tempdir().unwrap();
    let (stranger, _) = openssl_certificate(other.path(), "stranger");
    let refused = cli(&[("DROVER_CACERT", stranger.to_str().unwrap())]);
    assert!(!refused.status.success(), "{}", text(&refused));
}

#[test]
fn operator_certificates_are_reloaded_without_a_restart() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = openssl_certificate(dir.path(), "a");
    let (b_cert, b_key) = openssl_certificate(dir.path(), "b");
    let (cert, key) = (dir.path().join("served.pem"), dir.path().join("served.key"));
    std::fs::copy(&a_cert, &cert).unwrap();
    std::fs::copy(&a_key, &key).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = serve(
        &data,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--http-header-timeout-secs", "1"],
    );
    let url = format!("https://127.0.0.1:{}/healthz", server.http);
    assert_eq!(curl(&url, &["--cacert", a_cert.to_str().unwrap()]).0, 0, "{}", server.log());
    assert_eq!(curl(&url, &["--cacert", b_cert.to_str().unwrap()]).0, 60);

    // A renewal writes the certificate, then the key: in between, the pair does not
    // match and the old certificate goes on being served.
    std::fs::copy(&b_cert, &cert).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(curl(&url, &["--cacert", a_cert.to_str().unwrap()]).0, 0, "{}", server.log());
    assert!(server.log().contains("does not load"), "{}", server.log());
    std::fs::copy(&b_key, &key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&url, &["--cacert", b_cert.to_str().unwrap()]).0 != 0 {
        assert!(Instant::now() < deadline, "the new certificate was not served: {}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s_client(server.http, &b_cert).contains("Verify return code: 0 (ok)"));

    // A client that opens a connection and never starts the handshake is closed after the
    // header timeout (1 s here), rather than holding its slot for ever.
    use std::io::Read;
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", server.http)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let got = idle.read(&mut [0u8; 16]);
    assert!(matches!(got, Ok(0)) || got.is_err() && started.elapsed() < Duration::from_secs(9), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(9), "the idle handshake was not closed");
}

#[test]
fn a_mismatched_or_half_given_certificate_is_refused_at_start_by_name() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, _) = openssl_certificate(dir.path(), "a");
    let (_, b_key) = openssl_certificate(dir.path(), "b");
    let o = run(drover()
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--tls-cert", a_cert.to_str().unwrap(), "--tls-key", b_key.to_str().unwrap()]));
    assert!(!o.status.success());
    assert!(text(&o).contains("--tls-key"), "{}", text(&o));
    let o = run(drover()
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--tls-cert", a_cert.to_str().unwrap()]));
    assert!(!o.status.success());
    assert!(text(&o).contains("--tls-cert needs --tls-key"), "{}", text(&o));
}

/// An external broker (mosquitto) that accepts MQTT over TLS only.
struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn drover_speaks_tls_to_an_external_broker() {
    if !tools() {
        return;
    }
    if !present("mosquitto", "-h") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A CA and the broker's certificate signed by it, as an operator's PKI has them.
    let (ca, cert, key) = (dir.path().join("ca.pem"), dir.path().join("broker.pem"), dir.path().join("broker.key"));
    let ca_key = dir.path().join("ca.key");
    let csr = dir.path().join("broker.csr");
    let ext = dir.path().join("ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    for args in [
        format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=lab-ca -keyout {} -out {}",
            ca_key.display(),
            ca.display()
        ),
        format!(
            "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=broker -keyout {} -out {}",
            key.display(),
            csr.display()
        ),
        format!(
            "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 2 -extfile {} -out {}",
            csr.display(),
            ca.display(),
            ca_key.display(),
            ext.display(),
            cert.display()
        ),
    ] {
        let o = run(Command::new("openssl").args(args.split(' ')));
        assert!(o.status.success(), "openssl {args}: {}", text(&o));
    }
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            // `user root`: run as root (CI), mosquitto would otherwise drop to its own user,
            // which cannot read the key in this test's private directory.
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\ncertfile {}\nkeyfile {}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let _broker = Mosquitto(Command::new("mosquitto").arg("-c").arg(&conf).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = serve(
        &data,
        &[
            "--plaintext",
            "true",
            "--broker",
            &format!("mqtts://127.0.0.1:{port}"),
            "--broker-ca",
            ca.to_str().unwrap(),
            "--mqtt-events",
            "true",
        ],
    );
    // What Drover publishes reaches a subscriber of that broker over TLS.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile", ca.to_str().unwrap()])
        .args(["-t", "drover-events/admin.action", "-C", "1", "-W", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let token = server.token();
    let (code, body) = curl(
        &format!("http://127.0.0.1:{}/api/v1/groups", server.http),
        &["-H", &format!("Authorization: Bearer {token}"), "-d", r#"{"name":"over-tls"}"#],
    );
    assert_eq!(code, 0, "{body}");
    let heard = sub.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&heard.stdout).contains("/api/v1/groups"), "{} {}", text(&heard), server.log());

    drop(server);

    // Trusting another CA, Drover does not talk to that broker, and says why.
    let (stranger, _) = openssl_certificate(dir.path(), "stranger");
    let data = dir.path().join("data2");
    std::fs::create_dir(&data).unwrap();
    let broker = format!("mqtts://127.0.0.1:{port}");
    let server = serve(&data, &["--plaintext", "true", "--broker", &broker, "--broker-ca", stranger.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("cannot reach the broker") {
        assert!(Instant::now() < deadline, "no word of the refused certificate: {}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.log().contains("certificate"), "{}", server.log());
}

/// A JSON field of curl's answer, as a string.
fn field(body: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    match &v[name] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A key and a CSR for `cn`, made by openssl as a device would.
fn openssl_csr(dir: &Path, cn: &str, name: &str) -> (PathBuf, PathBuf) {
    let (key, csr) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.csr")));
    let o = run(Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    assert!(o.status.success(), "{}", text(&o));
    (key, csr)
}

/// A PostgreSQL schema of this test's own on the server `DROVER_TEST_POSTGRES_URL` names
/// (made and dropped with psql), as the URL `--database-url` takes.
struct PgSchema {
    server: String,
    schema: String,
}

impl PgSchema {
    fn new() -> Option<PgSchema> {
        let Ok(server) = std::env::var("DROVER_TEST_POSTGRES_URL") else {
            eprintln!("note: the PostgreSQL case was SKIPPED: set DROVER_TEST_POSTGRES_URL to run it");
            return None;
        };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let schema = format!("drover_tls_{}_{nanos}", std::process::id());
        let o = run(Command::new("psql").arg(&server).args(["-q", "-c", &format!("CREATE SCHEMA {schema}")]));
        assert!(o.status.success(), "psql: {}", text(&o));
        Some(PgSchema { server, schema })
    }

    fn url(&self) -> String {
        let sep = if self.server.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.server, self.schema)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = run(Command::new("psql").arg(&self.server).args([
            "-q",
            "-c",
            &format!("DROP SCHEMA {} CASCADE", self.schema),
        ]));
    }
}

#[test]
fn device_certificates_on_sqlite() {
    device_certificates_from_openssl_csrs_serve_mtls_on_http_and_mqtt_until_revoked(&[]);
}

#[test]
fn device_certificates_on_postgres() {
    if let Some(pg) = PgSchema::new() {
        device_certificates_from_openssl_csrs_serve_mtls_on_http_and_mqtt_until_revoked(&["--database-url", &pg.url()]);
    }
}

fn device_certificates_from_openssl_csrs_serve_mtls_on_http_and_mqtt_until_revoked(database: &[&str]) {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = serve(&data, database);
    let ca = data.join("tls/cert.pem");
    let ca = ca.to_str().unwrap();
    let base = format!("https://127.0.0.1:{}", server.http);
    let api = |method: &str, path: &str, body: Option<&str>| server.api(method, path, body);

    // A one-use enrollment token is the challenge of a first certificate for CN CERT-0001.
    let (code, body) = api("POST", "/api/v1/enrollment-tokens", Some(r#"{"device_type":"android","uses":1}"#));
    assert_eq!(code, 0, "{body}");
    let challenge = field(&body, "token");
    let (key, csr) = openssl_csr(dir.path(), "CERT-0001", "dev");
    let cert = dir.path().join("dev.pem");
    let ask = |csr: &Path, auth: &[&str], out: &Path| {
        let data = format!("@{}", csr.display());
        let mut args = vec!["--cacert", ca, "-o", out.to_str().unwrap(), "-w", "%{http_code}"];
        args.extend(auth);
        args.extend(["--data-binary", &data]);
        let o = run(Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .args(&args)
            .arg(format!("{base}/agent/v1/android/certificate")));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let challenge_header = format!("Authorization: Bearer {challenge}");
    assert_eq!(
        ask(&csr, &["-H", &challenge_header], &cert),
        "201",
        "{}",
        std::fs::read_to_string(&cert).unwrap_or_default()
    );
    // The token is used up: it claims no second identity.
    let (_, csr2) = openssl_csr(dir.path(), "CERT-0002", "other");
    let refused = dir.path().join("refused");
    assert_eq!(ask(&csr2, &["-H", &challenge_header], &refused), "401");

    // openssl checks the certificate against the device CA the API publishes, and reads
    // the identity Drover wrote into it.
    let (code, device_ca) = api("GET", "/api/v1/device-ca", None);
    assert_eq!(code, 0);
    let ca_file = dir.path().join("device-ca.pem");
    std::fs::write(&ca_file, device_ca).unwrap();
    let o = run(Command::new("openssl").args(["verify", "-purpose", "sslclient", "-CAfile"]).arg(&ca_file).arg(&cert));
    assert!(o.status.success(), "{}", text(&o));
    let o =
        run(Command::new("openssl").args(["x509", "-noout", "-subject", "-ext", "subjectAltName", "-in"]).arg(&cert));
    let shown = text(&o).replace(" = ", "=");
    assert!(shown.contains("CN=CERT-0001") && shown.contains("urn:drover:device:android:CERT-0001"), "{shown}");

    // mTLS on HTTP: the device polls with its certificate and no token, and gets what an
    // admin queued.
    let (code, body) = api(
        "POST",
        "/api/v1/operations",
        Some(r#"{"code":"DEVICE_RING","targets":{"devices":[{"type":"android","id":"CERT-0001"}]}}"#),
    );
    assert_eq!(code, 0, "{body}");
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let poll = |extra: &[&str]| {
        let mut args = vec!["--cacert", ca, "-X", "PUT", "-d", "[]", "-w", "\n%{http_code}"];
        args.extend(extra);
        curl(&format!("{base}/agent/v1/android/devices/CERT-0001/pending-operations"), &args)
    };
    let (code, body) = poll(&["--cert", cert_s, "--key", key_s]);
    assert_eq!(code, 0);
    assert!(body.ends_with("200") && body.contains("DEVICE_RING"), "{body}");
    assert!(poll(&[]).1.ends_with("401"));
    // A certificate from another CA does not get through the handshake.
    let (stranger, stranger_key) = openssl_certificate(dir.path(), "stranger");
    let (code, _) = poll(&["--cert", stranger.to_str().unwrap(), "--key", stranger_key.to_str().unwrap()]);
    assert_ne!(code, 0, "a certificate from another CA was accepted");

    // Renewal: with its current certificate, the device gets a new one for its own CN only.
    let (key2, csr2) = openssl_csr(dir.path(), "CERT-0001", "renewed");
    let renewed = dir.path().join("renewed.pem");
    assert_eq!(ask(&csr2, &["--cert", cert_s, "--key", key_s], &renewed), "201");
    let (_, csr3) = openssl_csr(dir.path(), "SOMEONE-ELSE", "else");
    assert_eq!(ask(&csr3, &["--cert", cert_s, "--key", key_s], &refused), "403");
    let (code, list) = api("GET", "/api/v1/devices/android/CERT-0001/certificates", None);
    assert_eq!(code, 0);
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    // Both issues are in the event log, each saying how it was asked for.
    let (code, events) = api("GET", "/api/v1/events?type=device.certificate_issued", None);
    assert_eq!(code, 0);
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    let by: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["data"]["by"].as_str().unwrap()).collect();
    assert_eq!(by, ["enrollment_token", "renewal"], "{events}");

    // mTLS on MQTT: mosquitto's client connects with the certificate and no password.
    let mqtt = server.mqtt.to_string();
    let mqtt_args = |c: &str, k: &str| {
        vec!["-h", "127.0.0.1", "-p", &mqtt, "--cafile", ca, "--cert", c, "--key", k]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let mut held = Command::new("mosquitto_sub")
        .args(mqtt_args(cert_s, key_s))
        .args(["-i", "held", "-t", "drover/android/CERT-0001/operations"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(held.try_wait().unwrap().is_none(), "the certificate's MQTT session was refused");
    let publish = |c: &str, k: &str, topic: &str| {
        run(Command::new("mosquitto_pub").args(mqtt_args(c, k)).args(["-t", topic, "-m", "{}", "-q", "1"]))
    };
    let ok = publish(cert_s, key_s, "drover/android/CERT-0001/telemetry");
    assert!(ok.status.success(), "{}", text(&ok));

    // Revoked: the first certificate is refused at its next request and connection, and
    // the session it holds ends; the renewed one still works.
    // The list is newest first: the first certificate issued is the last.
    let first_serial = list.last().unwrap()["serial"].as_str().unwrap().to_string();
    let (code, body) =
        api("POST", &format!("/api/v1/devices/android/CERT-0001/certificates/{first_serial}/revoke"), None);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains(r#""revoked":1"#), "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the revoked certificate's MQTT session is still open");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(poll(&["--cert", cert_s, "--key", key_s]).1.ends_with("401"));
    assert!(!publish(cert_s, key_s, "drover/android/CERT-0001/telemetry").status.success());
    let renewed_s = renewed.to_str().unwrap();
    let key2_s = key2.to_str().unwrap();
    assert!(poll(&["--cert", renewed_s, "--key", key2_s]).1.ends_with("200"));
    assert!(publish(renewed_s, key2_s, "drover/android/CERT-0001/telemetry").status.success());
    // The admin CLI shows the same: one revoked, one live.
    let shown = run(drover()
        .args(["devices", "certificates", "android/CERT-0001"])
        .env("DROVER_SERVER", &base)
        .env("DROVER_ADMIN_TOKEN", server.token())
        .env("DROVER_DATA_DIR", &data));
    let out = text(&shown);
    assert!(shown.status.success() && out.contains(&first_serial), "{out}");
    assert!(out.contains("revoked") && out.contains("live"), "{out}");
    // So does the console's device page, over HTTPS with a session cookie.
    let jar = dir.path().join("cookies");
    let jar_s = jar.to_str().unwrap();
    let login = format!("token={}", server.token());
    let (code, _) = curl(&format!("{base}/console/login"), &["--cacert", ca, "-c", jar_s, "-d", &login]);
    assert_eq!(code, 0);
    let (code, page) = curl(&format!("{base}/console/devices/android/CERT-0001"), &["--cacert", ca, "-b", jar_s]);
    assert_eq!(code, 0);
    assert!(page.contains(&first_serial) && page.contains(r#"id="certificates""#), "{page}");
    assert!(page.contains(&format!("certificates/{}/revoke", list[0]["serial"].as_str().unwrap())), "{page}");
    // A certificate speaks for its own device only: another's topics are denied (mosquitto
    // says so), and so is a user name naming another device.
    let other = run(Command::new("mosquitto_sub").args(mqtt_args(renewed_s, key2_s)).args([
        "-t",
        "drover/android/OTHER/operations",
        "-C",
        "1",
        "-W",
        "3",
    ]));
    assert!(text(&other).contains("denied"), "{}", text(&other));
    let posing = run(Command::new("mosquitto_pub").args(mqtt_args(renewed_s, key2_s)).args([
        "-u",
        "android/OTHER",
        "-t",
        "drover/android/OTHER/telemetry",
        "-m",
        "{}",
        "-q",
        "1",
    ]));
    assert!(!posing.status.success(), "{}", text(&posing));
}

#[test]
fn a_trusted_proxy_forwards_the_client_certificate_and_no_one_else_can() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // TLS is terminated by a proxy on this host: Drover serves plain HTTP behind it.
    let run_server = |name: &str, extra: &[&str]| {
        let data = dir.path().join(name);
        std::fs::create_dir(&data).unwrap();
        let mut args = vec!["--plaintext", "true"];
        args.extend(extra);
        serve(&data, &args)
    };
    let behind = run_server("behind", &["--trusted-proxies", "10.0.0.0/8,127.0.0.1/32"]);
    let open = run_server("open", &[]);
    for server in [&behind, &open] {
        let base = format!("http://127.0.0.1:{}", server.http);
        let admin = format!("Authorization: Bearer {}", server.token());
        let (_, body) = curl(
            &format!("{base}/api/v1/enrollment-tokens"),
            &["-H", &admin, "-d", r#"{"device_type":"android","uses":1}"#],
        );
        let challenge = format!("Authorization: Bearer {}", field(&body, "token"));
        let (_, csr) = openssl_csr(dir.path(), "PROXY-01", "proxied");
        let cert = dir.path().join("proxied.pem");
        let (code, _) = curl(
            &format!("{base}/agent/v1/android/certificate"),
            &["-H", &challenge, "--data-binary", &format!("@{}", csr.display()), "-o", cert.to_str().unwrap()],
        );
        assert_eq!(code, 0);
        // The leaf, as a proxy forwards it: RFC 9440's byte sequence, and nginx's escaped PEM.
        let pem = std::fs::read_to_string(&cert).unwrap();
        let leaf = &pem[..pem.find("-----END CERTIFICATE-----").unwrap() + 25];
        let der = run(Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert)).stdout;
        use base64::Engine;
        let rfc9440 = format!("Client-Cert: :{}:", base64::engine::general_purpose::STANDARD.encode(&der));
        let nginx = format!(
            "X-SSL-Client-Cert: {}",
            percent_encoding::utf8_percent_encode(leaf, percent_encoding::NON_ALPHANUMERIC)
        );
        let poll = |header: &str| {
            curl(
                &format!("{base}/agent/v1/android/devices/PROXY-01/pending-operations"),
                &["-X", "PUT", "-d", "[]", "-w", "\n%{http_code}", "-H", header],
            )
            .1
        };
        let trusted = std::ptr::eq(server, &behind);
        for header in [&rfc9440, &nginx] {
            let got = poll(header);
            assert_eq!(got.ends_with("200"), trusted, "{header}: {got}");
            if !trusted {
                assert!(got.ends_with("401"), "{got}");
            }
        }
    }
}

/// A fixture of the Windows plugin: a request as Windows' enrollment client sends it.
fn windows_fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../plugins/windows/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// What xmllint's XPath gives for `xpath` in `xml` (namespaces by `local-name()`).
fn xpath(xml: &str, xpath: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("xmllint")
        .args(["--xpath", xpath, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "xmllint --xpath {xpath}: {}\n{xml}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Windows' enrollment (MS-MDE2) end to end with clients that are not Drover's: curl
/// speaks the three SOAP services as Windows does, openssl makes the device's RSA key and
/// PKCS#10 request and checks the certificate that comes back, xmllint reads every answer.
/// The certificate then opens an OMA-DM session at the management URL the provisioning
/// document gave, over mTLS and with no token.
#[test]
fn windows_enrolls_through_ms_mde2_and_is_managed_with_its_certificate() {
    if !tools() {
        return;
    }
    if !present("xmllint", "--version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = serve(&data, &[]);
    let ca = data.join("tls/cert.pem");
    let ca = ca.to_str().unwrap();
    let base = format!("https://127.0.0.1:{}", server.http);
    let api = |method: &str, path: &str, body: Option<&str>| server.api(method, path, body);
    // SOAP to `url`: the answer's body and HTTP status.
    let soap = |url: &str, body: &str| {
        let (code, out) = curl(
            url,
            &[
                "--cacert",
                ca,
                "-H",
                "Content-Type: application/soap+xml; charset=utf-8",
                "--data-binary",
                body,
                "-w",
                "\n%{http_code}",
            ],
        );
        assert_eq!(code, 0, "{url}: {out}");
        let (body, status) = out.rsplit_once('\n').unwrap();
        (status.to_string(), body.to_string())
    };
    let local = |name: &str| format!("string(//*[local-name()='{name}'])");

    // Discovery: Windows checks the URL answers, then asks where to enroll.
    let discovery = format!("{base}/agent/v1/windows/enroll/discovery");
    let (code, out) = curl(&discovery, &["--cacert", ca, "-w", "%{http_code}"]);
    assert_eq!((code, out.as_str()), (0, "200"));
    let (status, answer) = soap(&discovery, &windows_fixture("mde2-discover.xml"));
    assert_eq!(status, "200", "{answer}");
    assert_eq!(xpath(&answer, &local("AuthPolicy")), "OnPremise");
    let policy_url = xpath(&answer, &local("EnrollmentPolicyServiceUrl"));
    let enrollment_url = xpath(&answer, &local("EnrollmentServiceUrl"));
    assert_eq!(enrollment_url, format!("{base}/agent/v1/windows/enroll/enrollment"), "built from the public URL");
    let (status, answer) = soap(&policy_url, &windows_fixture("mde2-get-policies.xml"));
    assert_eq!(status, "200", "{answer}");
    assert_eq!(xpath(&answer, &local("minimalKeyLength")), "2048");

    // The device's RSA key and request, as Windows makes them (DER, base64 in the body).
    let (key, csr) = (dir.path().join("win.key"), dir.path().join("win.csr"));
    let o = run(Command::new("openssl")
        .args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=whatever-windows-asks", "-outform", "DER"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    assert!(o.status.success(), "{}", text(&o));
    let csr_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&csr).unwrap())
    };
    let fixture = windows_fixture("mde2-enrollment.xml");
    let opening = "#base64binary\">";
    let start = fixture.find(opening).unwrap() + opening.len();
    let end = fixture.find("</wsse:BinarySecurityToken>").unwrap();
    let request = |device: &str, password: &str| {
        format!("{}{csr_b64}{}", &fixture[..start], &fixture[end..])
            .replace("7BA748C8703E4DF2A74A92984117346A", device)
            .replace(">drv_enroll_example<", &format!(">{password}<"))
    };
    let token_for = |device_type: &str| {
        let (code, body) =
            api("POST", "/api/v1/enrollment-tokens", Some(&format!(r#"{{"device_type":"{device_type}","uses":1}}"#)));
        assert_eq!(code, 0, "{body}");
        field(&body, "token")
    };
    const DEVICE: &str = "5E0D1C2B3A49586776A5B4C3D2E1F0AB";
    let token = token_for("windows");

    // Refused, each with MS-MDE2's fault and nothing enrolled: a made-up password, and an
    // enrollment token for another device type.
    for (password, subcode) in [("not-a-token", "a:Authentication"), (&*token_for("android"), "a:Authentication")] {
        let (status, answer) = soap(&enrollment_url, &request(DEVICE, password));
        assert_eq!(status, "500", "{answer}");
        assert!(xpath(&answer, &local("Subcode")).contains(subcode), "{answer}");
    }
    let (code, body) = api("GET", &format!("/api/v1/devices/windows/{DEVICE}"), None);
    assert_eq!(code, 0);
    assert!(body.contains("not_found"), "a refused enrollment made a device: {body}");

    // Enrolled: the provisioning document carries the device CA as a root and the
    // device's certificate, which openssl verifies against the CA the API publishes.
    let (status, answer) = soap(&enrollment_url, &request(DEVICE, &token));
    assert_eq!(status, "200", "{answer}");
    let doc = {
        use base64::Engine;
        let b64 = xpath(&answer, &local("BinarySecurityToken"));
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    };
    let encoded = |store: &str| {
        use base64::Engine;
        let b64 =
            xpath(&doc, &format!("string(//characteristic[@type='{store}']//parm[@name='EncodedCertificate']/@value)"));
        base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
    };
    let (root_der, cert_der) = (dir.path().join("root.der"), dir.path().join("win.der"));
    std::fs::write(&root_der, encoded("Root")).unwrap();
    std::fs::write(&cert_der, encoded("My")).unwrap();
    let pem = |der: &Path, out: &Path| {
        let o = run(Command::new("openssl").args(["x509", "-inform", "DER", "-in"]).arg(der).arg("-out").arg(out));
        assert!(o.status.success(), "{}", text(&o));
    };
    let (root_pem, cert_pem) = (dir.path().join("root.pem"), dir.path().join("win.pem"));
    pem(&root_der, &root_pem);
    pem(&cert_der, &cert_pem);
    let (_, device_ca) = api("GET", "/api/v1/device-ca", None);
    assert_eq!(std::fs::read_to_string(&root_pem).unwrap().trim(), device_ca.trim(), "the root is the device CA");
    let o =
        run(Command::new("openssl").args(["verify", "-purpose", "sslclient", "-CAfile"]).arg(&root_pem).arg(&cert_pem));
    assert!(o.status.success(), "{}", text(&o));
    // The subject is the enrolled identity, not what the request asked for.
    let o = run(Command::new("openssl").args(["x509", "-noout", "-subject", "-in"]).arg(&cert_pem));
    let subject = text(&o).replace(" = ", "=");
    assert!(subject.contains(&format!("CN={DEVICE}")) && !subject.contains("whatever"), "{subject}");

    // The token is used up, and the identity is taken: a second enrollment is refused.
    let (status, answer) = soap(&enrollment_url, &request(DEVICE, &token));
    assert_eq!(status, "500");
    assert!(xpath(&answer, &local("Subcode")).contains("a:Authorization"), "{answer}");
    let (status, answer) = soap(&enrollment_url, &request("ANOTHER-PC", &token));
    assert_eq!(status, "500");
    assert!(xpath(&answer, &local("Subcode")).contains("a:Authentication"), "{answer}");
    let (_, list) = api("GET", &format!("/api/v1/devices/windows/{DEVICE}/certificates"), None);
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&list).unwrap().len(), 1, "{list}");

    // The management URL the document gives, with the certificate and no token: an
    // OMA-DM session that runs the operation an admin queued.
    let address = xpath(&doc, "string(//parm[@name='ADDR']/@value)");
    assert_eq!(address, format!("{base}/agent/v1/windows/ManagementServer/MDM.svc"));
    let (code, body) = api(
        "POST",
        "/api/v1/operations",
        Some(&format!(r#"{{"code":"DevDetail","targets":{{"devices":[{{"type":"windows","id":"{DEVICE}"}}]}}}}"#)),
    );
    assert_eq!(code, 0, "{body}");
    let session = windows_fixture("session-open.xml").replace("7F3A2B1C9D8E4F60A1B2C3D4E5F60718", DEVICE);
    let (cert_s, key_s) = (cert_pem.to_str().unwrap(), key.to_str().unwrap());
    let open = |extra: &[&str]| {
        let mut args =
            vec!["--cacert", ca, "-H", "Content-Type: application/vnd.syncml.dm+xml", "--data-binary", &session];
        args.extend(["-w", "\n%{http_code}"]);
        args.extend(extra);
        curl(&address, &args).1
    };
    assert!(open(&[]).ends_with("401"), "a session without the certificate was served");
    let answer = open(&["--cert", cert_s, "--key", key_s]);
    let (syncml, status) = answer.rsplit_once('\n').unwrap();
    assert_eq!(status, "200", "{answer}");
    let got = xpath(syncml, "string(//*[local-name()='Get']//*[local-name()='Target']/*[local-name()='LocURI'])");
    assert!(got.starts_with("./DevDetail/"), "the queued DevDetail is not in the session: {syncml}");
    let (_, device) = api("GET", &format!("/api/v1/devices/windows/{DEVICE}"), None);
    let device: serde_json::Value = serde_json::from_str(&device).unwrap();
    assert_eq!(device["status"], "active", "{device}");
    assert_eq!(device["name"], "LAB-PC-07", "{device}");
    assert_eq!(device["owner"], "nadia@example.com", "{device}");
}

/// `GetCACert` at `url`, read by openssl: the device CA (written to `dir`, its path
/// returned) and the RA, checked to be the CA's, by its SHA-256 fingerprint (hex, as
/// `scepclient -ca-fingerprint` takes it).
fn scep_ra(dir: &Path, url: &str, ca: &str) -> (PathBuf, String) {
    let p7 = dir.join("ca-ra.p7");
    let (code, _) = curl(&format!("{url}?operation=GetCACert"), &["--cacert", ca, "-o", p7.to_str().unwrap()]);
    assert_eq!(code, 0);
    let o = run(Command::new("openssl").args(["pkcs7", "-inform", "DER", "-print_certs", "-in"]).arg(&p7));
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout).into_owned();
    let pems: Vec<String> = printed
        .split("-----END CERTIFICATE-----")
        .filter_map(|p| {
            p.find("-----BEGIN CERTIFICATE-----").map(|i| format!("{}-----END CERTIFICATE-----\n", &p[i..]))
        })
        .collect();
    assert_eq!(pems.len(), 2, "the RA and the CA: {printed}");
    let (ra_pem, device_ca_pem) = (dir.join("ra.pem"), dir.join("device-ca.pem"));
    let subject = |pem: &str| {
        std::fs::write(dir.join("probe.pem"), pem).unwrap();
        text(&run(Command::new("openssl").args(["x509", "-noout", "-subject", "-in"]).arg(dir.join("probe.pem"))))
    };
    let (ra, ca_cert): (Vec<&String>, Vec<&String>) = pems.iter().partition(|p| subject(p).contains("SCEP RA"));
    assert_eq!((ra.len(), ca_cert.len()), (1, 1), "{printed}");
    std::fs::write(&ra_pem, ra[0]).unwrap();
    std::fs::write(&device_ca_pem, ca_cert[0]).unwrap();
    let o = run(Command::new("openssl").args(["verify", "-CAfile"]).arg(&device_ca_pem).arg(&ra_pem));
    assert!(o.status.success(), "the RA is the device CA's: {}", text(&o));
    let o = run(Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(&ra_pem));
    (device_ca_pem, text(&o).split('=').nth(1).unwrap().trim().replace(':', "").to_lowercase())
}

/// SCEP (RFC 8894) with micromdm's `scepclient` (Debian's `scep` package), a client that
/// is not Drover's: the RA and CA from `GetCACert` read by openssl, a certificate issued for
/// an enrollment token as the challenge and the CSR's CN as the identity, then used for
/// mTLS; the used-up token, a made-up challenge and (without `--scep-allow-des`) the
/// client's single-DES envelope refused with SCEP's failInfo.
#[test]
fn scep_issues_a_certificate_to_micromdms_client() {
    if !tools() {
        return;
    }
    if !present("scepclient", "-version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let served = |name: &str, args: &[&str]| {
        let data = dir.path().join(name);
        std::fs::create_dir(&data).unwrap();
        serve(&data, args)
    };
    // micromdm's client encrypts with single DES whatever the server offers.
    let server = served("des", &["--scep-allow-des", "true"]);
    let ca = server.data.join("tls/cert.pem");
    let ca = ca.to_str().unwrap();
    let base = format!("https://127.0.0.1:{}", server.http);
    let scep_url = format!("{base}/agent/v1/android/scep");
    let token_of = |server: &Served| {
        let (code, body) =
            server.api("POST", "/api/v1/enrollment-tokens", Some(r#"{"device_type":"android","uses":1}"#));
        assert_eq!(code, 0, "{body}");
        field(&body, "token")
    };

    let (code, caps) = curl(&format!("{scep_url}?operation=GetCACaps"), &["--cacert", ca]);
    assert_eq!(code, 0);
    assert!(caps.contains("POSTPKIOperation") && caps.contains("AES"), "{caps}");
    let (device_ca_pem, ra_fingerprint) = scep_ra(dir.path(), &scep_url, ca);

    // scepclient: a new key, a CSR for CN=SCEP-0001 with the token as its challenge.
    let enroll = |url: &str, cn: &str, challenge: &str, name: &str| {
        let (key, cert) = (dir.path().join(format!("{name}.key")), dir.path().join(format!("{name}.pem")));
        let o = run(Command::new("scepclient")
            .args(["-server-url", url, "-cn", cn, "-challenge", challenge, "-ca-fingerprint", &ra_fingerprint])
            .arg("-private-key")
            .arg(&key)
            .arg("-certificate")
            .arg(&cert)
            .current_dir(dir.path())
            .env("SSL_CERT_FILE", ca));
        (o.status.success(), text(&o), key, cert)
    };
    let token = token_of(&server);
    let (ok, said, key, cert) = enroll(&scep_url, "SCEP-0001", &token, "first");
    assert!(ok && said.contains("SUCCESS"), "{said}\n{}", server.log());
    issued(&cert, &device_ca_pem, "CN=SCEP-0001");
    // The certificate is the device's credential: it polls over mTLS with no token.
    let (code, body) = curl(
        &format!("{base}/agent/v1/android/devices/SCEP-0001/pending-operations"),
        &[
            "--cacert",
            ca,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-X",
            "PUT",
            "-d",
            "[]",
            "-w",
            "\n%{http_code}",
        ],
    );
    assert!(code == 0 && body.ends_with("200"), "{body}");

    // Refused with SCEP's failInfo, and nothing enrolled: the used-up token, a made-up one.
    let (ok, said, ..) = enroll(&scep_url, "SCEP-0002", &token, "replayed");
    assert!(!ok && said.contains("badRequest"), "{said}");
    let (ok, said, ..) = enroll(&scep_url, "SCEP-0003", "drv_enroll_made_up", "made-up");
    assert!(!ok && said.contains("badRequest"), "{said}");
    for id in ["SCEP-0002", "SCEP-0003"] {
        let (_, body) = server.api("GET", &format!("/api/v1/devices/android/{id}"), None);
        assert!(body.contains("not_found"), "a refused SCEP request enrolled {id}: {body}");
    }

    // By default single DES is refused (badAlg), and the token is not spent on it.
    let strict = served("strict", &[]);
    let strict_ca = strict.data.join("tls/cert.pem");
    let strict_url = format!("https://127.0.0.1:{}/agent/v1/android/scep", strict.http);
    let strict_dir = dir.path().join("strict-ra");
    std::fs::create_dir(&strict_dir).unwrap();
    let (_, strict_fingerprint) = scep_ra(&strict_dir, &strict_url, strict_ca.to_str().unwrap());
    let o = run(Command::new("scepclient")
        .args(["-server-url", &strict_url, "-cn", "SCEP-0004", "-challenge", &token_of(&strict)])
        .args(["-ca-fingerprint", &strict_fingerprint])
        .arg("-private-key")
        .arg(dir.path().join("strict.key"))
        .arg("-certificate")
        .arg(dir.path().join("strict.pem"))
        .current_dir(dir.path())
        .env("SSL_CERT_FILE", &strict_ca));
    assert!(!o.status.success() && text(&o).contains("badAlg"), "{}", text(&o));
}

/// curl PUTs the file `body` to `url` over TLS with the client certificate and key
/// `identity` (and `extra` arguments): its exit code, and the body with the HTTP status
/// on a last line of its own.
fn put_mtls(url: &str, ca: &str, identity: (&Path, &Path), body: &Path, extra: &[&str]) -> (i32, String) {
    let (cert, key) = (identity.0.to_str().unwrap(), identity.1.to_str().unwrap());
    let data = format!("@{}", body.display());
    let mut args = vec!["--cacert", ca, "--cert", cert, "--key", key, "-X", "PUT", "--data-binary", &data];
    args.extend(extra);
    args.extend(["-w", "\n%{http_code}"]);
    curl(url, &args)
}

fn ios_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/ios/fixtures").join(name)
}

/// What python's plistlib (a reader that is not Drover's) finds at `expr` in the profile
/// `file`, e.g. `p['PayloadContent'][0]['PayloadType']`.
fn plist_value(file: &Path, expr: &str) -> String {
    let script = format!("import plistlib,sys; p = plistlib.load(open(sys.argv[1], 'rb')); print({expr})");
    let o = run(Command::new("python3").args(["-c", &script]).arg(file));
    assert!(o.status.success(), "{expr}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// An iPhone's enrollment as Apple has it: the enrollment profile (.mobileconfig) from the
/// link with an enrollment token, read by python's plistlib; its SCEP payload's URL and
/// challenge given to micromdm's `scepclient`, which gets a certificate for the
/// enrollment (not for a device: the device has said nothing yet); the Authenticate
/// check-in made with that certificate over mTLS claims the UDID and uses the token; then
/// TokenUpdate and a command as the device. The certificate claims once: another UDID's
/// check-in with it is refused, as are a dead token's link and profile, a used-up token's
/// SCEP request, and the certificate at another device type's URL.
#[test]
fn an_iphone_enrolls_with_the_profile_its_scep_certificate_and_its_first_check_in() {
    if !tools() || !present("scepclient", "-version") || !present("python3", "--version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir(&data).unwrap();
    // micromdm's client encrypts with single DES (an iPhone uses AES).
    let server = serve(&data, &["--scep-allow-des", "true"]);
    let ca = server.data.join("tls/cert.pem");
    let ca = ca.to_str().unwrap();
    let base = format!("https://127.0.0.1:{}", server.http);
    let (code, body) = server.api("POST", "/api/v1/enrollment-tokens", Some(r#"{"device_type":"ios","uses":1}"#));
    assert_eq!(code, 0, "{body}");
    let token = field(&body, "token");
    // The token's link (its QR code) is the profile's, from the public URL.
    let link = field(&body, "enrollment_url");
    assert_eq!(link, format!("{base}/agent/v1/ios/enroll/profile?token={token}"));
    let get = |url: &str, out: &Path| {
        let (code, status) =
            curl(url, &["--cacert", ca, "-o", out.to_str().unwrap(), "-w", "%{http_code} %{content_type}"]);
        assert_eq!(code, 0);
        (status, std::fs::read_to_string(out).unwrap_or_default())
    };

    // No push topic set for the plugin: no profile, and the answer says what to set.
    let profile = dir.path().join("enroll.mobileconfig");
    let (status, said) = get(&link, &profile);
    assert!(status.starts_with("400") && said.contains("`topic` setting"), "{status} {said}");
    let (code, body) = server.api(
        "PUT",
        "/api/v1/plugins/ios/settings",
        Some(r#"{"config": {"topic": "com.apple.mgmt.External.2f4a", "organization": "Acme"}}"#),
    );
    assert_eq!(code, 0, "{body}");
    // A made-up token gets no profile.
    let (status, said) = get(&format!("{base}/agent/v1/ios/enroll/profile?token=drv_enroll_made_up"), &profile);
    assert!(status.starts_with("401"), "{status} {said}");

    let (status, _) = get(&link, &profile);
    assert_eq!(status, "200 application/x-apple-aspen-config");
    assert_eq!(plist_value(&profile, "p['PayloadType']"), "Configuration");
    assert_eq!(plist_value(&profile, "p['PayloadOrganization']"), "Acme");
    let payload = |kind: &str, key: &str| {
        plist_value(&profile, &format!("[x for x in p['PayloadContent'] if x['PayloadType'] == '{kind}'][0]{key}"))
    };
    let scep_url = payload("com.apple.security.scep", "['PayloadContent']['URL']");
    let challenge = payload("com.apple.security.scep", "['PayloadContent']['Challenge']");
    let server_url = payload("com.apple.mdm", "['ServerURL']");
    assert_eq!(scep_url, format!("{base}/agent/v1/ios/scep/pending"));
    assert_eq!(challenge, token);
    assert_eq!(server_url, format!("{base}/agent/v1/ios/mdm"));
    assert_eq!(payload("com.apple.mdm", "['CheckInURL']"), server_url);
    assert_eq!(payload("com.apple.mdm", "['Topic']"), "com.apple.mgmt.External.2f4a");
    assert_eq!(
        payload("com.apple.mdm", "['IdentityCertificateUUID']"),
        payload("com.apple.security.scep", "['PayloadUUID']")
    );

    // The SCEP payload as the device runs it: its own key, the profile's challenge.
    let (device_ca_pem, ra_fingerprint) = scep_ra(dir.path(), &scep_url, ca);
    let scep = |challenge: &str, name: &str| {
        let (key, cert) = (dir.path().join(format!("{name}.key")), dir.path().join(format!("{name}.pem")));
        let o = run(Command::new("scepclient")
            .args(["-server-url", &scep_url, "-cn", "Drover MDM identity", "-challenge", challenge])
            .args(["-ca-fingerprint", &ra_fingerprint])
            .arg("-private-key")
            .arg(&key)
            .arg("-certificate")
            .arg(&cert)
            .current_dir(dir.path())
            .env("SSL_CERT_FILE", ca));
        (o.status.success(), text(&o), key, cert)
    };
    let (ok, said, key, cert) = scep(&challenge, "iphone");
    assert!(ok && said.contains("SUCCESS"), "{said}\n{}", server.log());
    issued(&cert, &device_ca_pem, "CN=enrollment ");

    let mtls = |url: &str, cert: &Path, key: &Path, fixture: &str| {
        put_mtls(
            url,
            ca,
            (cert, key),
            &ios_fixture(fixture),
            &["-H", "content-type: application/x-apple-aspen-mdm-checkin"],
        )
    };
    // The certificate is for an Apple enrollment: not a credential at another type's URL.
    let (_, said) =
        mtls(&format!("{base}/agent/v1/android/devices/x/pending-operations"), &cert, &key, "authenticate.plist");
    assert!(said.ends_with("403"), "{said}");

    // The first check-in names the device and claims it with the token's one use (which
    // SCEP did not use up); the certificate is its credential.
    let (code, said) = mtls(&server_url, &cert, &key, "authenticate.plist");
    assert!(code == 0 && said == "\n200", "Authenticate is answered with an empty 200: {said}\n{}", server.log());
    let udid = "00008120-001A2D3E0C38802E";
    let (_, device) = server.api("GET", &format!("/api/v1/devices/ios/{udid}"), None);
    assert!(device.contains(r#""status":"active""#), "{device}");
    let (_, certificates) = server.api("GET", &format!("/api/v1/devices/ios/{udid}/certificates"), None);
    assert!(certificates.contains("serial"), "{certificates}");
    let (_, said) = mtls(&server_url, &cert, &key, "token-update.plist");
    assert!(said.ends_with("\n200"), "{said}");
    let (_, device) = server.api("GET", &format!("/api/v1/devices/ios/{udid}"), None);
    assert!(device.contains(r#""push_transport":"apns""#), "{device}");

    // Managed: a command reaches it over the same certificate.
    let (code, body) = server.api(
        "POST",
        "/api/v1/operations",
        Some(&format!(r#"{{"code":"DeviceInformation","targets":{{"devices":[{{"type":"ios","id":"{udid}"}}]}}}}"#)),
    );
    assert_eq!(code, 0, "{body}");
    let (_, said) = mtls(&server_url, &cert, &key, "idle.plist");
    assert!(said.contains("DeviceInformation") && said.ends_with("200"), "{said}");

    // The certificate claimed once: another device's Authenticate with it is refused, and
    // the device is not enrolled.
    let other = dir.path().join("other.plist");
    std::fs::write(
        &other,
        std::fs::read_to_string(ios_fixture("authenticate.plist")).unwrap().replace(udid, "00008120-0000000000000BAD"),
    )
    .unwrap();
    let (_, said) = put_mtls(&server_url, ca, (&cert, &key), &other, &[]);
    assert!(said.ends_with("400"), "{said}");
    let (_, body) = server.api("GET", "/api/v1/devices/ios/00008120-0000000000000BAD", None);
    assert!(body.contains("not_found"), "{body}");

    // The claim used the token up: its link gives no profile, its SCEP request no certificate.
    let (status, said) = get(&link, &profile);
    assert!(status.starts_with("401"), "{status} {said}");
    let (ok, said, ..) = scep(&token, "replayed");
    assert!(!ok && said.contains("badRequest"), "{said}");
}
