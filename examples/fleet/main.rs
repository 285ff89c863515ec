//! The fleet simulator: enrolls N simulated Android devices in a running Drover server and
//! behaves like them, by polling (HTTP) or by push (MQTT), then prints rates and latency
//! percentiles. The benchmarks in docs/BENCHMARKS.md use it.
//!
//!     cargo run --release --example fleet -- --devices 10000 --mode poll
//!     cargo run --release --example fleet -- --devices 10000 --mode push --mqtt 127.0.0.1:18830
//!     cargo run --release --example fleet -- --devices 10000 --mode floor --server http://127.0.0.1:18090
//!
//! `floor` sends poll mode's requests to the `http-floor` example (a server that only
//! answers), for the HTTP floor the poll figure is compared with.
//!
//! Each run enrolls fresh devices (ids `<run>-<n>`, a `FLEET` property naming the run) and
//! targets them with one operation through a dynamic group on that property.

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore, mpsc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Each device polls, receives its operation, and reports it on the next poll.
    Poll,
    /// Each device holds an MQTT connection, receives its operation by push, answers on `reply`.
    Push,
    /// The requests of `poll` against the `http-floor` example, which only answers: the
    /// HTTP floor the poll figure is compared with. Nothing is enrolled.
    Floor,
}

#[derive(Parser, Debug)]
#[command(about = "Simulate a fleet of devices against a running Drover server")]
struct Args {
    /// The server's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Another replica's HTTP address (repeatable): poll mode's connections are spread
    /// over `--server` and these, one in turn each.
    #[arg(long)]
    also_server: Vec<String>,
    /// The MQTT broker devices connect to (Drover's embedded one, or the external one).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// An admin token; default: DROVER_ADMIN_TOKEN, else `<data-dir>/admin-token`.
    #[arg(long, env = "DROVER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The server's data directory (for its bootstrap admin token).
    #[arg(long, default_value = "drover-data")]
    data_dir: std::path::PathBuf,
    /// How many devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Device type (the simulator speaks the Android agent's protocol).
    #[arg(long = "type", default_value = "android")]
    device_type: String,
    #[arg(long, value_enum, default_value = "poll")]
    mode: Mode,
    /// Requests in flight at once (poll mode, enrollment, MQTT connects).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Devices say `online` on their status topic after subscribing (needed with an
    /// external broker, where Drover does not see subscriptions).
    #[arg(long)]
    announce_online: bool,
    /// Give up waiting for completion after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// The server's process id (push mode, Linux): its resident memory is read from /proc
    /// before the devices connect, once they are connected and idle, and after the push,
    /// and reported per connection.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// A process's resident memory and its peak so far, in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("--server-pid {pid}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

const ENROLL: &str = include_str!("../../plugins/android/fixtures/enroll.json");

struct Device {
    id: String,
    token: String,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn percentiles(name: &str, h: &Histogram<u64>) {
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{name:<28} p50 {:>8.2} ms  p90 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  (n={})",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len()
    );
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

struct Admin {
    http: reqwest::Client,
    server: String,
    token: String,
}

impl Admin {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut r = self.http.request(method, format!("{}{path}", self.server)).bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {v}");
        }
        Ok(v)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.device_type != "android" {
        bail!("--type {}: the simulator speaks the Android agent's protocol only, for now", args.device_type);
    }
    if args.mode == Mode::Floor {
        let devices =
            (0..args.devices).map(|i| Device { id: format!("floor-{i:06}"), token: "floor".into() }).collect();
        println!("fleet floor: {} devices, server {}", args.devices, args.server);
        return poll_loop(&args, &args.server, devices).await;
    }
    let token = match &args.admin_token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(args.data_dir.join("admin-token"))
            .with_context(|| format!("no --admin-token, and none in {}/admin-token", args.data_dir.display()))?
            .trim()
            .to_string(),
    };
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let admin = Arc::new(Admin { http: http.clone(), server: args.server.trim_end_matches('/').to_string(), token });
    admin.send(reqwest::Method::GET, "/api/v1/plugins", None).await.context("the server does not answer")?;

