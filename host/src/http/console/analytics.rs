//! Analytics: open and recent alerts (resolve), alert rules (add from JSON, remove), and
//! a metric charted over a device, a group, a tag or a device type, from the rollups.

use super::layout::{badge, button, chart, csrf, json, page, text, when};
use super::session::{Posted, Session};
use super::{Api, ConsoleState, OrPage, PageResult, enc, html, see};
use crate::auth::Role;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

fn device_link(d: &Value) -> Markup {
    let name = text(d);
    match name.split_once('/') {
        Some((t, id)) => html! { a href={"/console/devices/" (enc(t)) "/" (enc(id))} { (t) " " (id) } },
        None => html! { (name) },
    }
}

fn alerts_table(session: &Session, items: &[Value], resolvable: bool) -> Markup {
    html! {
        div.scroll { table {
            thead { tr {
                th scope="col" { "Opened (UTC)" } th scope="col" { "Rule" } th scope="col" { "Kind" } th scope="col" { "Device" }
                th scope="col" { "Metric" } th.num scope="col" { "Value" } th scope="col" { "State" } th scope="col" { "What the rule saw" }
                @if resolvable { th scope="col" { "Actions" } }
            } }
            tbody { @for a in items {
                tr {
                    td { (when(&a["opened_at"])) }
                    td { (text(&a["rule"])) }
                    td { (text(&a["kind"])) }
                    td { (device_link(&a["device"])) }
                    td { (a["metric"].as_str().filter(|m| !m.is_empty()).unwrap_or("—")) }
                    td.num { @if let Some(v) = a["value"].as_f64() { (format!("{v:.2}")) } }
                    td { (badge(text(&a["state"]))) @if let Some(r) = a["resolution"].as_str() { " (" (r) ", " (when(&a["resolved_at"])) ")" } }
                    td { (detail(&a["detail"])) }
                    @if resolvable { td { (button(session, Role::Operator, &format!("/console/alerts/{}/resolve", a["id"]), "Resolve", "secondary")) } }
                }
            } }
        } }
    }
}

/// An alert's detail in a few words.
fn detail(d: &Value) -> String {
    if let Some(c) = d["crossing"].as_str() {
        return format!(
            "{c} at {:.5}, {:.5}",
            d["lat"].as_f64().unwrap_or_default(),
            d["lon"].as_f64().unwrap_or_default()
        );
    }
    if let Some(a) = d["anomaly"].as_str() {
        return format!(
            "{a}: baseline {:.2} ± {:.2}",
            d["baseline"].as_f64().unwrap_or_default(),
            d["sd"].as_f64().unwrap_or_default()
        );
    }
    if let Some(l) = d["limit_kmh"].as_f64() {
        return format!("limit {l} km/h{}", if d["reported"] == true { " (reported)" } else { " (from positions)" });
    }
    match (d["above"].as_f64(), d["below"].as_f64()) {
        (Some(a), _) => format!("above {a}"),
        (_, Some(b)) => format!("below {b}"),
        _ => String::new(),
    }
}

/// Examples for the rule form, one per kind.
const EXAMPLE: &str = r#"{"name": "depot", "kind": "geofence", "applies_to": {"tags": ["fleet"]},
 "shape": {"circle": {"lat": 6.9271, "lon": 79.8612, "radius_m": 200}},
 "trigger": "exit", "hysteresis_m": 25, "speed_limit_kmh": 20}"#;

