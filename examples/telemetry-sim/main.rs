//! The telemetry simulator: Android devices on MQTT that move and measure, for Drover's
//! analytics (docs/analytics.md walks through it).
//!
//!     cargo run --release --example telemetry-sim -- --mode vehicles --mqtt 127.0.0.1:18831
//!     cargo run --release --example telemetry-sim -- --mode sensors --mqtt 127.0.0.1:18831
//!     cargo run --release --example telemetry-sim -- --mode load --devices 1000 --mqtt 127.0.0.1:18831
//!
//! * `vehicles` drive one route: south along a road through a depot (a 300 m geo-fence),
//!   then a highway stretch at 130 km/h (over the 100 km/h limit), then 60 km/h. Positions
//!   have GPS jitter; speed is not reported, so the server derives it. The simulator adds
//!   the fence and the speed limit as alert rules for its devices, and at the end prints
//!   the alerts the server raised: one entry into the depot and one speeding per vehicle.
//! * `sensors` report a temperature every minute: a daily wave with noise, and injected
//!   spikes, dips and level shifts (`drover::analytics::synthetic`, seeded). The simulator
//!   adds an anomaly rule and prints, per sensor and in all, how many of the injected
//!   anomalies the server's alerts found, and how many alerts matched none.
//! * `load` is the ingestion benchmark: every device publishes `--messages` messages of
//!   `--points` values each (a position and metrics `m0`, `m1` …), as fast as the broker
//!   takes them (16 unacknowledged per device); it prints points per second
//!   from the first publish until the server has handled the last message (its
//!   `drover_device_messages` counter).
//!
//! Times are the devices' own (`timestamp`), laid out in the past up to now, so a run of
//! hours of driving takes seconds (`--speedup`).

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use drover::analytics::synthetic;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Vehicles,
    Sensors,
    Load,
}

#[derive(Parser, Debug)]
#[command(about = "Simulate moving and measuring devices against a running Drover server")]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// The server's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The MQTT broker devices publish to.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// An admin token; default: DROVER_ADMIN_TOKEN, else `<data-dir>/admin-token`.
    #[arg(long, env = "DROVER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[arg(long, default_value = "drover-data")]
    data_dir: std::path::PathBuf,
    /// How many devices [default: 5 vehicles, 5 sensors, 1000 for load].
    #[arg(long)]
    devices: Option<usize>,
    /// Device time passes this many times faster than real time (vehicles, sensors).
    #[arg(long, default_value_t = 60.0)]
    speedup: f64,
    /// Load: messages per device.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Load: values per message.
    #[arg(long, default_value_t = 10)]
    points: usize,
    /// Sensors: readings per sensor (one a minute).
    #[arg(long, default_value_t = 600)]
    readings: usize,
    /// Seed of the sensors' series and the vehicles' jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Enrollments and MQTT connections at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

const ENROLL: &str = include_str!("../../plugins/android/fixtures/enroll.json");

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

/// An enrolled device with its MQTT connection.
struct Device {
    id: String,
    client: AsyncClient,
    /// Acknowledgements of its publishes (QoS 1), one per PUBACK.
    acks: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Device {
    async fn publish(&mut self, body: &Value) -> Result<()> {
        self.client
            .publish(format!("drover/android/{}/telemetry", self.id), QoS::AtLeastOnce, false, body.to_string())
            .await?;
        Ok(())
    }

    /// Wait for `n` acknowledgements.
    async fn acked(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(60), self.acks.recv())
                .await
                .context("no PUBACK within 60 s")?
                .context("the connection ended")?;
        }
        Ok(())
    }
}

