//! The page shell (navigation, the logged-in token, the logout form), the embedded
//! stylesheet and script, and the small pieces every page uses: times, state badges,
//! action buttons with the CSRF token, pagers and an SVG line chart.

use super::session::Session;
use crate::auth::Role;
use axum::http::header;
use axum::response::IntoResponse;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// The stylesheet and script change only with the binary: cached for a day.
pub async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=86400")], CSS)
}

pub async fn js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=86400")], JS)
}

const NAV: &[(&str, &str, &str)] = &[
    ("overview", "/console", "Overview"),
    ("devices", "/console/devices", "Devices"),
    ("groups", "/console/groups", "Groups"),
    ("activities", "/console/activities", "Activities"),
    ("enrollment", "/console/enrollment", "Enrollment"),
    ("alerts", "/console/alerts", "Alerts"),
    ("metrics", "/console/metrics", "Metrics"),
    ("plugins", "/console/plugins", "Plugins"),
    ("policies", "/console/policies", "Policies"),
    ("rollouts", "/console/rollouts", "Rollouts"),
    ("audit", "/console/audit", "Audit"),
    ("users", "/console/users", "Users"),
    ("tenants", "/console/tenants", "Tenants"),
];

/// A whole page. `active` names the navigation entry to mark.
pub fn page(title: &str, session: Option<&Session>, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Drover" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console" { "Drover" }
                    @if let Some(s) = session {
                        nav aria-label="Main" {
                            ul {
                                // A scoped session sees its devices only: the other pages
                                // show the whole fleet, which its token may not read. A
                                // tenant's unscoped callers also see its groups,
                                // alerts, metrics, plugins, policies and rollouts, and its admin enrolls into the tenant and
                                // manages its users.
                                @for (key, href, label) in NAV.iter().filter(|(k, _, _)| !s.scoped || *k == "devices" || (s.tenant_whole && matches!(*k, "overview" | "groups" | "alerts" | "metrics" | "plugins" | "policies" | "rollouts" | "audit")) || (s.tenant_admin && matches!(*k, "enrollment" | "users"))) {
                                    li { a href=(href) aria-current=[(*key == active).then_some("page")] { (label) } }
                                }
                            }
                        }
                        form.who method="post" action="/console/logout" {
                            (csrf(s))
                            span { (s.name) " (" (s.role.as_str()) @if let Some(t) = &s.tenant { ", tenant " (t) } @else if s.scoped { ", scoped" } ")" }
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A one-button form posting to `action`, shown only to a role that may use it.
pub fn button(s: &Session, role: Role, action: &str, label: &str, class: &str) -> Markup {
    html! {
        @if s.can(role) {
            form.inline method="post" action=(action) {
                (csrf(s))
                button type="submit" class=(class) { (label) }
            }
        }
    }
}

/// A time in the API's form (ms since the epoch) as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn when(ms: &Value) -> String {
    match ms.as_i64().filter(|ms| *ms >= 0) {
        Some(ms) => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").trim_end_matches('Z').to_string()
        }
        None => "–".into(),
    }
}

/// A JSON string field, or a dash.
pub fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("–")
}

/// A state as a badge whose colour says how it went (the word says it too).
pub fn badge(state: &str) -> Markup {
    let class = match state {
        "COMPLETED" | "active" | "succeeded" | "ok" | "compliant" | "done" => "good",
        "ERROR" | "failed" | "refused" | "aborted" | "suspended" | "non_compliant" | "removed" => "bad",
        "PENDING" | "IN_PROGRESS" | "NOTNOW" | "running" | "waiting" | "pending" | "registered" => "busy",
        _ => "plain",
    };
    html! { span class={"badge " (class)} { (state) } }
}

/// "Next page" when the API said there is one: the current query with `after` replaced.
pub fn pager(base: &str, query: &[(&str, String)], next_after: &Value) -> Markup {
    let Some(next) = next_after.as_i64() else { return html! {} };
    let mut pairs: Vec<String> = query
        .iter()
        .filter(|(k, v)| *k != "after" && !v.is_empty())
        .map(|(k, v)| format!("{k}={}", super::enc(v)))
        .collect();
    pairs.push(format!("after={next}"));
    html! { nav.pager aria-label="Pages" { a href={(base) "?" (pairs.join("&"))} { "Next page →" } } }
}

/// A line chart of `(time ms, value)` points, oldest first, as inline SVG (no script).
pub fn chart(points: &[(i64, f64)], label: &str) -> Markup {
    const W: f64 = 640.0;
    const H: f64 = 180.0;
    const PAD: f64 = 28.0;
    if points.len() < 2 {
        return html! { p.hint { "Not enough points to draw " (label) "." } };
    }
    let (t0, t1) = (points[0].0 as f64, points[points.len() - 1].0 as f64);
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let span_t = (t1 - t0).max(1.0);
    let span_v = if hi > lo { hi - lo } else { 1.0 };
    let line: Vec<String> = points
        .iter()
        .map(|(t, v)| {
            let x = PAD + (*t as f64 - t0) / span_t * (W - 2.0 * PAD);
            let y = H - PAD - (v - lo) / span_v * (H - 2.0 * PAD);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    html! {
        figure.chart {
            svg viewBox={"0 0 " (W) " " (H)} role="img" aria-label={(label) " over time: from " (lo) " to " (hi)} {
                line x1=(PAD) y1=(H - PAD) x2=(W - PAD) y2=(H - PAD) class="axis" {}
                text x="2" y=(PAD) class="tick" { (fmt_num(hi)) }
                text x="2" y=(H - PAD) class="tick" { (fmt_num(lo)) }
                polyline points=(line.join(" ")) class="series" {}
            }
            figcaption { (label) ": " (points.len()) " points, " (when(&Value::from(points[0].0))) " to " (when(&Value::from(points[points.len() - 1].0))) " UTC" }
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v:.2}") }
}

/// A JSON value shown as indented text.
pub fn json(v: &Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

/// Bars of `(label, count)`, lengths relative to the largest: counts the eye can compare.
/// `<meter>` rather than styled spans: the page's CSP allows no inline styles.
pub fn bars(rows: &[(String, i64)]) -> Markup {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    html! {
        table.bars {
            tbody {
                @for (label, n) in rows {
                    tr {
                        th scope="row" { (label) }
                        td.num { (n) }
                        td.barcell { meter min="0" max=(max) value=(n) aria-label=(label) { (n) } }
                    }
                }
            }
        }
    }
}
