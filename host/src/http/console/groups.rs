//! Groups: static (member lists) and dynamic (a saved query), with their sizes; create,
//! add members, delete.

use super::layout::{button, csrf, json, page, text, when};
use super::session::{Posted, Session};
use super::{Api, ConsoleState, OrPage, PageResult, enc, html, see};
use crate::auth::Role;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;
use serde_json::{Value, json};

async fn list_page(console: &ConsoleState, session: &Session, form: &NewGroup, error: Option<String>) -> PageResult {
    let api = Api { console, session };
    let groups: Value = api.get("groups").await.or_page(session)?;
    let body = html! {
        table {
            thead { tr { th scope="col" { "Group" } @if session.tenant.is_none() { th scope="col" { "Tenant" } } th scope="col" { "Kind" } th.num scope="col" { "Devices" } th scope="col" { "Description" } th scope="col" { "Created (UTC)" } } }
            tbody { @for g in groups["items"].as_array().into_iter().flatten() {
                tr {
                    td { a href={"/console/groups/" (enc(text(&g["name"])))} { (text(&g["name"])) } }
                    @if session.tenant.is_none() { td { @if g["tenant"].is_null() { "(operators')" } @else { (text(&g["tenant"])) } } }
                    td { @if g["query"].is_null() { "static" } @else { "dynamic" } }
                    td.num { a href={"/console/devices?group=" (enc(text(&g["name"])))} { (g["devices"]) } }
                    td { (text(&g["description"])) }
                    td { (when(&g["created_at"])) }
                }
            } }
        }
        @if session.can(Role::Operator) {
            h2 { "New group" }
            form.card method="post" action="/console/groups" {
                (csrf(session))
                @if let Some(e) = &error { p.error role="alert" { (e) } }
                label for="g-name" { "Name" }
                input #g-name name="name" required maxlength="128" value=(form.name);
                label for="g-desc" { "Description" }
                input #g-desc name="description" value=(form.description);
                // An operator may make a tenant's group; a tenant's caller makes its own.
                @if session.tenant.is_none() {
                    label for="g-tenant" { "Tenant (empty: a group of the server's operators)" }
                    input #g-tenant name="tenant" pattern="[a-z0-9][a-z0-9-]{0,63}" value=(form.tenant);
                }
                label for="g-query" { "Query (JSON) for a dynamic group; empty for a static group" }
                textarea #g-query name="query" rows="5" spellcheck="false" data-count="g-count" placeholder=r#"{"device_type": "android", "tags": ["warehouse-3"], "metadata": {"model": "Pixel 8"}}"# { (form.query) }
                output #g-count for="g-query" aria-live="polite" {}
                p.hint { "A query may name " code { "device_type" } ", " code { "ownership" } " (BYOD, COPE), " code { "tags" } " (all must be present) and " code { "metadata" } " values." }
                button type="submit" { "Create group" }
            }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, html(page("Groups", Some(session), "groups", body))).into_response())
}

pub async fn list(State(console): State<ConsoleState>, session: Session) -> PageResult {
    list_page(&console, &session, &NewGroup::default(), None).await
}

#[derive(Deserialize)]
pub struct CountQuery {
    #[serde(default)]
    query: String,
}

/// How many devices the query being typed matches (the editor's live count): a fragment.
pub async fn count(
    State(console): State<ConsoleState>,
    session: Session,
    axum::extract::Query(q): axum::extract::Query<CountQuery>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    let text = if q.query.trim().is_empty() {
        String::new()
    } else {
        match api.get::<Value>(&format!("devices/count?query={}", enc(&q.query))).await {
            Ok(v) => format!("{} devices match now", v["devices"]),
            Err(f) => f.message,
        }
    };
    Ok(html(html! { output #g-count for="g-query" aria-live="polite" { (text) } }))
}

#[derive(Deserialize, Default)]
pub struct NewGroup {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    query: String,
    #[serde(default)]
    tenant: String,
}

pub async fn create(State(console): State<ConsoleState>, Posted(session, form): Posted<NewGroup>) -> PageResult {
    let mut body = json!({"name": form.name, "description": form.description});
    if !form.tenant.is_empty() {
        body["tenant"] = json!(form.tenant);
    }
    if !form.query.trim().is_empty() {
        match serde_json::from_str::<Value>(&form.query) {
            Ok(q) => body["query"] = q,
            Err(e) => return list_page(&console, &session, &form, Some(format!("The query is not JSON: {e}"))).await,
        }
    }
    let api = Api { console: &console, session: &session };
    match api.send(Method::POST, "groups", &body).await {
        Ok(created) => Ok(see(&format!("/console/groups/{}", enc(text(&created["name"]))))),
        Err(f) if f.status.is_client_error() && f.status != StatusCode::FORBIDDEN => {
            list_page(&console, &session, &form, Some(f.message)).await
        }
        Err(f) => Err(super::PageError::new(f, &session)),
    }
}

pub async fn show(State(console): State<ConsoleState>, session: Session, Path(name): Path<String>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let g: Value = api.get(&format!("groups/{}", enc(&name))).await.or_page(&session)?;
    let href = format!("/console/groups/{}", enc(&name));
    let body = html! {
        table { tbody {
            tr { th scope="row" { "Kind" } td { @if g["query"].is_null() { "static" } @else { "dynamic" } } }
            tr { th scope="row" { "Devices" } td { a href={"/console/devices?group=" (enc(&name))} { (g["devices"]) " devices" } } }
            tr { th scope="row" { "Description" } td { (text(&g["description"])) } }
            tr { th scope="row" { "Created" } td { (when(&g["created_at"])) } }
        } }
        @if !g["query"].is_null() { h2 { "Query" } (json(&g["query"])) }
        @if g["query"].is_null() && session.can(Role::Operator) {
            h2 { "Add devices" }
            form.card method="post" action={(href) "/members"} {
                (csrf(&session))
                label for="members" { "One device per line: type/id" }
                textarea #members name="devices" rows="5" placeholder="android/356000000000001" {}
                button type="submit" { "Add" }
            }
        }
        (button(&session, Role::Operator, &format!("{href}/delete"), "Delete group", "danger"))
    };
    Ok(html(page(&format!("Group {name}"), Some(&session), "groups", body)))
}

#[derive(Deserialize)]
pub struct MembersForm {
    devices: String,
}

pub async fn add_members(
    State(console): State<ConsoleState>,
    Path(name): Path<String>,
    Posted(session, form): Posted<MembersForm>,
) -> PageResult {
    let devices: Vec<Value> = form
        .devices
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('/') {
            Some((t, id)) => json!({"type": t.trim(), "id": id.trim()}),
            None => json!({"type": "", "id": l}),
        })
        .collect();
    let api = Api { console: &console, session: &session };
    api.send(Method::POST, &format!("groups/{}/members", enc(&name)), &json!({"devices": devices}))
        .await
        .or_page(&session)?;
    Ok(see(&format!("/console/groups/{}", enc(&name))))
}

pub async fn delete(
    State(console): State<ConsoleState>,
    Path(name): Path<String>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    api.send(Method::DELETE, &format!("groups/{}", enc(&name)), &Value::Null).await.or_page(&session)?;
    Ok(see("/console/groups"))
}