    let run =
        format!("sim{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 0xff_ffff);
    println!(
        "fleet {run}: {} {} devices, {:?} mode, server {}",
        args.devices, args.device_type, args.mode, admin.server
    );

    let devices = enroll(&args, &admin, &run).await?;
    let group = format!("fleet-{run}");
    admin
        .send(
            reqwest::Method::POST,
            "/api/v1/groups",
            Some(json!({"name": group, "query": {"device_type": "android", "metadata": {"FLEET": run}}})),
        )
        .await?;
    match args.mode {
        Mode::Poll => poll(&args, &admin, devices, &group).await,
        Mode::Push => push(&args, &admin, devices, &group).await,
        Mode::Floor => unreachable!("handled before enrolling"),
    }
}

async fn enroll(args: &Args, admin: &Arc<Admin>, run: &str) -> Result<Vec<Device>> {
    let pb = bar(args.devices, "enroll");
    let limit = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let id = format!("{run}-{i:06}");
        let body = ENROLL
            .replace("354956090214718", &id)
            .replace(r#""properties": ["#, &format!(r#""properties": [{{"name": "FLEET", "value": "{run}"}}, "#));
        let (admin, limit, pb) = (admin.clone(), limit.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            // A server that limits enrollments per address (all of these come from one)
            // says when to come back; a benchmark's server runs with --enroll-rate-per-sec 0.
            let mut waits = 0;
            let r = loop {
                let r =
                    admin.http.post(format!("{}/agent/v1/android/enroll", admin.server)).body(body.clone()).send().await?;
                if r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    break r;
                }
                waits += 1;
                if waits > 600 {
                    bail!("enroll {id}: still told to wait after {waits} tries (start the server with --enroll-rate-per-sec 0)");
                }
                let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            };
            let status = r.status();
            let v: Value = r.json().await?;
            if !status.is_success() {
                bail!("enroll {id}: {status} {v}");
            }
            pb.inc(1);
            Ok(Device { id, token: v["access_token"].as_str().unwrap_or_default().to_string() })
        }));
    }
    let mut devices = Vec::with_capacity(args.devices);
    for t in tasks {
        devices.push(t.await??);
    }
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!("enrolled {} devices in {secs:.2} s ({:.0}/s)", devices.len(), devices.len() as f64 / secs);
    Ok(devices)
}

async fn add_ring(admin: &Admin, group: &str) -> Result<(i64, u64)> {
    let v = admin
        .send(
            reqwest::Method::POST,
            "/api/v1/operations",
            Some(json!({"code": "DEVICE_RING", "targets": {"groups": [group]}})),
        )
        .await?;
    Ok((v["activity"]["id"].as_i64().unwrap_or_default(), v["operations"].as_u64().unwrap_or_default()))
}

async fn completed(admin: &Admin, activity: i64) -> Result<u64> {
    let v = admin.send(reqwest::Method::GET, &format!("/api/v1/activities/{activity}"), None).await?;
    Ok(v["counts"]["COMPLETED"].as_u64().unwrap_or(0))
}

fn result_for(op: &Value) -> Value {
    json!({"id": op["id"], "code": op["code"], "type": op["type"], "status": "COMPLETED", "operationResponse": "rang"})
}

async fn poll(args: &Args, admin: &Arc<Admin>, devices: Vec<Device>, group: &str) -> Result<()> {
    let added = Instant::now();
    let (activity, n) = add_ring(admin, group).await?;
    println!("one operation to {n} devices stored in {:.1} ms", added.elapsed().as_secs_f64() * 1000.0);

    poll_loop(args, &admin.server, devices).await?;
    let done = completed(admin, activity).await?;
    println!("activity {activity}: {done}/{n} COMPLETED");
    if done != n {
        bail!("{} operations did not complete", n - done);
    }
    Ok(())
}

