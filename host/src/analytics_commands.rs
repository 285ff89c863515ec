//! `drover telemetry …`, `drover alert-rules …`, `drover alerts …` (binary only): the
//! analytics of a running server over its admin API (docs/analytics.md). Tables for
//! people, or the API's answer with `--output json`.

use crate::ServerArgs;
use crate::admin_commands::{printed, text, when};
use crate::fleet_commands::device_ref;
use crate::lifecycle::{call, segment};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

#[derive(Subcommand)]
pub enum TelemetryCommand {
    /// A device's metric at a resolution: count, min, mean, max, last per bucket.
    Series {
        /// TYPE/ID.
        device: String,
        /// The metric, e.g. battery.
        name: String,
        #[command(flatten)]
        range: Range,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A metric over a group, a tag or a device type (the fleet when none): devices
    /// reporting, and count, min, mean, max of their points per bucket.
    Metric {
        name: String,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long = "type")]
        device_type: Option<String>,
        #[command(flatten)]
        range: Range,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// A time range and resolution.
#[derive(clap::Args)]
pub struct Range {
    /// minute or hour.
    #[arg(long, default_value = "hour")]
    resolution: String,
    /// How far back, e.g. 6h, 2d [default: 24h at hour, 2h at minute].
    #[arg(long)]
    since: Option<humantime::Duration>,
}

impl Range {
    fn query(&self) -> String {
        let mut q = format!("resolution={}", segment(&self.resolution));
        if let Some(s) = self.since {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            q.push_str(&format!("&from={}", now.saturating_sub(*s).as_millis()));
        }
        q
    }
}

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Every alert rule: kind, enabled, what it applies to.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One rule, as JSON.
    Show {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Add a rule from its JSON (inline, or @FILE), e.g.
    /// '{"name": "depot", "kind": "geofence", "shape": {"circle": {"lat": 6.9271, "lon": 79.8612, "radius_m": 200}}}'.
    Add {
        spec: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Replace a rule with this JSON (inline, or @FILE); same kind.
    Update {
        name: String,
        spec: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a rule; its open alerts are resolved.
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
pub enum AlertsCommand {
    /// Alerts, newest first.
    List {
        /// open or resolved.
        #[arg(long)]
        state: Option<String>,
        /// geofence, speed, threshold or anomaly.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        /// TYPE/ID.
        #[arg(long)]
        device: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One alert with what the rule saw.
    Show {
        id: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Resolve an open alert by hand.
    Resolve {
        id: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    }
}

pub async fn telemetry(command: TelemetryCommand) -> anyhow::Result<()> {
    let (server, body, per_device) = match command {
        TelemetryCommand::Series { device, name, range, server } => {
            let (t, id) = device_ref(&device)?;
            let path = format!(
                "devices/{}/{}/telemetry/series?name={}&{}",
                segment(&t),
                segment(&id),
                segment(&name),
                range.query()
            );
            let body = call(&server, Method::GET, &path, None).await?;
            (server, body, true)
        }
        TelemetryCommand::Metric { name, group, tag, device_type, range, server } => {
            let mut path = format!("telemetry/metrics?name={}&{}", segment(&name), range.query());
            for (k, v) in [("group", group), ("tag", tag), ("device_type", device_type)] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={}", segment(&v)));
                }
            }
            let body = call(&server, Method::GET, &path, None).await?;
            (server, body, false)
        }
    };
    if printed(&server, &body) {
        return Ok(());
    }
    let buckets = body["buckets"].as_array().cloned().unwrap_or_default();
    if buckets.is_empty() {
        println!("no points of {} in that range", text(&body["name"]));
        return Ok(());
    }
    if per_device {
        println!("{:<21} {:>7} {:>10} {:>10} {:>10} {:>10}", "bucket", "count", "min", "mean", "max", "last");
    } else {
        println!("{:<21} {:>7} {:>7} {:>10} {:>10} {:>10}", "bucket", "devices", "count", "min", "mean", "max");
    }
    for b in &buckets {
        if per_device {
            println!(
                "{:<21} {:>7} {:>10} {:>10} {:>10} {:>10}",
                when(&b["at"]),
                b["count"],
                num(&b["min"]),
                num(&b["mean"]),
                num(&b["max"]),
                num(&b["last"])
            );
        } else {
            println!(
                "{:<21} {:>7} {:>7} {:>10} {:>10} {:>10}",
                when(&b["at"]),
                b["devices"],
                b["count"],
                num(&b["min"]),
                num(&b["mean"]),
                num(&b["max"])
            );
        }
    }
    Ok(())
}

/// A rule's JSON from the command line: inline, or `@FILE`.
fn spec(arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?,
        None => arg.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("the rule is not JSON: {e}"))
}

pub async fn rules(command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::List { server } => {
            let body = call(&server, Method::GET, "alert-rules", None).await?;
            if printed(&server, &body) {
                return Ok(());
            }
            println!("{:<24} {:<10} {:<8} {:<16} applies to", "name", "kind", "enabled", "metric");
            for r in body.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<10} {:<8} {:<16} {}",
                    text(&r["name"]),
                    text(&r["kind"]),
                    r["enabled"],
                    r["metric"].as_str().unwrap_or("-"),
                    drover::analytics::scope_text(r)
                );
            }
        }
        RulesCommand::Show { name, server } => {
            let body = call(&server, Method::GET, &format!("alert-rules/{}", segment(&name)), None).await?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        RulesCommand::Add { spec: s, server } => {
            let body = call(&server, Method::POST, "alert-rules", Some(spec(&s)?)).await?;
            if !printed(&server, &body) {
                println!(
                    "added {} rule {} ({})",
                    text(&body["kind"]),
                    text(&body["name"]),
                    drover::analytics::scope_text(&body)
                );
            }
        }
        RulesCommand::Update { name, spec: s, server } => {
            let path = format!("alert-rules/{}", segment(&name));
            let body = call(&server, Method::PUT, &path, Some(spec(&s)?)).await?;
            if !printed(&server, &body) {
                println!("updated {} rule {}", text(&body["kind"]), text(&body["name"]));
            }
        }
        RulesCommand::Remove { name, server } => {
            let body = call(&server, Method::DELETE, &format!("alert-rules/{}", segment(&name)), None).await?;
            if !printed(&server, &body) {
                println!("removed {name}; {} open alerts resolved", body["resolved_alerts"]);
            }
        }
    }
    Ok(())
}

