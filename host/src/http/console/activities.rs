//! Activities: the newest first, and one activity's per-state counts refreshed live while
//! its operations spread, with cancel.

use super::layout::{badge, button, json, page, text, when};
use super::session::{Posted, Session};
use super::{Api, ConsoleState, OrPage, PageError, PageResult, html, see};
use crate::auth::Role;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
pub struct ListQuery {
    before: Option<i64>,
}

pub async fn list(State(console): State<ConsoleState>, session: Session, Query(q): Query<ListQuery>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let before = q.before.unwrap_or(9_007_199_254_740_991);
    let page_: Value = api.get(&format!("activities?before={before}&limit=50")).await.or_page(&session)?;
    let body = html! {
        table {
            thead { tr { th scope="col" { "Activity" } th scope="col" { "Code" } th scope="col" { "Kind" } th scope="col" { "By" } th scope="col" { "Added (UTC)" } } }
            tbody { @for a in page_["items"].as_array().into_iter().flatten() {
                tr {
                    td { a href={"/console/activities/" (a["id"])} { (a["id"]) } }
                    td { code { (text(&a["code"])) } }
                    td { (text(&a["kind"])) }
                    td { (text(&a["created_by"])) }
                    td { (when(&a["created_at"])) }
                }
            } }
        }
        @if let Some(next) = page_["next_before"].as_i64() {
            nav.pager aria-label="Pages" { a href={"/console/activities?before=" (next)} { "Older →" } }
        }
    };
    Ok(html(page("Activities", Some(&session), "activities", body)))
}

/// A state that ends an operation: when only these are left, the activity is over.
fn terminal(state: &str) -> bool {
    crate::ops::State::parse(state).is_some_and(crate::ops::State::is_terminal)
}

fn counts(id: i64, activity: &Value) -> Markup {
    let counts = activity["counts"].as_object().cloned().unwrap_or_default();
    let total: i64 = counts.values().filter_map(Value::as_i64).sum();
    let done: i64 = counts.iter().filter(|(s, _)| terminal(s)).filter_map(|(_, n)| n.as_i64()).sum();
    let over = total > 0 && done == total;
    html! {
        div #counts data-live={"/console/activities/" (id) "/counts"} data-every="1000" data-final[over] aria-live="polite" {
            p { meter min="0" max=(total.max(1)) value=(done) aria-label="Operations finished" { (done) "/" (total) } " "
                (done) " of " (total) " finished" @if over { " — " strong { "done" } } }
            table {
                thead { tr { th scope="col" { "State" } th.num scope="col" { "Operations" } } }
                tbody { @for (s, n) in &counts { tr { td { (badge(s)) } td.num { (n) } } } }
            }
        }
    }
}

pub async fn show(State(console): State<ConsoleState>, session: Session, Path(id): Path<i64>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let a: Value = api.get(&format!("activities/{id}")).await.or_page(&session)?;
    let body = html! {
        table { tbody {
            tr { th scope="row" { "Code" } td { code { (text(&a["code"])) } " (" (text(&a["kind"])) ")" } }
            tr { th scope="row" { "Added by" } td { (text(&a["created_by"])) } }
            tr { th scope="row" { "Added" } td { (when(&a["created_at"])) } }
            tr { th scope="row" { "Expires" } td { (when(&a["expires_at"])) } }
        } }
        h2 { "Operations by state" }
        (counts(id, &a))
        (button(&session, Role::Operator, &format!("/console/activities/{id}/cancel"), "Cancel what has not finished", "danger"))
        h2 { "Payload" }
        (json(&a["payload"]))
    };
    Ok(html(page(&format!("Activity {id}"), Some(&session), "activities", body)))
}

pub async fn counts_fragment(State(console): State<ConsoleState>, session: Session, Path(id): Path<i64>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let a: Value = api.get(&format!("activities/{id}")).await.or_page(&session)?;
    Ok(html(counts(id, &a)))
}

pub async fn cancel(
    State(console): State<ConsoleState>,
    Path(id): Path<i64>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    api.send(Method::POST, &format!("activities/{id}/cancel"), &Value::Null)
        .await
        .map_err(|f| PageError::new(f, &session))?;
    Ok(see(&format!("/console/activities/{id}")))
}
