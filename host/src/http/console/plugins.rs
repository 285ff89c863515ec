//! Plugins: what serves, its versions loaded side by side, calls and faults, grants,
//! settings (secrets masked by the API), history; rollback, suspend, enable, grants.

use super::layout::{badge, button, csrf, json, page, text, when};
use super::session::{Posted, Session};
use super::{Api, ConsoleState, OrPage, PageError, PageResult, enc, html, see};
use crate::auth::Role;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use maud::html;
use serde_json::{Value, json};

pub async fn list(State(console): State<ConsoleState>, session: Session) -> PageResult {
    let api = Api { console: &console, session: &session };
    let plugins: Value = api.get("plugins").await.or_page(&session)?;
    let body = html! {
        div.scroll { table {
            thead { tr { th scope="col" { "Plugin" } @if session.tenant.is_none() { th scope="col" { "Tenant" } } th scope="col" { "Version" } th scope="col" { "Kind" } th scope="col" { "State" } th scope="col" { "Publisher" } th.num scope="col" { "Calls" } th.num scope="col" { "Faults" } th scope="col" { "Loaded versions" } } }
            tbody { @for p in plugins["items"].as_array().into_iter().flatten() {
                tr {
                    td { a href={"/console/plugins/" (enc(text(&p["name"])))} { (text(&p["name"])) } }
                    @if session.tenant.is_none() { td { @if p["tenant"].is_null() { "(shared)" } @else { (text(&p["tenant"])) } } }
                    td { (text(&p["version"])) }
                    td { (text(&p["kind"])) }
                    td { (badge(text(&p["state"]))) }
                    td { (text(&p["publisher"])) }
                    td.num { (p["stats"]["calls"]) }
                    td.num { (p["stats"]["faults"]) }
                    td { @for v in p["loaded_versions"].as_array().into_iter().flatten() { (text(v)) " " } }
                }
            } }
        } }
        p.hint { "Upload new versions with " code { "drover plugin install" } "; they serve at once, and the version before stays loaded for a rollback." }
    };
    Ok(html(page("Plugins", Some(&session), "plugins", body)))
}

const CAPABILITIES: &[&str] = &["log", "config", "kv", "clock", "random", "filesystem", "network"];

pub async fn show(State(console): State<ConsoleState>, session: Session, Path(name): Path<String>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let base = format!("plugins/{}", enc(&name));
    let detail: Value = api.get(&base).await.or_page(&session)?;
    let grants: Value = api.get(&format!("{base}/grants")).await.or_page(&session)?;
    let settings: Value = api.get(&format!("{base}/settings")).await.unwrap_or(Value::Null);
    let p = &detail["plugin"];
    let href = format!("/console/plugins/{}", enc(&name));
    let suspended = p["state"] == "suspended";
    // A tenant's session manages its tenant's plugins; the shared ones are the operators'.
    let manages = session.tenant.is_none() || p["tenant"].as_str() == session.tenant.as_deref();
    let granted: Vec<&str> =
        grants["capabilities"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let requested: Vec<&str> =
        p["capabilities_requested"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let body = html! {
        table { tbody {
            tr { th scope="row" { "Serving" } td #serving-version { (text(&p["version"])) } }
            tr { th scope="row" { "State" } td { (badge(text(&p["state"]))) @if let Some(r) = p["suspended_reason"].as_str() { " — " (r) } } }
            tr { th scope="row" { "Kind" } td { (text(&p["kind"])) } }
            tr { th scope="row" { "Publisher" } td { (text(&p["publisher"])) } }
            tr { th scope="row" { "Loaded versions" } td { @for v in p["loaded_versions"].as_array().into_iter().flatten() { (text(v)) " " } } }
            tr { th scope="row" { "A rollback returns to" } td { (p["previous_version"].as_str().unwrap_or("nothing: no earlier version is loaded")) } }
            tr { th scope="row" { "SHA-256" } td { code { (text(&p["sha256"])) } } }
            tr { th scope="row" { "Description" } td { (text(&p["description"])) } }
        } }
        @if manages { p {
            @if !p["previous_version"].is_null() { (button(&session, Role::Admin, &format!("{href}/rollback"), "Roll back", "secondary")) " " }
            @if suspended { (button(&session, Role::Admin, &format!("{href}/enable"), "Enable", "secondary")) }
            @else { (button(&session, Role::Admin, &format!("{href}/suspend"), "Suspend", "danger")) }
        } }
        h2 { "Calls (serving version, since it loaded)" }
        table { tbody { @for (k, v) in p["stats"].as_object().into_iter().flatten() {
            @if v.is_number() { tr { th scope="row" { (k.replace('_', " ")) } td.num { (v) } } }
        } } }
        h2 { "Capabilities" }
        @if session.can(Role::Admin) && manages {
            form.card method="post" action={(href) "/grants"} {
                (csrf(&session))
                fieldset {
                    legend { "Granted (of those its manifest requests: " (requested.join(", ")) ")" }
                    @for c in CAPABILITIES {
                        label { input type="checkbox" name="capability" value=(c) checked[granted.contains(c)]; " " (c) } " "
                    }
                }
                button.secondary type="submit" { "Save grants" }
            }
        } @else { p { (granted.join(", ")) } }
        @if !settings.is_null() { h2 { "Settings (secrets shown as ***)" } (json(&settings)) }
        h2 { "History" }
        table {
            thead { tr { th scope="col" { "At (UTC)" } th scope="col" { "What" } th scope="col" { "Version" } th scope="col" { "By" } th scope="col" { "Why" } } }
            tbody { @for e in detail["history"].as_array().into_iter().flatten() {
                tr { td { (when(&e["at"])) } td { (text(&e["kind"])) } td { (e["version"].as_str().unwrap_or("")) } td { (text(&e["actor"])) } td { (e["reason"].as_str().unwrap_or("")) } }
            } }
        }
    };
    Ok(html(page(&format!("Plugin {name}"), Some(&session), "plugins", body)))
}

pub async fn act(
    State(console): State<ConsoleState>,
    Path((name, action)): Path<(String, String)>,
    Posted(session, form): Posted<Vec<(String, String)>>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    let base = format!("plugins/{}", enc(&name));
    let done = match action.as_str() {
        "rollback" | "suspend" | "enable" => {
            let reason = if action == "enable" { Value::Null } else { json!({"reason": "from the console"}) };
            api.send(Method::POST, &format!("{base}/{action}"), &reason).await
        }
        "grants" => {
            let caps: Vec<&str> = form.iter().filter(|(k, _)| k == "capability").map(|(_, v)| v.as_str()).collect();
            api.send(Method::PUT, &format!("{base}/grants"), &json!({"capabilities": caps})).await
        }
        _ => {
            let f = super::failure(StatusCode::NOT_FOUND, "not_found", format!("no plugin action `{action}`"));
            return Err(PageError::new(f, &session));
        }
    };
    done.or_page(&session)?;
    Ok(see(&format!("/console/plugins/{}", enc(&name))))
}
