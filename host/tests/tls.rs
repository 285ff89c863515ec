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
}

/// `drover serve` with `args`, its log in `data/log`, once its HTTP port takes connections.
fn serve(data: &Path, args: &[&str]) -> Served {
    let (http, mqtt) = (free_port(), free_port());
    let log = std::fs::File::create(data.join("log")).unwrap();
    let child = drover()
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--http-addr", &format!("127.0.0.1:{http}"), "--mqtt-addr", &format!("127.0.0.1:{mqtt}")])
        .args(["--coap-addr", &free_udp()])
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
    if Command::new("mosquitto").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        assert!(std::env::var_os("CI").is_none(), "the mosquitto broker is missing");
        eprintln!("skipped: no mosquitto broker binary");
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
