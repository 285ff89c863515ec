//! Rollouts (state, counts per phase, devices, pause/resume/advance/abort/rollback),
//! policies (read; edited as files with `drover policy apply`) and the audit trail.

use super::layout::{badge, button, json, page, pager, text, when};
use super::session::{Posted, Session};
use super::{Api, ConsoleState, OrPage, PageError, PageResult, enc, html, see};
use crate::auth::Role;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

pub async fn list(State(console): State<ConsoleState>, session: Session) -> PageResult {
    let api = Api { console: &console, session: &session };
    let rollouts: Value = api.get("rollouts").await.or_page(&session)?;
    let body = html! {
        @if rollouts["items"].as_array().is_none_or(Vec::is_empty) {
            p.hint { "No rollouts. Upload an image with " code { "drover artifact upload" } " and start one with " code { "drover rollout create" } "." }
        }
        div.scroll { table {
            thead { tr { th scope="col" { "Rollout" } th scope="col" { "Artifact" } th scope="col" { "State" } th scope="col" { "Phase" } th scope="col" { "Devices by state" } th scope="col" { "Created (UTC)" } } }
            tbody { @for r in rollouts["items"].as_array().into_iter().flatten() {
                tr {
                    td { a href={"/console/rollouts/" (enc(text(&r["name"])))} { (text(&r["name"])) } }
                    td { (text(&r["artifact"]["name"])) " " (text(&r["artifact"]["version"])) }
                    td { (badge(text(&r["state"]))) }
                    td { (r["phase"]) "/" (r["phases"]) }
                    td { @for (s, n) in r["counts"].as_object().into_iter().flatten() { (s) " " (n) "; " } }
                    td { (when(&r["created_at"])) }
                }
            } }
        } }
    };
    Ok(html(page("Rollouts", Some(&session), "rollouts", body)))
}

pub async fn show(State(console): State<ConsoleState>, session: Session, Path(name): Path<String>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let r: Value = api.get(&format!("rollouts/{}", enc(&name))).await.or_page(&session)?;
    let devices: Value = api.get(&format!("rollouts/{}/devices?limit=100", enc(&name))).await.or_page(&session)?;
    let href = format!("/console/rollouts/{}", enc(&name));
    let state = text(&r["state"]).to_string();
    let live = matches!(state.as_str(), "running" | "paused");
    let body = html! {
        table { tbody {
            tr { th scope="row" { "Artifact" } td { (text(&r["artifact"]["name"])) " " (text(&r["artifact"]["version"])) } }
            tr { th scope="row" { "State" } td { (badge(&state)) @if let Some(why) = r["reason"].as_str() { " — " (why) } } }
            tr { th scope="row" { "Phase" } td { (r["phase"]) " of " (r["phases"]) ", since " (when(&r["phase_started_at"])) } }
            tr { th scope="row" { "Rollback" } td { (text(&r["rollback"])) } }
        } }
        p {
            @if state == "running" { (button(&session, Role::Operator, &format!("{href}/pause"), "Pause", "secondary")) " " (button(&session, Role::Admin, &format!("{href}/advance"), "Advance to the next phase", "secondary")) " " }
            @if state == "paused" { (button(&session, Role::Admin, &format!("{href}/resume"), "Resume", "secondary")) " " }
            @if live { (button(&session, Role::Operator, &format!("{href}/abort"), "Abort", "danger")) " " }
            @if !live && r["rollback"] == "none" { (button(&session, Role::Admin, &format!("{href}/rollback"), "Roll back updated devices", "danger")) }
        }
        h2 { "Devices per phase" }
        table {
            thead { tr { th scope="col" { "Phase" } th scope="col" { "Devices by state" } } }
            tbody { @for (i, c) in r["phase_counts"].as_array().into_iter().flatten().enumerate() {
                tr { td { (i + 1) } td { @for (s, n) in c.as_object().into_iter().flatten() { (badge(s)) " " (n) " " } } }
            } }
        }
        h2 { "Devices (first 100)" }
        div.scroll { table {
            thead { tr { th scope="col" { "Device" } th scope="col" { "Phase" } th scope="col" { "State" } th scope="col" { "Progress" } th scope="col" { "From version" } th scope="col" { "Reason" } } }
            tbody { @for d in devices["items"].as_array().into_iter().flatten() {
                tr {
                    td { a href={"/console/devices/" (enc(text(&d["type"]))) "/" (enc(text(&d["id"])))} { (text(&d["type"])) " " (text(&d["id"])) } }
                    td { (d["phase"]) }
                    td { (badge(text(&d["state"]))) }
                    td.num { (d["progress"].as_i64().map(|p| format!("{p}%")).unwrap_or_default()) }
                    td { (d["from_version"].as_str().unwrap_or("")) }
                    td { (d["reason"].as_str().unwrap_or("")) }
                }
            } }
        } }
        h2 { "Specification" }
        (json(&r["spec"]))
    };
    Ok(html(page(&format!("Rollout {name}"), Some(&session), "rollouts", body)))
}

