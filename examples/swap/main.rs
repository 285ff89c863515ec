//! Hot swap under load: devices poll a running Drover server at a steady rate while the
//! Android plugin is replaced by new signed versions (cold: never compiled) and then, after
//! rollbacks, re-published (warm: the compiled artifact is cached); last, Android is rolled
//! back while a new ESP8266 version compiles. Prints failed requests, the poll rate and
//! latency held during the swaps, upload-to-serving times and rollback round trips.
//!
//!     cargo run --release --example swap -- --server http://127.0.0.1:18080 --data-dir /tmp/benchdata
//!
//! It registers a fresh publisher key for `drover` (the Android plugin's publisher) and
//! publishes versions `M.m.0` … `M.m.9` with `M.m` chosen per run, so run it against a
//! server whose catalog has not seen that pair (it says so if it has).

use anyhow::{Context, Result, bail};
use clap::Parser;
use drover::plugins::signing;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

#[derive(Parser, Debug)]
#[command(about = "Swap plugin versions while devices poll at a steady rate")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An admin token; default: DROVER_ADMIN_TOKEN, else `<data-dir>/admin-token`.
    #[arg(long, env = "DROVER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[arg(long, default_value = "drover-data")]
    data_dir: std::path::PathBuf,
    /// Devices polling (round robin).
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Polls per second held during the run.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Cold swaps, then as many rollback + warm re-publish pairs (0: poll 12 s without
    /// swapping, the baseline).
    #[arg(long, default_value_t = 10)]
    swaps: usize,
}

fn with_version(component: &[u8], from: &str, to: &str) -> Vec<u8> {
    let (old, new) = (format!("version = \"{from}\""), format!("version = \"{to}\""));
    assert_eq!(old.len(), new.len());
    let mut out = component.to_vec();
    let mut at = 0;
    while let Some(i) = out[at..].windows(old.len()).position(|w| w == old.as_bytes()) {
        out[at + i..at + i + new.len()].copy_from_slice(new.as_bytes());
        at += i + new.len();
    }
    out
}

async fn upload(
    http: &reqwest::Client,
    args: &Args,
    token: &str,
    component: Vec<u8>,
    sig: String,
) -> Result<(f64, f64)> {
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(component))
        .part("signature", reqwest::multipart::Part::text(sig));
    let started = Instant::now();
    let r = http.post(format!("{}/api/v1/plugins", args.server)).bearer_auth(token).multipart(form).send().await?;
    let client_ms = started.elapsed().as_secs_f64() * 1e3;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("upload: {status} {v} (a server that has seen these versions refuses them: use a fresh one)");
    }
    Ok((v["upload_to_serving_ms"].as_f64().unwrap_or(0.0), client_ms))
}