/// Every device polls twice (the first poll gets its operation, the second reports it),
/// `--concurrency` at once; prints the rate, the latency percentiles and the simulator's
/// own CPU per poll.
async fn poll_loop(args: &Args, server: &str, devices: Vec<Device>) -> Result<()> {
    let devices = Arc::new(devices);
    let next = Arc::new(AtomicUsize::new(0));
    let latency = Arc::new(Mutex::new(histogram()));
    let pb = bar(devices.len() * 2, "polls");
    let cpu = own_cpu();
    let started = Instant::now();
    let servers: Vec<&str> = std::iter::once(server).chain(args.also_server.iter().map(String::as_str)).collect();
    let mut workers = Vec::new();
    for k in 0..args.concurrency {
        let server = servers[k % servers.len()].trim_end_matches('/').to_string();
        let (devices, next, latency, pb) = (devices.clone(), next.clone(), latency.clone(), pb.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::open(&server).await?;
            let mut local = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = devices.get(i) else { break };
                let path = format!("/agent/v1/android/devices/{}/pending-operations", d.id);
                // First poll: nothing to report, the operation comes back.
                let t = Instant::now();
                let ops: Value = serde_json::from_slice(&conn.put(&path, &d.token, "[]".into()).await?)?;
                local.record(t.elapsed().as_micros().max(1) as u64)?;
                pb.inc(1);
                let results: Vec<Value> =
                    ops.as_array().map(|a| a.iter().map(result_for).collect()).unwrap_or_default();
                // Second poll: the result goes back.
                let t = Instant::now();
                conn.put(&path, &d.token, Value::from(results).to_string()).await?;
                local.record(t.elapsed().as_micros().max(1) as u64)?;
                pb.inc(1);
            }
            latency.lock().await.add(&local)?;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = own_cpu().zip(cpu).map(|(after, before)| after - before);
    pb.finish_and_clear();
    let polls = devices.len() * 2;
    println!("{polls} polls in {secs:.2} s: {:.0} polls/s with {} in flight", polls as f64 / secs, args.concurrency);
    percentiles("poll latency", &*latency.lock().await);
    if let Some(cpu) = cpu {
        println!(
            "simulator CPU: {:.2} cores, {:.0} µs per poll",
            cpu.as_secs_f64() / secs,
            cpu.as_secs_f64() * 1e6 / polls as f64
        );
    }
    Ok(())
}

/// One simulated device connection for polling: hyper's HTTP/1.1 connection, one request
/// at a time, as a device's agent keeps one. Not reqwest, whose pool and per-request
/// machinery cost the simulator ~22 µs per request against ~12–15 µs this way, more than
/// the HTTP floor's server spends answering (docs/BENCHMARKS.md): the simulator shares the
/// machine with the server it measures, so every microsecond it spends is one the server
/// does not get.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Conn {
    async fn open(server: &str) -> Result<Conn> {
        let authority = server
            .strip_prefix("http://")
            .with_context(|| format!("--server {server}: poll mode speaks plain http:// to the server"))?
            .trim_end_matches('/')
            .to_string();
        let tcp = tokio::net::TcpStream::connect(&authority).await.with_context(|| format!("connect {authority}"))?;
        tcp.set_nodelay(true)?;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(Conn { send, authority })
    }

    /// PUT `body` to `path` as the device holding `token`; the answer's body, which must
    /// come with a success status.
    async fn put(&mut self, path: &str, token: &str, body: String) -> Result<Bytes> {
        self.send.ready().await.with_context(|| format!("PUT {path}: the server closed the connection"))?;
        let request = hyper::Request::put(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)))?;
        let answer = self.send.send_request(request).await.with_context(|| format!("PUT {path}"))?;
        let status = answer.status();
        let body = answer.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("PUT {path}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }
}

/// This process's CPU time (user + system) so far, where /proc tells it (Linux).
fn own_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel reports in USER_HZ, 100 on every Linux architecture Drover runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Messages a simulated MQTT device sees.
struct Received {
    device: usize,
    at: Instant,
    payload: Vec<u8>,
}