pub async fn act(
    State(console): State<ConsoleState>,
    Path((name, action)): Path<(String, String)>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    if !["pause", "resume", "advance", "abort", "cancel", "rollback"].contains(&action.as_str()) {
        let f = super::failure(StatusCode::NOT_FOUND, "not_found", format!("no rollout action `{action}`"));
        return Err(PageError::new(f, &session));
    }
    let api = Api { console: &console, session: &session };
    api.send(Method::POST, &format!("rollouts/{}/{action}", enc(&name)), &Value::Null).await.or_page(&session)?;
    Ok(see(&format!("/console/rollouts/{}", enc(&name))))
}

pub async fn policies(State(console): State<ConsoleState>, session: Session) -> PageResult {
    let api = Api { console: &console, session: &session };
    let policies: Value = api.get("policies").await.or_page(&session)?;
    let body = html! {
        p.hint { "Policies are edited as files: " code { "drover policy apply FILE" } " saves a new revision." }
        div.scroll { table {
            thead { tr { th scope="col" { "Policy" } @if session.tenant.is_none() { th scope="col" { "Tenant" } } th scope="col" { "Active" } th.num scope="col" { "Revision" } th.num scope="col" { "Priority" } th scope="col" { "Device types" } th scope="col" { "On non-compliance" } th scope="col" { "Updated (UTC)" } } }
            // The API answers with the list itself, in the order policies rank.
            tbody { @for p in policies.as_array().into_iter().flatten() {
                tr {
                    td { (text(&p["name"])) }
                    @if session.tenant.is_none() { td { @if p["tenant"].is_null() { "(operators')" } @else { (text(&p["tenant"])) } } }
                    td { @if p["active"].as_bool() == Some(true) { (badge("active")) } @else { (badge("inactive")) } }
                    td.num { (p["revision"]) }
                    td.num { (p["priority"]) }
                    td { @for t in p["profiles"].as_object().into_iter().flat_map(|m| m.keys()) { (t) " " } }
                    td { (p["action"].as_str().unwrap_or("")) }
                    td { (when(&p["updated_at"])) }
                }
            } }
        } }
    };
    Ok(html(page("Policies", Some(&session), "policies", body)))
}

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    after: String,
}

pub async fn audit(State(console): State<ConsoleState>, session: Session, Query(q): Query<AuditQuery>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let query = vec![("actor", q.actor.clone()), ("outcome", q.outcome.clone()), ("after", q.after.clone())];
    let mut path = String::from("audit?limit=100");
    for (k, v) in &query {
        if !v.is_empty() {
            path.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    let page_: Value = api.get(&path).await.or_page(&session)?;
    let body = html! {
        form.filters method="get" action="/console/audit" {
            label { "Token" input name="actor" value=(q.actor) size="16"; }
            label { "Outcome"
                select name="outcome" {
                    option value="" { "any" }
                    @for o in ["ok", "refused", "failed"] { option value=(o) selected[q.outcome == o] { (o) } }
                }
            }
            button type="submit" { "Filter" }
        }
        div.scroll { table {
            thead { tr {
                th scope="col" { "At (UTC)" } th scope="col" { "Token" }
                // An operator reads every tenant's rows; a tenant's session only its own.
                @if session.tenant.is_none() { th scope="col" { "Tenant" } }
                th scope="col" { "Outcome" } th scope="col" { "Action" } th scope="col" { "Target" }
            } }
            tbody { @for e in page_["items"].as_array().into_iter().flatten() {
                tr {
                    td { (when(&e["at"])) }
                    td { (text(&e["actor"])) " (" (text(&e["role"])) ")" }
                    @if session.tenant.is_none() { td { (text(&e["tenant"])) } }
                    td { (badge(text(&e["outcome"]))) " " (e["status"]) }
                    td { code { (text(&e["action"])) } }
                    td { code { (text(&e["target"])) } }
                }
            } }
        } }
        (pager("/console/audit", &query, &page_["next_after"]))
    };
    Ok(html(page("Audit trail (oldest first)", Some(&session), "audit", body)))
}
