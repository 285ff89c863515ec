//! Users (admins only): who may log in, with what role and scope; add one, disable or
//! enable, remove.

use super::layout::{button, csrf, page, text, when};
use super::session::{Posted, Session};
use super::{Api, ConsoleState, OrPage, PageError, PageResult, enc, html, see};
use crate::auth::Role;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;
use serde_json::{Value, json};

async fn list_page(console: &ConsoleState, session: &Session, form: &NewUser, error: Option<String>) -> PageResult {
    let api = Api { console, session };
    let users: Value = api.get("users").await.or_page(session)?;
    let now = crate::store::now_ms();
    let body = html! {
        table #users {
            thead { tr { th scope="col" { "User" } th scope="col" { "Role" } th scope="col" { "Reaches" } th scope="col" { "Tenant" } th scope="col" { "State" } th scope="col" { "Created (UTC)" } th scope="col" { "" } } }
            tbody { @for u in users["items"].as_array().into_iter().flatten() {
                @let name = text(&u["name"]);
                @let href = format!("/console/users/{}", enc(name));
                @let disabled = !u["disabled_at"].is_null();
                tr {
                    td { (name) }
                    td { (text(&u["role"])) }
                    td { (crate::scope::Scope::summary(&u["scope"])) }
                    td { (u["tenant"].as_str().unwrap_or("every tenant")) }
                    td { @if disabled { "disabled" } @else if u["locked_until"].as_i64().is_some_and(|t| t > now) { "locked" } @else { "enabled" } }
                    td { (when(&u["created_at"])) }
                    td {
                        @if disabled { (button(session, Role::Admin, &format!("{href}/enable"), "Enable", "")) }
                        @else { (button(session, Role::Admin, &format!("{href}/disable"), "Disable", "")) }
                        (button(session, Role::Admin, &format!("{href}/remove"), "Remove", "danger"))
                    }
                }
            } }
        }
        h2 { "New user" }
        form.card #new-user method="post" action="/console/users" {
            (csrf(session))
            @if let Some(e) = &error { p.error role="alert" { (e) } }
            label for="u-name" { "Name" }
            input #u-name name="name" required pattern="[A-Za-z0-9._@-]{1,64}" autocomplete="off" value=(form.name);
            label for="u-password" { "Password (at least 12 characters)" }
            input #u-password type="password" name="password" required minlength="12" autocomplete="new-password";
            label for="u-role" { "Role" }
            select #u-role name="role" {
                @for r in ["viewer", "operator", "admin"] {
                    option value=(r) selected[form.role == r] { (r) }
                }
            }
            label for="u-groups" { "Only devices in these groups (comma-separated; empty: any)" }
            input #u-groups name="groups" value=(form.groups);
            label for="u-types" { "Only devices of these types (comma-separated; empty: any)" }
            input #u-types name="device_types" value=(form.device_types);
            label for="u-codes" { "Only these operation codes (comma-separated; empty: any)" }
            input #u-codes name="operations" value=(form.operations);
            label.check { input #u-own type="checkbox" name="own_devices" value="true" checked[form.own_devices.is_some()]; " Only devices the user owns (self-service)" }
            @if session.tenant.is_none() {
                label for="u-tenant" { "Tenant (empty: an operator of the server, every tenant)" }
                input #u-tenant name="tenant" pattern="[a-z0-9][a-z0-9-]{0,63}" value=(form.tenant);
            }
            p.hint { "A user with a scope sees and acts on the devices it admits only, in the devices pages and the API." }
            button type="submit" { "Add user" }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, html(page("Users", Some(session), "users", body))).into_response())
}

pub async fn list(State(console): State<ConsoleState>, session: Session) -> PageResult {
    list_page(&console, &session, &NewUser::default(), None).await
}

#[derive(Deserialize, Default)]
pub struct NewUser {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    device_types: String,
    #[serde(default)]
    operations: String,
    own_devices: Option<String>,
    #[serde(default)]
    tenant: String,
}

fn list_of(s: &str) -> Vec<&str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
}

pub async fn create(State(console): State<ConsoleState>, Posted(session, form): Posted<NewUser>) -> PageResult {
    let (groups, types, codes) = (list_of(&form.groups), list_of(&form.device_types), list_of(&form.operations));
    let own = form.own_devices.is_some();
    let scope = (!groups.is_empty() || !types.is_empty() || !codes.is_empty() || own)
        .then(|| json!({ "groups": groups, "device_types": types, "operations": codes, "own_devices": own }));
    let tenant = Some(form.tenant.trim()).filter(|t| !t.is_empty());
    let body = json!({ "name": form.name, "password": form.password, "role": form.role, "scope": scope,
                       "tenant": tenant });
    let api = Api { console: &console, session: &session };
    match api.send(Method::POST, "users", &body).await {
        Ok(_) => Ok(see("/console/users")),
        Err(f) if f.status.is_client_error() && f.status != StatusCode::FORBIDDEN => {
            list_page(&console, &session, &form, Some(f.message)).await
        }
        Err(f) => Err(PageError::new(f, &session)),
    }
}

pub async fn act(
    State(console): State<ConsoleState>,
    Path((name, action)): Path<(String, String)>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    let path = format!("users/{}", enc(&name));
    let done = match action.as_str() {
        "disable" | "enable" => api.send(Method::PATCH, &path, &json!({ "disabled": action == "disable" })).await,
        "remove" => api.send(Method::DELETE, &path, &Value::Null).await,
        _ => {
            let f = super::failure(StatusCode::NOT_FOUND, "not_found", format!("no user action `{action}`"));
            return Err(PageError::new(f, &session));
        }
    };
    done.or_page(&session)?;
    Ok(see("/console/users"))
}
