//! A simulator of ESP8266 boards speaking the esp8266 plugin's protocol
//! (plugins/esp8266/README.md): each board enrolls over HTTP, holds an MQTT connection,
//! carries out what it is sent (LED, interval, reboot, firmware update with progress)
//! and publishes telemetry, in JSON or the compact binary form.
//!
//!     cargo run --example esp8266-sim -- --boards 5 --seconds 60 --mqtt 127.0.0.1:18830
//!
//! Rollouts (docs/rollouts.md): a board downloads the image its `ota` command names,
//! checks its SHA-256 and reports progress, then runs the new version; `--fail-fraction
//! 0.3` makes about that share of updates fail after the download (flash verify error),
//! to watch a rollout abort and roll back.
//!
//! Then send a board something (its id is printed at enrollment):
//!     curl -X POST $SERVER/api/v1/operations -H "Authorization: Bearer $ADMIN" \
//!       -d '{"code":"LED","payload":{"state":"blink"},"targets":{"devices":[{"type":"esp8266","id":"esp-…"}]}}'

use anyhow::{Context, Result};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(about = "Simulate ESP8266 boards against a running Drover server")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The MQTT broker the boards connect to (Drover's embedded one).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    #[arg(long, default_value_t = 3)]
    boards: usize,
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Speak the compact binary form instead of JSON.
    #[arg(long)]
    binary: bool,
    /// The firmware version the boards run at first.
    #[arg(long, default_value = "1.0.3")]
    firmware: String,
    /// Share of firmware updates that fail (0 to 1), chosen per board and update.
    #[arg(long, default_value_t = 0.0)]
    fail_fraction: f64,
}

#[derive(Default)]
struct Counts {
    commands: AtomicU64,
    telemetry: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let counts = Arc::new(Counts::default());
    let mut boards = Vec::new();
    for n in 0..args.boards {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let chip = format!("{:08x}", nanos.wrapping_add(n as u32 * 7919));
        let body = json!({"chip_id": chip, "model": "ESP-12F", "firmware": args.firmware, "sdk": "3.0.5",
                          "encoding": if args.binary { "binary" } else { "json" }});
        let r = http.post(format!("{}/agent/v1/esp8266/enroll", args.server)).json(&body).send().await?;
        let v: Value = r.json().await?;
        let id = v["device_id"].as_str().with_context(|| format!("enrollment answered {v}"))?.to_string();
        let token = v["access_token"].as_str().context("no access token")?.to_string();
        println!("board {id} enrolled");
        boards.push(tokio::spawn(board(args.clone(), id, token, counts.clone())));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    for b in boards {
        b.abort();
    }
    println!(
        "{} boards for {} s: {} commands carried out, {} telemetry reports",
        args.boards,
        args.seconds,
        counts.commands.load(Ordering::Relaxed),
        counts.telemetry.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn board(args: Args, id: String, token: String, counts: Arc<Counts>) -> Result<()> {
    let (host, port) = args.mqtt.rsplit_once(':').context("--mqtt HOST:PORT")?;
    let mut options = MqttOptions::new(id.clone(), host, port.parse()?);
    options.set_credentials(format!("esp8266/{id}"), token);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 64);
    let base = format!("drover/esp8266/{id}");
    client.subscribe(format!("{base}/{}", if args.binary { "cmd/bin" } else { "cmd" }), QoS::AtLeastOnce).await?;
    let mut interval = Duration::from_secs(5);
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            event = events.poll() => {
                let Event::Incoming(Packet::Publish(p)) = event? else { continue };
                for op in parse(&p.payload, args.binary) {
                    counts.commands.fetch_add(1, Ordering::Relaxed);
                    println!("{id}: {op}");
                    let op_id = op["id"].as_u64().unwrap_or(0);
                    match op["op"].as_str() {
                        Some("interval") => {
                            interval = Duration::from_secs(op["s"].as_u64().unwrap_or(5));
                            tick = tokio::time::interval(interval);
                        }
                        Some("ota") => {
                            let (client, base, id, fail) = (client.clone(), base.clone(), id.clone(), fails(&id, op_id, args.fail_fraction));
                            tokio::spawn(async move {
                                if let Err(e) = ota(&client, &base, &op, fail).await {
                                    println!("{id}: update {op_id} failed: {e}");
                                }
                            });
                            continue;
                        }
                        _ => {}
                    }
                    if args.binary {
                        let mut frame = vec![0x11];
                        frame.extend_from_slice(&(op_id as u32).to_be_bytes());
                        frame.extend_from_slice(&[0, 100]);
                        client.publish(format!("{base}/bin"), QoS::AtLeastOnce, false, frame).await?;
                    } else {
                        client.publish(format!("{base}/reply"), QoS::AtLeastOnce, false,
                            json!({"results": [{"id": op_id, "status": "ok"}]}).to_string()).await?;
                    }
                }
            }
            _ = tick.tick() => {
                counts.telemetry.fetch_add(1, Ordering::Relaxed);
                let t = 20.0 + (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() % 10) as f32;
                if args.binary {
                    let mut frame = vec![0x10, 0, 0, 0, 0, 2, 1];
                    frame.extend_from_slice(&t.to_be_bytes());
                    frame.push(3);
                    frame.extend_from_slice(&(-60.0f32).to_be_bytes());
                    client.publish(format!("{base}/bin"), QoS::AtLeastOnce, false, frame).await?;
                } else {
                    client.publish(format!("{base}/telemetry"), QoS::AtLeastOnce, false,
                        json!({"temp": t, "hum": 40.5, "rssi": -60, "heap": 31200}).to_string()).await?;
                }
            }
        }
    }
}

