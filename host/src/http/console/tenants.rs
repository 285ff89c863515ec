//! Tenants (the server's operators): the list with each one's devices, add one, remove an
//! empty one (`tenants.rs`).

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

async fn list_page(console: &ConsoleState, session: &Session, form: &NewTenant, error: Option<String>) -> PageResult {
    let api = Api { console, session };
    let tenants: Value = api.get("tenants").await.or_page(session)?;
    let body = html! {
        table #tenants {
            thead { tr { th scope="col" { "Tenant" } th scope="col" { "Devices" } th scope="col" { "Description" } th scope="col" { "Created (UTC)" } th scope="col" { "" } } }
            tbody { @for t in tenants["items"].as_array().into_iter().flatten() {
                @let name = text(&t["name"]);
                tr {
                    td { (name) }
                    td { (t["devices"]) }
                    td { (text(&t["description"])) }
                    td { (when(&t["created_at"])) }
                    td { @if name != crate::tenants::DEFAULT {
                        (button(session, Role::Admin, &format!("/console/tenants/{}/remove", enc(name)), "Remove", "danger"))
                    } }
                }
            } }
        }
        @if session.can(Role::Admin) {
            h2 { "New tenant" }
            form.card #new-tenant method="post" action="/console/tenants" {
                (csrf(session))
                @if let Some(e) = &error { p.error role="alert" { (e) } }
                label for="t-name" { "Name (lower-case letters, digits and -)" }
                input #t-name name="name" required pattern="[a-z0-9][a-z0-9-]{0,63}" autocomplete="off" value=(form.name);
                label for="t-description" { "Description" }
                input #t-description name="description" maxlength="256" value=(form.description);
                p.hint { "Then give it an admin: a user or a token with this tenant. They reach only its devices." }
                button type="submit" { "Add tenant" }
            }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, html(page("Tenants", Some(session), "tenants", body))).into_response())
}

pub async fn list(State(console): State<ConsoleState>, session: Session) -> PageResult {
    list_page(&console, &session, &NewTenant::default(), None).await
}

#[derive(Deserialize, Default)]
pub struct NewTenant {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

pub async fn create(State(console): State<ConsoleState>, Posted(session, form): Posted<NewTenant>) -> PageResult {
    let api = Api { console: &console, session: &session };
    match api.send(Method::POST, "tenants", &json!({ "name": form.name, "description": form.description })).await {
        Ok(_) => Ok(see("/console/tenants")),
        Err(f) if f.status.is_client_error() && f.status != StatusCode::FORBIDDEN => {
            list_page(&console, &session, &form, Some(f.message)).await
        }
        Err(f) => Err(PageError::new(f, &session)),
    }
}

pub async fn remove(
    State(console): State<ConsoleState>,
    Path(name): Path<String>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    api.send(Method::DELETE, &format!("tenants/{}", enc(&name)), &Value::Null).await.or_page(&session)?;
    Ok(see("/console/tenants"))
}