async fn enroll_and_connect(args: &Args, admin: &Arc<Admin>, run: &str, n: usize, tag: &str) -> Result<Vec<Device>> {
    let (host, port) = args.mqtt.rsplit_once(':').context("--mqtt HOST:PORT")?;
    let port: u16 = port.parse().context("--mqtt HOST:PORT")?;
    let limit = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{run}-{i:05}");
        let body = ENROLL.replace("354956090214718", &id);
        let (admin, limit, host, tag) = (admin.clone(), limit.clone(), host.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let r = admin.http.post(format!("{}/agent/v1/android/enroll", admin.server)).body(body).send().await?;
            let status = r.status();
            let v: Value = r.json().await?;
            if !status.is_success() {
                bail!("enroll {id}: {status} {v}");
            }
            let token = v["access_token"].as_str().unwrap_or_default().to_string();
            admin
                .send(reqwest::Method::PUT, &format!("/api/v1/devices/android/{id}/tags"), Some(json!({"tags": [tag]})))
                .await?;
            let mut options = MqttOptions::new(format!("sim-{id}"), host, port);
            options.set_credentials(format!("android/{id}"), token);
            options.set_keep_alive(Duration::from_secs(60));
            options.set_inflight(64);
            let (client, mut eventloop) = AsyncClient::new(options, 256);
            let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
            let (up_tx, up) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let mut up_tx = Some(up_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Some(t) = up_tx.take() {
                                let _ = t.send(Ok(()));
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            let _ = tx.send(());
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if let Some(t) = up_tx.take() {
                                let _ = t.send(Err(e));
                            }
                            return;
                        }
                    }
                }
            });
            up.await?.with_context(|| format!("MQTT connect of {id}"))?;
            Ok(Device { id, client, acks })
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    // The server reads which devices its rules apply to within half a second of a tag
    // change: the first points are judged too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let token = match &args.admin_token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(args.data_dir.join("admin-token"))
            .with_context(|| format!("no --admin-token, and none in {}/admin-token", args.data_dir.display()))?
            .trim()
            .to_string(),
    };
    let admin = Arc::new(Admin {
        http: reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?,
        server: args.server.trim_end_matches('/').to_string(),
        token,
    });
    admin.send(reqwest::Method::GET, "/api/v1/alert-rules", None).await.context("the server does not answer")?;
    let run =
        format!("sim{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 0xff_ffff);
    match args.mode {
        Mode::Vehicles => vehicles(&args, &admin, &run).await,
        Mode::Sensors => sensors(&args, &admin, &run).await,
        Mode::Load => load(&args, &admin, &run).await,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Every alert of a rule (all pages).
async fn alerts_of(admin: &Admin, rule: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut before = String::new();
    loop {
        let page =
            admin.send(reqwest::Method::GET, &format!("/api/v1/alerts?rule={rule}&limit=1000{before}"), None).await?;
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_before"].as_i64() {
            Some(b) => before = format!("&before={b}"),
            None => return Ok(out),
        }
    }
}

/// The depot's centre, and metres per degree of latitude.
const DEPOT: (f64, f64) = (6.9271, 79.8612);
const M_PER_DEG: f64 = 111_195.0;

/// The route as (metres to drive, km/h), driven south from 2.5 km north of the depot.
const ROUTE: [(f64, f64); 3] = [(3000.0, 50.0), (3000.0, 130.0), (1000.0, 60.0)];

/// Seconds between fixes.
const FIX_EVERY: f64 = 5.0;

async fn vehicles(args: &Args, admin: &Arc<Admin>, run: &str) -> Result<()> {
    let n = args.devices.unwrap_or(5);
    let tag = format!("{run}-vehicles");
    let (fence, speed) = (format!("{run}-depot"), format!("{run}-speed"));
    admin
        .send(
            reqwest::Method::POST,
            "/api/v1/alert-rules",
            Some(json!({"name": fence, "kind": "geofence", "applies_to": {"tags": [tag]},
                "shape": {"circle": {"lat": DEPOT.0, "lon": DEPOT.1, "radius_m": 300}}, "hysteresis_m": 25})),
        )
        .await?;
    admin
        .send(
            reqwest::Method::POST,
            "/api/v1/alert-rules",
            Some(json!({"name": speed, "kind": "speed", "applies_to": {"tags": [tag]}, "limit_kmh": 100, "hysteresis_kmh": 10})),
        )
        .await?;
    println!("rules: {fence} (300 m around the depot), {speed} (100 km/h); devices tagged {tag}");
    let mut devices = enroll_and_connect(args, admin, run, n, &tag).await?;
    // The fixes of the route: position every FIX_EVERY seconds.
    let mut fixes = Vec::new();
    let (mut north, mut t) = (2500.0, 0.0);
    for (dist, kmh) in ROUTE {
        let step = kmh / 3.6 * FIX_EVERY;
        let mut left = dist;
        while left > 0.0 {
            fixes.push((t, north));
            north -= step.min(left);
            left -= step;
            t += FIX_EVERY;
        }
    }
    let start = now_ms() - (t * 1000.0) as i64;
    println!("{n} vehicles drive {} fixes ({:.0} s of driving) at {}x", fixes.len(), t, args.speedup);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, mut d) in devices.drain(..).enumerate() {
        let fixes = fixes.clone();
        let speedup = args.speedup;
        let mut rng = synthetic::Rng::new(args.seed * 1000 + k as u64);
        tasks.push(tokio::spawn(async move {
            for (t, north) in fixes {
                // GPS jitter: ~4 m either way, as the 8 m accuracy the fix reports allows.
                let lat = DEPOT.0 + (north + 4.0 * rng.normal()) / M_PER_DEG;
                let lon = DEPOT.1 + 4.0 * rng.normal() / (M_PER_DEG * DEPOT.0.to_radians().cos());
                let at = start + (t * 1000.0) as i64;
                d.publish(&json!({"timestamp": at, "location": {"lat": lat, "lon": lon, "accuracy": 8}})).await?;
                d.acked(1).await?;
                tokio::time::sleep(Duration::from_secs_f64(FIX_EVERY / speedup)).await;
            }
            anyhow::Ok(d.id)
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!("driven in {:.1} s; waiting for the server to judge the last fixes", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for rule in [&fence, &speed] {
        let alerts = alerts_of(admin, rule).await?;
        let open = alerts.iter().filter(|a| a["state"] == "open").count();
        println!("{rule}: {} alerts ({} per vehicle), {open} still open", alerts.len(), alerts.len() as f64 / n as f64);
        for a in alerts.iter().take(3) {
            println!(
                "  {} {} opened {} resolved {} value {} {}",
                a["device"].as_str().unwrap_or("-"),
                a["kind"].as_str().unwrap_or("-"),
                a["opened_at"],
                a["resolved_at"],
                a["value"],
                a["detail"]
            );
        }
    }
    Ok(())
}

async fn sensors(args: &Args, admin: &Arc<Admin>, run: &str) -> Result<()> {
    let n = args.devices.unwrap_or(5);
    let tag = format!("{run}-sensors");
    let rule = format!("{run}-temperature");
    admin
        .send(
            reqwest::Method::POST,
            "/api/v1/alert-rules",
            Some(json!({"name": rule, "kind": "anomaly", "metric": "temperature", "applies_to": {"tags": [tag]}})),
        )
        .await?;
    println!("rule: {rule} (anomaly on temperature, default settings); devices tagged {tag}");
    let mut devices = enroll_and_connect(args, admin, run, n, &tag).await?;
    let shape = synthetic::Shape { len: args.readings, ..Default::default() };
    let minute = 60_000;
    let start = now_ms() - args.readings as i64 * minute;
    let mut tasks = Vec::new();
    let mut injected = Vec::new();
    for (k, mut d) in devices.drain(..).enumerate() {
        let series = synthetic::series(args.seed * 1000 + k as u64, &shape);
        injected.push((d.id.clone(), series.anomalies.clone()));
        let speedup = args.speedup;
        tasks.push(tokio::spawn(async move {
            for (i, v) in series.values.iter().enumerate() {
                d.publish(&json!({"timestamp": start + i as i64 * minute, "temperature": v})).await?;
                d.acked(1).await?;
                tokio::time::sleep(Duration::from_secs_f64(60.0 / speedup)).await;
            }
            anyhow::Ok(())
        }));
    }
    println!("{n} sensors send {} readings each at {}x", args.readings, args.speedup);
    for task in tasks {
        task.await??;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alerts = alerts_of(admin, &rule).await?;
    let (mut total_injected, mut found, mut false_alerts) = (0, 0, 0);
    for (id, anomalies) in &injected {
        let mine: Vec<i64> = alerts
            .iter()
            .filter(|a| a["device"].as_str() == Some(&format!("android/{id}")))
            .filter_map(|a| a["opened_at"].as_i64())
            .map(|at| (at - start) / minute)
            .collect();
        let hit = |i: usize| mine.iter().any(|&m| m >= i as i64 && m <= (i + synthetic::TOLERANCE) as i64);
        let f = anomalies.iter().filter(|(i, _)| hit(*i)).count();
        let wrong = mine
            .iter()
            .filter(|&&m| !anomalies.iter().any(|(i, _)| m >= *i as i64 && m <= (i + synthetic::TOLERANCE) as i64))
            .count();
        println!("  {id}: {} injected, {f} found, {} alerts, {wrong} matched nothing", anomalies.len(), mine.len());
        total_injected += anomalies.len();
        found += f;
        false_alerts += wrong;
    }
    let precision = if alerts.is_empty() { 1.0 } else { (alerts.len() - false_alerts) as f64 / alerts.len() as f64 };
    println!(
        "in all: {total_injected} injected, {found} found (recall {:.3}), {} alerts (precision {precision:.3})",
        found as f64 / total_injected.max(1) as f64,
        alerts.len()
    );
    Ok(())
}

/// The server's count of device messages handled over MQTT, from `/metrics`.
async fn handled(admin: &Admin) -> Result<u64> {
    let text =
        admin.http.get(format!("{}/metrics", admin.server)).bearer_auth(&admin.token).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("drover_device_messages_total{") && l.contains("mqtt"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn load(args: &Args, admin: &Arc<Admin>, run: &str) -> Result<()> {
    let n = args.devices.unwrap_or(1000);
    let tag = format!("{run}-load");
    println!("enrolling and connecting {n} devices");
    let devices = enroll_and_connect(args, admin, run, n, &tag).await?;
    let before = handled(admin).await?;
    let total_messages = (n * args.messages) as u64;
    let start = now_ms() - args.messages as i64 * 1000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let (messages, points) = (args.messages, args.points);
    for (k, mut d) in devices.into_iter().enumerate() {
        let mut rng = synthetic::Rng::new(args.seed * 1_000_000 + k as u64);
        tasks.push(tokio::spawn(async move {
            // A window of 16 unacknowledged publishes per device.
            let mut waiting = 0;
            for m in 0..messages {
                // A position (two values) moving ~10 m a second, and the rest as metrics
                // with a little noise.
                let mut body = json!({"timestamp": start + m as i64 * 1000,
                    "location": {"lat": DEPOT.0 + (k as f64 * 100.0 + m as f64 * 10.0) / M_PER_DEG, "lon": DEPOT.1}});
                for p in 0..points.saturating_sub(2) {
                    body[format!("m{p}")] = json!(20.0 + p as f64 + rng.normal());
                }
                d.publish(&body).await?;
                waiting += 1;
                if waiting == 16 {
                    d.acked(waiting).await?;
                    waiting = 0;
                }
            }
            d.acked(waiting).await?;
            anyhow::Ok(d)
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await??);
    }
    let published = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut done;
    loop {
        done = handled(admin).await? - before;
        if done >= total_messages || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let points_total = done * args.points as u64;
    println!(
        "{n} devices, {} messages of {} values: published in {:.1} s, handled {done}/{total_messages} in {:.1} s: {:.0} points/s ({:.0} messages/s)",
        args.messages,
        args.points,
        published.as_secs_f64(),
        elapsed.as_secs_f64(),
        points_total as f64 / elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64()
    );
    // What was stored, from the rollups (when the server keeps them): every point.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = admin
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/telemetry/metrics?name=m0&tag={tag}&resolution=hour&from={}", start - 3_600_000),
            None,
        )
        .await?;
    let stored: i64 = m["buckets"].as_array().into_iter().flatten().filter_map(|b| b["count"].as_i64()).sum();
    println!("rollups count {stored} points of m0 (of {total_messages} sent; 0 when the server keeps no rollups)");
    drop(keep);
    Ok(())
}
