//! Enrollment: a token with its QR code (the enrollment URL, drawn as SVG), and bulk
//! pre-registration from CSV with errors named by line.

use super::layout::{csrf, page, text, when};
use super::session::{Posted, Session};
use super::{Api, ConsoleState, OrPage, PageResult, html};
use crate::auth::Role;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

/// What the page shows under its forms: a token just made, or an import's outcome.
enum Outcome {
    None,
    Token(Value),
    Imported(Value),
    Error(String),
}

/// The enrollment URL as a QR code: an SVG image, as a data URI an `<img>` shows and a
/// browser can save.
pub fn qr_data_uri(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    let svg = code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(240, 240).quiet_zone(true).build();
    Some(format!("data:image/svg+xml;base64,{}", base64::engine::general_purpose::STANDARD.encode(svg)))
}

async fn enrollment_page(console: &ConsoleState, session: &Session, outcome: Outcome, csv: &str) -> PageResult {
    let api = Api { console, session };
    let types: Value = api.get("device-types").await.or_page(session)?;
    let error = matches!(outcome, Outcome::Error(_));
    let shown: Markup = match &outcome {
        Outcome::None => html! {},
        Outcome::Error(e) => html! { p.error role="alert" #enroll-error { (e) } },
        Outcome::Token(t) => {
            let url = text(&t["enrollment_url"]);
            html! {
                section.card #enroll-token aria-label="New enrollment token" {
                    h2 { "Enrollment token for " (text(&t["device_type"])) " devices of tenant " (text(&t["tenant"])) }
                    p { "Shown this once. " (t["uses"]) " use(s), until " (when(&t["expires_at"])) " UTC." }
                    p { code #token-value { (text(&t["token"])) } }
                    p { "Enrollment URL: " code #enroll-url { (url) } }
                    @if let Some(src) = qr_data_uri(url) {
                        figure.qr { img #enroll-qr src=(src) alt={"QR code of the enrollment URL " (url)} width="240" height="240"; figcaption { "Scan with the device to enroll it." } }
                    }
                }
            }
        }
        Outcome::Imported(r) => html! {
            p.ok role="status" #import-result {
                "Read " (r["rows"]) " rows: " (r["registered"]) " new devices, " (r["already_known"]) " already known. Batch " code { (text(&r["batch"])) } "."
            }
        },
    };
    let body = html! {
        (shown)
        @if session.can(Role::Admin) {
            div.two {
                form.card method="post" action="/console/enrollment/tokens" {
                    h2 { "New enrollment token" }
                    (csrf(session))
                    label for="e-type" { "Device type" }
                    select #e-type name="device_type" required {
                        @for t in types["items"].as_array().into_iter().flatten() { option value=(text(&t["name"])) { (text(&t["name"])) } }
                    }
                    label for="e-uses" { "Uses" }
                    input #e-uses type="number" name="uses" min="1" max="100000" value="1";
                    label for="e-hours" { "Valid for (hours)" }
                    input #e-hours type="number" name="hours" min="1" max="8760" value="24";
                    @if session.tenant.is_none() {
                        label for="e-tenant" { "Tenant the devices join" }
                        input #e-tenant name="tenant" value="default" pattern="[a-z0-9][a-z0-9-]{0,63}" required;
                    }
                    button type="submit" { "Create token" }
                }
                form.card method="post" action="/console/enrollment/import" {
                    h2 { "Pre-register devices (CSV)" }
                    (csrf(session))
                    label for="csv" { "CSV with a header row: device_type, device_id, and optionally name, owner, ownership" }
                    textarea #csv name="csv" rows="8" spellcheck="false" placeholder="device_type,device_id,name\nandroid,356000000000001,Front desk" { (csv) }
                    label { input type="checkbox" name="self_enroll" value="true"; " Devices may enroll without a token (LwM2M)" }
                    p.hint { "Every row is checked before any is stored; an error names its line." }
                    button type="submit" { "Import" }
                }
            }
        } @else {
            p.hint { "Enrolling devices needs an admin token." }
        }
    };
    let status = if error { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, html(page("Enrollment", Some(session), "enrollment", body))).into_response())
}

pub async fn index(State(console): State<ConsoleState>, session: Session) -> PageResult {
    enrollment_page(&console, &session, Outcome::None, "").await
}

#[derive(Deserialize)]
pub struct TokenForm {
    device_type: String,
    uses: i64,
    hours: i64,
    /// An operator's choice; a tenant's admin enrolls into its own.
    tenant: Option<String>,
}

pub async fn create_token(State(console): State<ConsoleState>, Posted(session, form): Posted<TokenForm>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let body = json!({"device_type": form.device_type, "uses": form.uses, "ttl_secs": form.hours.saturating_mul(3600),
                      "tenant": form.tenant.filter(|t| !t.is_empty())});
    let outcome = match api.send(Method::POST, "enrollment-tokens", &body).await {
        Ok(t) => Outcome::Token(t),
        Err(f) => Outcome::Error(f.message),
    };
    enrollment_page(&console, &session, outcome, "").await
}

#[derive(Deserialize)]
pub struct ImportForm {
    csv: String,
    #[serde(default)]
    self_enroll: Option<String>,
}

pub async fn import(State(console): State<ConsoleState>, Posted(session, form): Posted<ImportForm>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let path = if form.self_enroll.is_some() { "devices/import?self_enroll=true" } else { "devices/import" };
    match api.post_raw(path, form.csv.clone(), "text/csv").await {
        Ok(r) => enrollment_page(&console, &session, Outcome::Imported(r), "").await,
        Err(f) => enrollment_page(&console, &session, Outcome::Error(f.message), &form.csv).await,
    }
}
