//! `drover token …` and `drover audit` (binary only): admin tokens and the audit trail of a
//! running server, over its admin API, as `plugin list|show|…` are.

use crate::ServerArgs;
use crate::lifecycle::call;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

/// A time in the API's form (ms since the epoch) as RFC 3339, to the second, UTC.
fn when(ms: &Value) -> String {
    match ms.as_i64() {
        Some(ms) if ms >= 0 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
        }
        _ => "-".into(),
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub async fn token_list(server: ServerArgs) -> anyhow::Result<()> {
    let body = call(&server, Method::GET, "admin-tokens", None).await?;
    println!("{:<24} {:<9} {:<8} {:<21} expires", "name", "role", "state", "created");
    for t in body["items"].as_array().into_iter().flatten() {
        let expires = if t["expires_at"].is_null() { "never".into() } else { when(&t["expires_at"]) };
        println!(
            "{:<24} {:<9} {:<8} {:<21} {expires}",
            text(&t["name"]),
            text(&t["role"]),
            text(&t["state"]),
            when(&t["created_at"])
        );
    }
    Ok(())
}

pub async fn token_create(
    name: String,
    role: String,
    expires_in: Option<humantime::Duration>,
    server: ServerArgs,
) -> anyhow::Result<()> {
    let expires_in = expires_in.map(|d| d.as_secs().max(1));
    let body = call(
        &server,
        Method::POST,
        "admin-tokens",
        Some(json!({ "name": name, "role": role, "expires_in": expires_in })),
    )
    .await?;
    let expires = if body["expires_at"].is_null() { "never".into() } else { when(&body["expires_at"]) };
    eprintln!(
        "created {} (role {}, expires {expires}); the token is shown this once:",
        text(&body["name"]),
        text(&body["role"])
    );
    println!("{}", text(&body["token"]));
    Ok(())
}

pub async fn token_revoke(name: String, server: ServerArgs) -> anyhow::Result<()> {
    let path = format!("admin-tokens/{}", crate::lifecycle::segment(&name));
    call(&server, Method::DELETE, &path, None).await?;
    println!("revoked {name}");
    Ok(())
}

/// Filters of `drover audit`, as the API takes them.
#[derive(clap::Args)]
pub struct AuditFilter {
    /// Only this token's actions.
    #[arg(long)]
    actor: Option<String>,
    /// Only this route, e.g. "POST /api/v1/groups".
    #[arg(long)]
    action: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    target: Option<String>,
    /// ok, refused or failed.
    #[arg(long)]
    outcome: Option<String>,
    /// Only this recent: 1h, 2d, 30m …
    #[arg(long)]
    since: Option<humantime::Duration>,
    /// At most this many entries, the newest.
    #[arg(long, default_value_t = 50)]
    last: usize,
}

pub async fn audit(filter: AuditFilter, server: ServerArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    for (key, value) in
        [("actor", &filter.actor), ("action", &filter.action), ("target", &filter.target), ("outcome", &filter.outcome)]
    {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    if let Some(d) = filter.since {
        let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        query.push(("since", now.saturating_sub(d.as_millis() as u64).to_string()));
    }
    // Pages oldest first; keep the newest `last`.
    let mut rows: std::collections::VecDeque<Value> = Default::default();
    let mut after = 0i64;
    loop {
        let mut q = query.clone();
        q.push(("after", after.to_string()));
        q.push(("limit", "1000".into()));
        let encoded: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", crate::lifecycle::segment(v))).collect();
        let body = call(&server, Method::GET, &format!("audit?{}", encoded.join("&")), None).await?;
        for e in body["items"].as_array().into_iter().flatten() {
            rows.push_back(e.clone());
            if rows.len() > filter.last {
                rows.pop_front();
            }
        }
        match body["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    for e in rows {
        let action = text(&e["action"]);
        let route = action.split_once(' ').map_or(action, |(_, r)| r);
        let target = text(&e["target"]);
        let target = if target == route { String::new() } else { format!(" -> {target}") };
        println!(
            "{}  {:<24} {:<8} {:<4} {action}{target}",
            when(&e["at"]),
            format!("{} ({})", text(&e["actor"]), text(&e["role"])),
            text(&e["outcome"]),
            e["status"].as_i64().map(|s| s.to_string()).unwrap_or_default(),
        );
    }
    Ok(())
}