async fn push(args: &Args, admin: &Arc<Admin>, devices: Vec<Device>, group: &str) -> Result<()> {
    let (host, port) = args.mqtt.rsplit_once(':').context("--mqtt: expected host:port")?;
    let port: u16 = port.parse().context("--mqtt: bad port")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Received>();
    let subscribed = Arc::new(AtomicUsize::new(0));
    let before = args.server_pid.map(rss_kib).transpose()?;
    let pb = bar(devices.len(), "connect");
    let started = Instant::now();
    let mut clients = Vec::with_capacity(devices.len());
    let limit = Arc::new(Semaphore::new(args.concurrency));
    for (i, d) in devices.iter().enumerate() {
        let mut options = MqttOptions::new(format!("sim-{}", d.id), host, port);
        options.set_credentials(format!("android/{}", d.id), d.token.clone());
        options.set_keep_alive(Duration::from_secs(60));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        eventloop.network_options.set_tcp_nodelay(true);
        let (tx, subscribed, pb, limit) = (tx.clone(), subscribed.clone(), pb.clone(), limit.clone());
        let topic = format!("drover/android/{}/operations", d.id);
        let status = format!("drover/android/{}/status", d.id);
        let announce = args.announce_online;
        let c = client.clone();
        // Connect a bounded number at once, then keep the event loop running.
        let permit = limit.acquire_owned().await?;
        tokio::spawn(async move {
            let mut permit = Some(permit);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if announce {
                            let _ = c.try_publish(status.clone(), QoS::AtLeastOnce, true, "online");
                        }
                        subscribed.fetch_add(1, Ordering::Relaxed);
                        pb.inc(1);
                        permit.take();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Received { device: i, at: Instant::now(), payload: p.payload.to_vec() });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("device {i}: {e}");
                        permit.take();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        clients.push(client);
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while subscribed.load(Ordering::Relaxed) < devices.len() {
        if Instant::now() > deadline {
            bail!("only {} of {} devices connected", subscribed.load(Ordering::Relaxed), devices.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!("{} devices connected and subscribed in {secs:.2} s", devices.len());
    // Let Drover take in every subscription before the operation is added (and let the
    // memory reading below see the connections at rest).
    tokio::time::sleep(Duration::from_millis(if before.is_some() { 2000 } else { 500 })).await;
    let per_connection = |kib: u64, base: u64| kib.saturating_sub(base) as f64 / devices.len() as f64;
    if let (Some(pid), Some((base, _))) = (args.server_pid, before) {
        let (idle, _) = rss_kib(pid)?;
        println!(
            "server memory: {base} KiB before connecting, {idle} KiB with {} connected and idle: {:.1} KiB per connection",
            devices.len(),
            per_connection(idle, base)
        );
    }

    // Drover: add one operation for all; each device answers as soon as it arrives.
    let pb = bar(devices.len(), "completed");
    let t0 = Instant::now();
    let (activity, n) = add_ring(admin, group).await?;
    let stored = t0.elapsed();
    let mut to_device = histogram();
    let mut got = 0;
    while got < devices.len() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let Ok(Some(m)) = tokio::time::timeout(left, rx.recv()).await else {
            bail!("only {got} of {} devices received their operation", devices.len());
        };
        to_device.record(m.at.duration_since(t0).as_micros().max(1) as u64)?;
        let ops: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        let results: Vec<Value> = ops.as_array().map(|a| a.iter().map(result_for).collect()).unwrap_or_default();
        let reply = format!("drover/android/{}/reply", devices[m.device].id);
        clients[m.device].publish(reply, QoS::AtLeastOnce, false, Value::from(results).to_string()).await?;
        got += 1;
    }
    let mut done = 0;
    while done < n {
        if Instant::now() > deadline {
            bail!("{done} of {n} operations COMPLETED before the timeout");
        }
        done = completed(admin, activity).await?;
        pb.set_position(done);
        if done < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    println!("one operation to {n} devices stored in {:.1} ms", stored.as_secs_f64() * 1000.0);
    println!(
        "push round trip: {n} operations added → delivered → answered → COMPLETED in {all:.2} s: {:.0} ops/s",
        n as f64 / all
    );
    percentiles("added → at device", &to_device);
    if let (Some(pid), Some((base, hwm_before))) = (args.server_pid, before) {
        let (after, hwm) = rss_kib(pid)?;
        let peak = if hwm > hwm_before {
            format!("peak {hwm} KiB: {:.1} KiB per connection", per_connection(hwm, base))
        } else {
            format!("peak not above the {hwm_before} KiB reached before connecting")
        };
        println!(
            "server memory after the push: {after} KiB: {:.1} KiB per connection; {peak}",
            per_connection(after, base)
        );
    }

    // The bare broker on the same connections: each device publishes on its own topic
    // (the one it subscribes to) and times the message coming back.
    let t0 = Instant::now();
    for (i, c) in clients.iter().enumerate() {
        let topic = format!("drover/android/{}/operations", devices[i].id);
        c.publish(topic, QoS::AtLeastOnce, false, b"[]".to_vec()).await?;
    }
    let mut bare = histogram();
    let mut got = 0;
    while got < devices.len() {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(args.timeout_secs), rx.recv()).await else {
            bail!("the bare-broker pass lost messages: {got} of {}", devices.len());
        };
        bare.record(m.at.duration_since(t0).as_micros().max(1) as u64)?;
        got += 1;
    }
    let bare_secs = t0.elapsed().as_secs_f64();
    println!(
        "bare broker: {} messages published → received in {bare_secs:.2} s: {:.0} msg/s",
        devices.len(),
        devices.len() as f64 / bare_secs
    );
    percentiles("published → received", &bare);
    println!("ratio: Drover's push round trip takes {:.1}x the bare broker's time", all / bare_secs);

    // The bare broker doing what a push round trip asks of it: two messages in a row per
    // device (out to the device, then its answer), each at QoS 1. Here each device sends
    // itself both, the second when the first arrives. No storage, no plugin: the most a
    // push round trip through this broker could do on this machine.
    let t0 = Instant::now();
    for (i, c) in clients.iter().enumerate() {
        let topic = format!("drover/android/{}/operations", devices[i].id);
        c.publish(topic, QoS::AtLeastOnce, false, b"1".to_vec()).await?;
    }
    let mut round = histogram();
    let (mut got, mut sent) = (0, 0);
    while got < devices.len() {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(args.timeout_secs), rx.recv()).await else {
            bail!("the bare round trip lost messages: {got} of {} back, {sent} answered", devices.len());
        };
        if m.payload == b"1" {
            let topic = format!("drover/android/{}/operations", devices[m.device].id);
            clients[m.device].publish(topic, QoS::AtLeastOnce, false, b"2".to_vec()).await?;
            sent += 1;
        } else {
            round.record(m.at.duration_since(t0).as_micros().max(1) as u64)?;
            got += 1;
        }
    }
    let round_secs = t0.elapsed().as_secs_f64();
    println!(
        "bare round trip: {} devices × two messages in a row in {round_secs:.2} s: {:.0} round trips/s",
        devices.len(),
        devices.len() as f64 / round_secs
    );
    percentiles("first published → second received", &round);
    println!("ratio: Drover's push round trip takes {:.1}x the bare round trip's time", all / round_secs);
    Ok(())
}
