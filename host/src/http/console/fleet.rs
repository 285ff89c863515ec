//! The overview: devices by type and status, online now, enrolments per day, operations
//! by state (`GET /api/v1/fleet`).

use super::layout::{bars, page, when};
use super::session::Session;
use super::{Api, ConsoleState, OrPage, PageResult, html};
use axum::extract::State;
use maud::html;
use serde_json::Value;
use std::collections::BTreeMap;

pub async fn overview(State(console): State<ConsoleState>, session: Session) -> PageResult {
    if session.scoped && !session.tenant_whole {
        // The overview counts the whole fleet, or a whole tenant's; a scoped session
        // starts at its devices.
        return Ok(super::see("/console/devices"));
    }
    let api = Api { console: &console, session: &session };
    let fleet: Value = api.get("fleet").await.or_page(&session)?;
    // type -> status -> count
    let mut by_type: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut statuses = std::collections::BTreeSet::new();
    for row in fleet["devices"].as_array().into_iter().flatten() {
        let (t, s) = (row["device_type"].as_str().unwrap_or("?"), row["status"].as_str().unwrap_or("?"));
        statuses.insert(s.to_string());
        *by_type.entry(t.into()).or_default().entry(s.into()).or_default() += row["count"].as_i64().unwrap_or(0);
    }
    let total: i64 = by_type.values().flat_map(|m| m.values()).sum();
    let ops: Vec<(String, i64)> = fleet["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["state"].as_str().unwrap_or("?").to_string(), r["count"].as_i64().unwrap_or(0)))
        .collect();
    let days: Vec<(String, i64)> = fleet["enrolled_per_day"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let day = when(&r["day"]);
            (day.get(..10).unwrap_or(&day).to_string(), r["count"].as_i64().unwrap_or(0))
        })
        .collect();
    let body = html! {
        section.cards aria-label="Fleet" {
            div.card { div.big { (total) } "devices" }
            div.card { div.big { (fleet["seen_last_15_min"].as_i64().unwrap_or(0)) } "called in, last 15 min" }
            // The server's connection count: an operator's card only (a tenant's answer has none).
            @if let Some(online) = fleet["online_now"].as_i64() {
                div.card { div.big { (online) } "online for push now" }
            }
            div.card { div.big { (ops.iter().filter(|(s, _)| s == "PENDING" || s == "IN_PROGRESS").map(|(_, n)| n).sum::<i64>()) } "operations pending or in progress" }
        }
        h2 { "Devices by type and status" }
        div.scroll {
            table {
                thead { tr { th scope="col" { "Type" } @for s in &statuses { th.num scope="col" { (s) } } th.num scope="col" { "All" } } }
                tbody {
                    @for (t, counts) in &by_type {
                        tr {
                            th scope="row" { a href={"/console/devices?type=" (super::enc(t))} { (t) } }
                            @for s in &statuses {
                                td.num {
                                    @match counts.get(s) {
                                        Some(n) => a href={"/console/devices?type=" (super::enc(t)) "&status=" (super::enc(s))} { (n) },
                                        None => "0",
                                    }
                                }
                            }
                            td.num { (counts.values().sum::<i64>()) }
                        }
                    }
                }
            }
        }
        div.two {
            section {
                h2 { "Operations by state" }
                @if ops.is_empty() { p.hint { "No operations yet." } } @else { (bars(&ops)) }
            }
            section {
                h2 { "Enrolled per day (last 30 days, UTC)" }
                @if days.is_empty() { p.hint { "No enrolments in the last 30 days." } } @else { (bars(&days)) }
            }
        }
    };
    Ok(html(page("Overview", Some(&session), "overview", body)))
}