fn alert_line(a: &Value) {
    println!(
        "{:<7} {:<9} {:<10} {:<20} {:<28} {:<10} {:>10} {}",
        a["id"],
        text(&a["state"]),
        text(&a["kind"]),
        text(&a["rule"]),
        text(&a["device"]),
        if a["metric"].as_str().unwrap_or_default().is_empty() { "-" } else { text(&a["metric"]) },
        num(&a["value"]),
        when(&a["opened_at"])
    );
}

pub async fn alerts(command: AlertsCommand) -> anyhow::Result<()> {
    match command {
        AlertsCommand::List { state, kind, rule, device, limit, server } => {
            let mut path = format!("alerts?limit={limit}");
            for (k, v) in [("state", state), ("kind", kind), ("rule", rule)] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={}", segment(&v)));
                }
            }
            if let Some(d) = device {
                let (t, id) = device_ref(&d)?;
                path.push_str(&format!("&device_type={}&device_id={}", segment(&t), segment(&id)));
            }
            let body = call(&server, Method::GET, &path, None).await?;
            if printed(&server, &body) {
                return Ok(());
            }
            println!(
                "{:<7} {:<9} {:<10} {:<20} {:<28} {:<10} {:>10} opened",
                "id", "state", "kind", "rule", "device", "metric", "value"
            );
            for a in body["items"].as_array().into_iter().flatten() {
                alert_line(a);
            }
        }
        AlertsCommand::Show { id, server } => {
            let body = call(&server, Method::GET, &format!("alerts/{id}"), None).await?;
            if printed(&server, &body) {
                return Ok(());
            }
            alert_line(&body);
            if let Some(t) = body["resolved_at"].as_i64() {
                println!("resolved {} ({})", when(&t.into()), text(&body["resolution"]));
            }
            println!("{}", serde_json::to_string_pretty(&body["detail"])?);
        }
        AlertsCommand::Resolve { id, server } => {
            let body = call(&server, Method::POST, &format!("alerts/{id}/resolve"), None).await?;
            if !printed(&server, &body) {
                println!("alert {id} resolved");
            }
        }
    }
    Ok(())
}