async fn alerts_page(console: &ConsoleState, session: &Session, spec: &str, error: Option<String>) -> PageResult {
    let api = Api { console, session };
    let open: Value = api.get("alerts?state=open&limit=200").await.or_page(session)?;
    let resolved: Value = api.get("alerts?state=resolved&limit=20").await.or_page(session)?;
    let rules: Value = api.get("alert-rules").await.or_page(session)?;
    let open_items = open["items"].as_array().cloned().unwrap_or_default();
    let body = html! {
        section aria-labelledby="open-h" {
            h2 #open-h { "Open alerts (" (open_items.len()) ")" }
            @if open_items.is_empty() { p.hint { "No alert is open." } } @else { (alerts_table(session, &open_items, true)) }
        }
        section aria-labelledby="rules-h" {
            h2 #rules-h { "Rules" }
            @if rules.as_array().is_none_or(Vec::is_empty) { p.hint { "No rules: every point is stored and rolled up, and nothing is judged." } }
            div.scroll { table {
                thead { tr { th scope="col" { "Rule" } th scope="col" { "Kind" } th scope="col" { "Watches" } th scope="col" { "Applies to" } th scope="col" { "Enabled" } th scope="col" { "Updated (UTC)" } th scope="col" { "Actions" } } }
                tbody { @for r in rules.as_array().into_iter().flatten() {
                    tr {
                        td { details { summary { (text(&r["name"])) } (json(r)) } }
                        td { (text(&r["kind"])) }
                        td { (watches(r)) }
                        td { (crate::analytics::scope_text(r)) }
                        td { @if r["enabled"] == true { "yes" } @else { "no" } }
                        td { (when(&r["updated_at"])) }
                        td { (button(session, Role::Operator, &format!("/console/alert-rules/{}/delete", enc(text(&r["name"]))), "Remove", "danger")) }
                    }
                } }
            } }
            @if session.can(Role::Operator) {
                form.card method="post" action="/console/alert-rules" {
                    (csrf(session))
                    @if let Some(e) = &error { p.error role="alert" { (e) } }
                    label for="r-spec" { "New rule (JSON)" }
                    textarea #r-spec name="spec" rows="6" spellcheck="false" required placeholder=(EXAMPLE) { (spec) }
                    p.hint {
                        "Kinds: " code { "geofence" } " (a " code { "circle" } " or " code { "polygon" } "), " code { "speed" } " (" code { "limit_kmh" } "), "
                        code { "threshold" } " (" code { "metric" } ", " code { "above" } " or " code { "below" } ", " code { "hysteresis" } ", " code { "for_secs" } "), "
                        code { "anomaly" } " (" code { "metric" } ", " code { "window" } ", " code { "warmup" } ", " code { "sensitivity" } "), "
                        code { "ignore" } ". docs/analytics.md has every field."
                    }
                    button type="submit" { "Add rule" }
                }
            }
        }
        section aria-labelledby="recent-h" {
            h2 #recent-h { "Recently resolved" }
            (alerts_table(session, resolved["items"].as_array().map(Vec::as_slice).unwrap_or_default(), false))
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, html(page("Alerts", Some(session), "alerts", body))).into_response())
}

fn watches(r: &Value) -> String {
    match text(&r["kind"]) {
        "geofence" => match &r["shape"] {
            s if s["circle"].is_object() => format!("circle of {} m", whole(&s["circle"]["radius_m"])),
            s => format!("polygon of {} points", s["polygon"]["points"].as_array().map_or(0, Vec::len)),
        },
        "speed" => format!("over {} km/h", whole(&r["limit_kmh"])),
        "threshold" => match (r["above"].as_f64(), r["below"].as_f64()) {
            (Some(a), _) => format!("{} above {a}", text(&r["metric"])),
            (_, Some(b)) => format!("{} below {b}", text(&r["metric"])),
            _ => text(&r["metric"]).to_string(),
        },
        "anomaly" => format!("{}, {}σ", text(&r["metric"]), whole(&r["sensitivity"])),
        _ => r["metric"].as_str().unwrap_or("every metric").to_string(),
    }
}

pub async fn alerts(State(console): State<ConsoleState>, session: Session) -> PageResult {
    alerts_page(&console, &session, "", None).await
}

#[derive(Deserialize)]
pub struct NewRule {
    spec: String,
}

pub async fn add_rule(State(console): State<ConsoleState>, Posted(session, form): Posted<NewRule>) -> PageResult {
    let body: Value = match serde_json::from_str(&form.spec) {
        Ok(v) => v,
        Err(e) => return alerts_page(&console, &session, &form.spec, Some(format!("The rule is not JSON: {e}"))).await,
    };
    let api = Api { console: &console, session: &session };
    match api.send(Method::POST, "alert-rules", &body).await {
        Ok(_) => Ok(see("/console/alerts")),
        Err(f) if f.status.is_client_error() && f.status != StatusCode::FORBIDDEN => {
            alerts_page(&console, &session, &form.spec, Some(f.message)).await
        }
        Err(f) => Err(super::PageError::new(f, &session)),
    }
}

pub async fn delete_rule(
    State(console): State<ConsoleState>,
    Path(name): Path<String>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    api.send(Method::DELETE, &format!("alert-rules/{}", enc(&name)), &Value::Null).await.or_page(&session)?;
    Ok(see("/console/alerts"))
}

pub async fn resolve(
    State(console): State<ConsoleState>,
    Path(id): Path<i64>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    api.send(Method::POST, &format!("alerts/{id}/resolve"), &Value::Null).await.or_page(&session)?;
    Ok(see("/console/alerts"))
}