/// Whether update `op` on board `id` fails: a stable draw, so a rerun fails the same ones.
fn fails(id: &str, op: u64, fraction: f64) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id, op).hash(&mut h);
    (h.finish() % 10_000) as f64 / 10_000.0 < fraction
}

/// Carry out an `ota` command as the firmware does: download (reporting progress),
/// verify the SHA-256, flash, then `done` with the new version (or `failed`).
async fn ota(client: &AsyncClient, base: &str, op: &Value, fail: bool) -> Result<()> {
    use sha2::Digest;
    let id = op["id"].as_u64().unwrap_or(0);
    let topic = format!("{base}/ota");
    let report = |v: Value| client.publish(topic.clone(), QoS::AtLeastOnce, false, v.to_string());
    let url = op["url"].as_str().context("no url")?;
    let mut response = reqwest::get(url).await?.error_for_status()?;
    let size = op["size"].as_u64().unwrap_or(0).max(1);
    let (mut got, mut hasher, mut last) = (0u64, sha2::Sha256::new(), 0);
    while let Some(chunk) = response.chunk().await? {
        got += chunk.len() as u64;
        hasher.update(&chunk);
        let progress = (got * 100 / size).min(100);
        if progress >= last + 25 {
            last = progress;
            report(json!({"id": id, "state": "downloading", "progress": progress})).await?;
        }
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if Some(digest.as_str()) != op["sha256"].as_str() {
        report(json!({"id": id, "state": "failed", "error": "sha256 mismatch"})).await?;
        return Ok(());
    }
    report(json!({"id": id, "state": "flashing", "progress": 0})).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if fail {
        report(json!({"id": id, "state": "failed", "error": "flash verify failed"})).await?;
        return Ok(());
    }
    report(json!({"id": id, "state": "rebooting"})).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let version = op["version"].as_str().unwrap_or("?");
    report(json!({"id": id, "state": "done", "progress": 100, "version": version})).await?;
    Ok(())
}

/// Commands from a `cmd` (JSON) or `cmd/bin` (binary) frame, as JSON for printing.
fn parse(payload: &[u8], binary: bool) -> Vec<Value> {
    if !binary {
        return serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v["ops"].as_array().cloned())
            .unwrap_or_default();
    }
    let mut ops = Vec::new();
    let (Some(1), Some(&count)) = (payload.first().copied(), payload.get(1)) else { return ops };
    let mut at = 2;
    for _ in 0..count {
        let Some(id) = payload.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap())) else { break };
        let Some(&opcode) = payload.get(at + 4) else { break };
        at += 5;
        let op = match opcode {
            0x01 => json!({"id": id, "op": "reboot"}),
            0x02 => {
                let Some(s) = payload.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap())) else { break };
                at += 4;
                json!({"id": id, "op": "interval", "s": s})
            }
            0x03 => {
                let state = payload.get(at).copied().unwrap_or(0);
                at += 1;
                let name = ["off", "on", "blink"].get(state as usize).copied().unwrap_or("?");
                json!({"id": id, "op": "led", "state": name})
            }
            0x04 | 0x05 => {
                // size:u32 sha256:[32] url_len url version_len version
                let Some(size) = payload.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap())) else {
                    break;
                };
                let sha: String =
                    payload.get(at + 4..at + 36).unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect();
                let url_at = at + 36;
                let Some(&url_len) = payload.get(url_at) else { break };
                let url_end = url_at + 1 + url_len as usize;
                let url = String::from_utf8_lossy(payload.get(url_at + 1..url_end).unwrap_or_default());
                let Some(&ver_len) = payload.get(url_end) else { break };
                let version = String::from_utf8_lossy(
                    payload.get(url_end + 1..url_end + 1 + ver_len as usize).unwrap_or_default(),
                );
                at = url_end + 1 + ver_len as usize;
                json!({"id": id, "op": "ota", "url": url, "sha256": sha, "size": size, "version": version,
                       "rollback": opcode == 0x05})
            }
            _ => break,
        };
        ops.push(op);
    }
    ops
}
