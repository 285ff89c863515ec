//! `drover fleet`, `drover devices …`, `drover ops …`, `drover groups …` (binary only):
//! the day-to-day commands of an admin, over the admin API of a running server. Every
//! command prints a table for people or, with `--output json`, the API's answer.

use crate::ServerArgs;
use crate::admin_commands::{printed, text, when};
use crate::lifecycle::{call, segment};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// A device as `TYPE/ID` on the command line.
pub fn device_ref(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('/') {
        Some((t, id)) if !t.is_empty() && !id.is_empty() => Ok((t.to_string(), id.to_string())),
        _ => anyhow::bail!("`{s}`: name a device as TYPE/ID, e.g. android/356000000000001"),
    }
}

fn device_path(t: &str, id: &str) -> String {
    format!("devices/{}/{}", segment(t), segment(id))
}

pub async fn fleet(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "fleet", None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    let total: i64 = body["devices"].as_array().into_iter().flatten().filter_map(|d| d["count"].as_i64()).sum();
    // `online_now` is the server's: a tenant's answer has none.
    match body["online_now"].as_i64() {
        Some(online) => {
            println!("devices {total}, called in within 15 min {}, online for push {online}", body["seen_last_15_min"])
        }
        None => println!("devices {total}, called in within 15 min {}", body["seen_last_15_min"]),
    }
    println!("{:<16} {:<12} {:>9}", "type", "status", "devices");
    for d in body["devices"].as_array().into_iter().flatten() {
        println!("{:<16} {:<12} {:>9}", text(&d["device_type"]), text(&d["status"]), d["count"]);
    }
    println!("{:<29} {:>9}", "operation state", "count");
    for o in body["operations"].as_array().into_iter().flatten() {
        println!("{:<29} {:>9}", text(&o["state"]), o["count"]);
    }
    Ok(())
}