fn summary(name: &str, samples: &[(f64, f64)]) {
    let mut server: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let mut client: Vec<f64> = samples.iter().map(|s| s.1).collect();
    server.sort_by(f64::total_cmp);
    client.sort_by(f64::total_cmp);
    let med = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{name:<28} n={:<3} upload-to-serving (server) median {:.1} ms, max {:.1} ms; request round trip median {:.1} ms",
        samples.len(),
        med(&server),
        server.last().copied().unwrap_or(0.0),
        med(&client)
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let token = match &args.admin_token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(args.data_dir.join("admin-token"))
            .with_context(|| format!("reading {}/admin-token (or pass --admin-token)", args.data_dir.display()))?
            .trim()
            .to_string(),
    };
    let http = reqwest::Client::builder().pool_max_idle_per_host(512).build()?;
    let (private, public) = signing::generate()?;
    let r = http
        .post(format!("{}/api/v1/publisher-keys", args.server))
        .bearer_auth(&token)
        .json(&json!({"publisher": "drover", "public_key": public}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("registering the key: {}", r.text().await?);
    }
    let android = drover::plugins::first_party::PLUGINS.iter().find(|(n, _)| *n == "android").unwrap().1;
    let current = drover::plugins::Manifest::from_component(android)?.version;

    // Devices.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let enroll =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/android/fixtures/enroll.json"))?;
    let mut devices = Vec::new();
    for n in 0..args.devices {
        let id = format!("swap{run}-{n}");
        let r = http
            .post(format!("{}/agent/v1/android/enroll", args.server))
            .body(enroll.replace("354956090214718", &id))
            .send()
            .await?;
        let v: Value = r.json().await?;
        devices.push((
            format!("{}/agent/v1/android/devices/{id}/pending-operations", args.server),
            v["access_token"].as_str().context("enrollment answer")?.to_string(),
        ));
    }
    let devices = Arc::new(devices);

    // Steady polling.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let poller = {
        let (http, devices, stop, ok, failed, latency) =
            (http.clone(), devices.clone(), stop.clone(), ok.clone(), failed.clone(), latency.clone());
        let rate = args.rate;
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(512));
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                let (url, token) = devices[n % devices.len()].clone();
                n += 1;
                let (http, ok, failed, latency) = (http.clone(), ok.clone(), failed.clone(), latency.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let r = http.put(&url).bearer_auth(&token).body("[]").send().await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                            let _ = latency.lock().await.record(started.elapsed().as_micros() as u64);
                        }
                        Ok(r) => {
                            eprintln!("failed poll: {} {}", r.status(), r.text().await.unwrap_or_default());
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("failed poll: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let ok_before = ok.load(Ordering::Relaxed);

    if args.swaps == 0 {
        // The baseline: the same steady polling with nothing swapped.
        tokio::time::sleep(Duration::from_secs(12)).await;
    }
    let (major, minor) = (1 + run % 9, (run / 9) % 10);
    let mut cold = Vec::new();
    let mut last = Vec::new();
    for i in 0..args.swaps.min(10) {
        let v = format!("{major}.{minor}.{i}");
        let component = with_version(android, &current, &v);
        let sig = signing::encode_signature(&signing::sign(&private, &component)?);
        cold.push(upload(&http, &args, &token, component.clone(), sig).await?);
        last = component;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut warm = Vec::new();
    let mut rollbacks = Vec::new();
    let sig = signing::encode_signature(&signing::sign(&private, &last)?);
    for _ in 0..args.swaps.min(10) {
        let t = Instant::now();
        let r =
            http.post(format!("{}/api/v1/plugins/android/rollback", args.server)).bearer_auth(&token).send().await?;
        if !r.status().is_success() {
            bail!("rollback: {}", r.text().await?);
        }
        rollbacks.push(t.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(250)).await;
        warm.push(upload(&http, &args, &token, last.clone(), sig.clone()).await?);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Rollbacks while another plugin's new version compiles: the catalog's lock (which
    // orders every change) must not wait for a compile. Each rollback starts 30 ms into a
    // cold upload of an ESP8266 version (compiling takes ~250 ms); Android is then
    // re-published (warm).
    let esp8266 = drover::plugins::first_party::PLUGINS.iter().find(|(n, _)| *n == "esp8266").unwrap().1;
    let esp_current = drover::plugins::Manifest::from_component(esp8266)?.version;
    let mut contended = Vec::new();
    for i in 0..args.swaps.min(5) {
        let component = with_version(esp8266, &esp_current, &format!("{major}.{minor}.{i}"));
        let esp_sig = signing::encode_signature(&signing::sign(&private, &component)?);
        let rollback = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let t = Instant::now();
            let r = http
                .post(format!("{}/api/v1/plugins/android/rollback", args.server))
                .bearer_auth(&token)
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("rollback: {}", r.text().await?);
            }
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        let (uploaded, rolled_back) = tokio::join!(upload(&http, &args, &token, component, esp_sig), rollback);
        uploaded?;
        contended.push(rolled_back?);
        tokio::time::sleep(Duration::from_millis(250)).await;
        upload(&http, &args, &token, last.clone(), sig.clone()).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    poller.await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let h = latency.lock().await;
    let polls = ok.load(Ordering::Relaxed) - ok_before;
    println!(
        "polls: {polls} in {:.1} s = {:.0}/s; failed requests: {}; poll latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        elapsed.as_secs_f64(),
        polls as f64 / elapsed.as_secs_f64(),
        failed.load(Ordering::Relaxed),
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3,
    );
    if !cold.is_empty() {
        summary("cold (new version, compile)", &cold);
        summary("warm (cached artifact)", &warm);
        rollbacks.sort_by(f64::total_cmp);
        println!(
            "rollback request round trip   median {:.1} ms, max {:.1} ms",
            rollbacks[rollbacks.len() / 2],
            rollbacks[rollbacks.len() - 1]
        );
        contended.sort_by(f64::total_cmp);
        println!(
            "rollback while another plugin compiles: median {:.1} ms, max {:.1} ms (n={})",
            contended[contended.len() / 2],
            contended[contended.len() - 1],
            contended.len()
        );
    }
    if failed.load(Ordering::Relaxed) > 0 {
        bail!("requests failed during swaps");
    }
    Ok(())
}