#[derive(Deserialize, Default)]
pub struct MetricQuery {
    #[serde(default)]
    name: String,
    /// `type/id`: one device's series.
    #[serde(default)]
    device: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    tag: String,
    #[serde(default, rename = "type")]
    device_type: String,
    #[serde(default)]
    resolution: String,
    /// Hours back.
    #[serde(default)]
    hours: Option<u32>,
}

/// A metric over time: one device's, or over a group, tag or type (mean per bucket
/// charted; every aggregate in the table).
pub async fn metrics(
    State(console): State<ConsoleState>,
    session: Session,
    Query(q): Query<MetricQuery>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    let resolution = if q.resolution == "minute" { "minute" } else { "hour" };
    let hours = q.hours.unwrap_or(if resolution == "minute" { 2 } else { 24 }).clamp(1, 24 * 90);
    let from = crate::store::now_ms() - i64::from(hours) * 3_600_000;
    let mut answer: Option<Value> = None;
    let mut error = None;
    if !q.name.is_empty() {
        let path = match q.device.split_once('/') {
            Some((t, id)) => format!(
                "devices/{}/{}/telemetry/series?name={}&resolution={resolution}&from={from}",
                enc(t),
                enc(id),
                enc(&q.name)
            ),
            None => {
                let mut p = format!("telemetry/metrics?name={}&resolution={resolution}&from={from}", enc(&q.name));
                for (k, v) in [("group", &q.group), ("tag", &q.tag), ("device_type", &q.device_type)] {
                    if !v.is_empty() {
                        p.push_str(&format!("&{k}={}", enc(v)));
                    }
                }
                p
            }
        };
        match api.get::<Value>(&path).await {
            Ok(v) => answer = Some(v),
            Err(f) if f.status.is_client_error() && f.status != StatusCode::FORBIDDEN => error = Some(f.message),
            Err(f) => return Err(super::PageError::new(f, &session)),
        }
    }
    let buckets = answer.as_ref().and_then(|a| a["buckets"].as_array().cloned()).unwrap_or_default();
    let points: Vec<(i64, f64)> =
        buckets.iter().filter_map(|b| Some((b["at"].as_i64()?, b["mean"].as_f64()?))).collect();
    let per_device = !q.device.is_empty();
    let body = html! {
        form.filters method="get" action="/console/metrics" {
            label { "Metric" input name="name" required maxlength="128" value=(q.name) placeholder="battery"; }
            label { "Device (type/id)" input name="device" value=(q.device) placeholder="android/356000000000001"; }
            label { "or group" input name="group" value=(q.group); }
            label { "tag" input name="tag" value=(q.tag); }
            label { "device type" input name="type" value=(q.device_type); }
            label { "Resolution"
                select name="resolution" {
                    option value="hour" selected[resolution == "hour"] { "hour" }
                    option value="minute" selected[resolution == "minute"] { "minute" }
                }
            }
            label { "Hours back" input name="hours" type="number" min="1" max="2160" value=(hours); }
            button type="submit" { "Show" }
        }
        @if let Some(e) = &error { p.error role="alert" { (e) } }
        @if answer.is_some() {
            @if points.is_empty() { p.hint { "No points of " (q.name) " in that range." } }
            @else {
                (chart(&points, &format!("mean {} per {resolution}", q.name)))
                div.scroll { table {
                    thead { tr {
                        th scope="col" { "Bucket (UTC)" }
                        @if !per_device { th.num scope="col" { "Devices" } }
                        th.num scope="col" { "Points" } th.num scope="col" { "Min" } th.num scope="col" { "Mean" } th.num scope="col" { "Max" }
                        @if per_device { th.num scope="col" { "Last" } }
                    } }
                    tbody { @for b in buckets.iter().rev() {
                        tr {
                            td { (when(&b["at"])) }
                            @if !per_device { td.num { (b["devices"]) } }
                            td.num { (b["count"]) }
                            td.num { (num(&b["min"])) } td.num { (num(&b["mean"])) } td.num { (num(&b["max"])) }
                            @if per_device { td.num { (num(&b["last"])) } }
                        }
                    } }
                } }
            }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, html(page("Metrics", Some(&session), "metrics", body))).into_response())
}

/// A number as people write it: `150`, not `150.0`.
fn whole(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        Some(x) => format!("{x}"),
        None => "-".into(),
    }
}

fn num(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x:.2}")).unwrap_or_default()
}