/// Filters of `drover devices list`, as the API takes them.
#[derive(clap::Args)]
pub struct DeviceFilter {
    /// Only this device type.
    #[arg(long = "type")]
    device_type: Option<String>,
    /// registered, active, unreachable or removed.
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    tag: Option<String>,
    #[arg(long)]
    group: Option<String>,
    #[arg(long)]
    owner: Option<String>,
    /// A substring of the device id or name.
    #[arg(long)]
    search: Option<String>,
    /// key=value of the device's reported metadata.
    #[arg(long)]
    metadata: Option<String>,
    /// At most this many devices.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

pub async fn devices_list(f: DeviceFilter, server: ServerArgs) -> anyhow::Result<()> {
    let mut query = String::new();
    for (k, v) in [
        ("type", &f.device_type),
        ("status", &f.status),
        ("tag", &f.tag),
        ("group", &f.group),
        ("owner", &f.owner),
        ("q", &f.search),
        ("metadata", &f.metadata),
    ] {
        if let Some(v) = v {
            query.push_str(&format!("&{k}={}", segment(v)));
        }
    }
    let mut items = Vec::new();
    let mut after = 0i64;
    while items.len() < f.limit {
        let page = (f.limit - items.len()).min(1000);
        let body = call(&server, Method::GET, &format!("devices?limit={page}&after={after}{query}"), None).await?;
        items.extend(body["items"].as_array().cloned().unwrap_or_default());
        match body["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    if printed(&server, &json!({"items": items})) {
        return Ok(());
    }
    println!("{:<10} {:<24} {:<12} {:<20} {:<21} tags", "type", "id", "status", "owner", "last seen");
    for d in &items {
        let tags: Vec<&str> = d["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "{:<10} {:<24} {:<12} {:<20} {:<21} {}",
            text(&d["device_type"]),
            text(&d["device_id"]),
            text(&d["status"]),
            d["owner"].as_str().unwrap_or("-"),
            when(&d["last_seen_at"]),
            tags.join(",")
        );
    }
    Ok(())
}

pub async fn devices_show(device: String, server: ServerArgs) -> anyhow::Result<()> {
    let (t, id) = device_ref(&device)?;
    let body = call(&server, Method::GET, &device_path(&t, &id), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{t}/{id}  {}  {}", text(&body["name"]), text(&body["status"]));
    println!("owner      {} ({})", body["owner"].as_str().unwrap_or("-"), text(&body["ownership"]));
    println!("enrolled   {}", when(&body["enrolled_at"]));
    println!("last seen  {}", when(&body["last_seen_at"]));
    let tags: Vec<&str> = body["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    println!("tags       {}", if tags.is_empty() { "none".into() } else { tags.join(", ") });
    for (k, v) in body["metadata"].as_object().into_iter().flatten() {
        println!("meta       {k} = {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
    }
    for p in body["telemetry"].as_array().into_iter().flatten() {
        println!("telemetry  {} = {} at {}", text(&p["name"]), p["value"], when(&p["at"]));
    }
    Ok(())
}

/// Upload a CSV of devices to pre-register, with a progress bar over the bytes sent;
/// the server checks every row first and names the line of any error.
pub async fn devices_import(
    file: PathBuf,
    self_enroll: bool,
    tenant: Option<String>,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let total = bytes.len() as u64;
    let bar = if server.json() { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("uploading {}", file.display()));
    let sent = bar.clone();
    // The body as a stream of 64 KiB chunks, each counted as it is handed to the connection.
    let chunks: Vec<bytes::Bytes> = bytes.chunks(64 << 10).map(bytes::Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
        sent.inc(c.len() as u64);
        Ok::<_, std::io::Error>(c)
    }));
    let (base, token) = server.remote()?;
    let url = format!("{base}/api/v1/devices/import");
    let mut query = vec![("self_enroll", self_enroll.to_string())];
    query.extend(tenant.map(|t| ("tenant", t)));
    let request = crate::client()?
        .post(&url)
        .query(&query)
        .bearer_auth(&token)
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .header(reqwest::header::CONTENT_LENGTH, total)
        .body(reqwest::Body::wrap_stream(stream));
    let response = request.send().await.map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"));
    bar.finish_and_clear();
    let body = crate::answer(response?).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!(
        "imported {}: {} rows, {} new devices, {} already known; batch {}",
        file.display(),
        body["rows"],
        body["registered"],
        body["already_known"],
        text(&body["batch"])
    );
    Ok(())
}

pub async fn devices_remove(device: String, server: ServerArgs) -> anyhow::Result<()> {
    let (t, id) = device_ref(&device)?;
    let body = call(&server, Method::DELETE, &device_path(&t, &id), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("removed {t}/{id}; {} queued operations cancelled", body["cancelled_operations"]);
    Ok(())
}

pub async fn devices_revoke_credentials(device: String, server: ServerArgs) -> anyhow::Result<()> {
    let (t, id) = device_ref(&device)?;
    let body = call(&server, Method::POST, &format!("{}/revoke-credentials", device_path(&t, &id)), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{t}/{id}: {} live credentials revoked; its sessions end", body["revoked"]);
    Ok(())
}

pub async fn devices_certificates(device: String, server: ServerArgs) -> anyhow::Result<()> {
    let (t, id) = device_ref(&device)?;
    let body = call(&server, Method::GET, &format!("{}/certificates", device_path(&t, &id)), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    let now = drover::store::now_ms();
    println!("{:<34} {:<22} {:<22} state", "serial", "issued", "valid until");
    for c in body.as_array().into_iter().flatten() {
        let state = if !c["revoked_at"].is_null() {
            format!("revoked {}", when(&c["revoked_at"]))
        } else if c["not_after"].as_i64().is_some_and(|t| t <= now) {
            "expired".to_string()
        } else {
            "live".to_string()
        };
        println!(
            "{:<34} {:<22} {:<22} {state}",
            c["serial"].as_str().unwrap_or_default(),
            when(&c["issued_at"]),
            when(&c["not_after"]),
        );
    }
    Ok(())
}

pub async fn devices_revoke_certificate(device: String, serial: String, server: ServerArgs) -> anyhow::Result<()> {
    let (t, id) = device_ref(&device)?;
    let path = format!("{}/certificates/{}/revoke", device_path(&t, &id), segment(&serial));
    let body = call(&server, Method::POST, &path, None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{t}/{id}: certificate {serial} revoked; refused from its next request or connection");
    Ok(())
}

pub async fn devices_psk(
    device: String,
    identity: Option<String>,
    key: Option<String>,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let (t, id) = device_ref(&device)?;
    let mut body = serde_json::Map::new();
    if let Some(i) = identity {
        body.insert("identity".into(), i.into());
    }
    if let Some(k) = key {
        body.insert("key".into(), k.into());
    }
    let path = format!("{}/psk", device_path(&t, &id));
    let body = call(&server, Method::PUT, &path, Some(serde_json::Value::Object(body))).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{t}/{id}: pre-shared key for LwM2M over DTLS (shown this once)");
    println!("identity: {}", body["identity"].as_str().unwrap_or_default());
    println!("key:      {}", body["key"].as_str().unwrap_or_default());
    Ok(())
}

pub async fn devices_tag(
    device: String,
    add: Vec<String>,
    remove: Vec<String>,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let (t, id) = device_ref(&device)?;
    let path = device_path(&t, &id);
    let now = call(&server, Method::GET, &path, None).await?;
    let mut tags: Vec<String> =
        now["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
    tags.retain(|t| !remove.contains(t));
    for a in add {
        if !tags.contains(&a) {
            tags.push(a);
        }
    }
    let body = call(&server, Method::PUT, &format!("{path}/tags"), Some(json!({"tags": tags}))).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    let tags: Vec<&str> = body["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    println!("{t}/{id} tags: {}", if tags.is_empty() { "none".into() } else { tags.join(", ") });
    Ok(())
}

/// What `drover ops add` sends an operation to.
#[derive(clap::Args)]
pub struct Targets {
    /// A device, TYPE/ID (repeat the flag).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Every device of a group (repeat the flag).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Every device with a tag (repeat the flag).
    #[arg(long = "tag")]
    tags: Vec<String>,
}

pub async fn ops_add(
    code: String,
    payload: Option<String>,
    targets: Targets,
    ttl: Option<humantime::Duration>,
    watch: bool,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let mut devices = Vec::new();
    for d in &targets.devices {
        let (t, id) = device_ref(d)?;
        devices.push(json!({"type": t, "id": id}));
    }
    if devices.is_empty() && targets.groups.is_empty() && targets.tags.is_empty() {
        anyhow::bail!("name the targets: --device TYPE/ID, --group NAME or --tag TAG");
    }
    let mut body =
        json!({"code": code, "targets": {"devices": devices, "groups": targets.groups, "tags": targets.tags}});
    if let Some(p) = payload {
        // `@file` reads the payload from a file, as curl does.
        let text = match p.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?,
            None => p,
        };
        body["payload"] = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--payload is not JSON: {e}"))?;
    }
    if let Some(ttl) = ttl {
        body["ttl_secs"] = json!(ttl.as_secs().max(1));
    }
    let added = call(&server, Method::POST, "operations", Some(body)).await?;
    let activity = added["activity"]["id"].as_i64().unwrap_or(0);
    if !watch {
        if printed(&server, &added) {
            return Ok(());
        }
        println!("activity {activity}: {} operations queued", added["operations"]);
        return Ok(());
    }
    if !server.json() {
        eprintln!("activity {activity}: {} operations queued", added["operations"]);
    }
    ops_watch(activity, None, server).await
}

pub async fn ops_show(id: i64, server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, &format!("operations/{id}"), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    let device = &body["device"];
    println!(
        "operation {id}  {}  {}  {}/{}  activity {}",
        text(&body["code"]),
        text(&body["state"]),
        text(&device["type"]),
        text(&device["id"]),
        body["activity"]
    );
    println!("attempts {} of {}", body["attempts"], body["max_attempts"]);
    for t in body["transitions"].as_array().into_iter().flatten() {
        println!(
            "{}  {:<11} -> {:<11} {}",
            when(&t["at"]),
            text(&t["from_state"]),
            text(&t["to_state"]),
            text(&t["actor"])
        );
    }
    if let Some(r) = body["response"].as_str() {
        println!("response {r}");
    }
    Ok(())
}

pub async fn ops_list(
    device: Option<String>,
    activity: Option<i64>,
    state: Option<String>,
    last: usize,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let mut query = format!("before=9007199254740991&limit={}", last.clamp(1, 1000));
    if let Some(d) = &device {
        let (t, id) = device_ref(d)?;
        query.push_str(&format!("&device_type={}&device_id={}", segment(&t), segment(&id)));
    }
    if let Some(a) = activity {
        query.push_str(&format!("&activity={a}"));
    }
    if let Some(s) = &state {
        query.push_str(&format!("&state={}", segment(s)));
    }
    let body = call(&server, Method::GET, &format!("operations?{query}"), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{:>8} {:>8} {:<28} {:<11} {:<8} {:<21} device", "id", "activity", "code", "state", "attempts", "updated");
    for o in body["items"].as_array().into_iter().flatten() {
        println!(
            "{:>8} {:>8} {:<28} {:<11} {:<8} {:<21} {}/{}",
            o["id"],
            o["activity"],
            text(&o["code"]),
            text(&o["state"]),
            format!("{}/{}", o["attempts"], o["max_attempts"]),
            when(&o["updated_at"]),
            text(&o["device"]["type"]),
            text(&o["device"]["id"])
        );
    }
    Ok(())
}

pub async fn ops_cancel(id: i64, activity: bool, server: ServerArgs) -> anyhow::Result<()> {
    let path = if activity { format!("activities/{id}/cancel") } else { format!("operations/{id}/cancel") };
    let body = call(&server, Method::POST, &path, None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("cancelled {} operation(s)", body["cancelled"]);
    Ok(())
}

/// A state an operation ends in (REPEATED too: superseded by a newer command).
fn terminal(state: &str) -> bool {
    drover::ops::State::parse(state).is_some_and(drover::ops::State::is_terminal)
}

/// Follow an activity until every operation has ended (or `timeout`), with a progress
/// bar; prints the counts per state at the end. Fails if any operation ended in ERROR.
pub async fn ops_watch(activity: i64, timeout: Option<humantime::Duration>, server: ServerArgs) -> anyhow::Result<()> {
    let deadline = timeout.map(|t| std::time::Instant::now() + Duration::from(t));
    let bar = if server.json() { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("activity {prefix} [{bar:30}] {pos}/{len} finished  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(activity.to_string());
    let body = loop {
        let body = call(&server, Method::GET, &format!("activities/{activity}"), None).await?;
        let counts = body["counts"].as_object().cloned().unwrap_or_default();
        let total: i64 = counts.values().filter_map(Value::as_i64).sum();
        let done: i64 = counts.iter().filter(|(s, _)| terminal(s)).filter_map(|(_, n)| n.as_i64()).sum();
        bar.set_length(total.max(0) as u64);
        bar.set_position(done.max(0) as u64);
        bar.set_message(counts.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", "));
        if total > 0 && done == total {
            break body;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            bar.abandon();
            anyhow::bail!("activity {activity} not finished when the timeout passed");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    let errors = body["counts"]["ERROR"].as_i64().unwrap_or(0);
    if !printed(&server, &body) {
        let counts = body["counts"].as_object().cloned().unwrap_or_default();
        let line: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
        println!("activity {activity} finished: {}", line.join(", "));
    }
    if errors > 0 {
        anyhow::bail!("{errors} operation(s) of activity {activity} ended in ERROR");
    }
    Ok(())
}

pub async fn groups_list(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "groups", None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("{:<24} {:<8} {:>8}  description", "name", "kind", "devices");
    for g in body["items"].as_array().into_iter().flatten() {
        let kind = if g["query"].is_null() { "static" } else { "dynamic" };
        // A tenant's group is named TENANT/NAME, so the name says whose it is.
        println!("{:<24} {kind:<8} {:>8}  {}", text(&g["name"]), g["devices"], text(&g["description"]));
    }
    Ok(())
}

pub async fn groups_show(name: String, server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, &format!("groups/{}", segment(&name)), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    let kind = if body["query"].is_null() { "static" } else { "dynamic" };
    println!("{name}  {kind}  {} devices  {}", body["devices"], text(&body["description"]));
    if !body["query"].is_null() {
        println!("query {}", body["query"]);
    }
    Ok(())
}

pub async fn groups_create(
    name: String,
    description: Option<String>,
    query: Option<String>,
    tenant: Option<String>,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let mut body = json!({"name": name, "description": description.unwrap_or_default(), "tenant": tenant});
    if let Some(q) = query {
        body["query"] = serde_json::from_str(&q).map_err(|e| anyhow::anyhow!("--query is not JSON: {e}"))?;
    }
    let created = call(&server, Method::POST, "groups", Some(body)).await?;
    if printed(&server, &created) {
        return Ok(());
    }
    println!("created group {} ({} devices)", text(&created["name"]), created["devices"]);
    Ok(())
}

pub async fn groups_add(name: String, devices: Vec<String>, server: ServerArgs) -> anyhow::Result<()> {
    let mut refs = Vec::new();
    for d in &devices {
        let (t, id) = device_ref(d)?;
        refs.push(json!({"type": t, "id": id}));
    }
    let path = format!("groups/{}/members", segment(&name));
    let body = call(&server, Method::POST, &path, Some(json!({"devices": refs}))).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("added {} device(s) to {name}", body["added"]);
    Ok(())
}

pub async fn groups_remove(name: String, server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::DELETE, &format!("groups/{}", segment(&name)), None).await?;
    if printed(&server, &body) {
        return Ok(());
    }
    println!("deleted group {name}");
    Ok(())
}
