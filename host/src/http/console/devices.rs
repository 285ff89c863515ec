//! Devices: the searchable list, a device's page (metadata, telemetry and a chart, its
//! operations live, the operation form built from its plugin's catalogue, tags, revoke,
//! remove) and an operation's page with its transitions.

use super::layout::{badge, button, chart, csrf, json, page, pager, text, when};
use super::session::{Posted, Session};
use super::{Api, ConsoleState, OrPage, PageError, PageResult, enc, html, see};
use crate::auth::Role;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

const STATUSES: &[&str] = &["registered", "active", "unreachable", "removed"];

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default, rename = "type")]
    device_type: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    after: String,
}

fn device_href(t: &str, id: &str) -> String {
    format!("/console/devices/{}/{}", enc(t), enc(id))
}

pub async fn list(State(console): State<ConsoleState>, session: Session, Query(q): Query<ListQuery>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let query: Vec<(&str, String)> = vec![
        ("q", q.q.clone()),
        ("type", q.device_type.clone()),
        ("status", q.status.clone()),
        ("tag", q.tag.clone()),
        ("group", q.group.clone()),
        ("owner", q.owner.clone()),
        ("metadata", q.metadata.clone()),
        ("after", q.after.clone()),
    ];
    let mut path = String::from("devices?limit=50");
    for (k, v) in &query {
        if !v.trim().is_empty() {
            path.push_str(&format!("&{k}={}", enc(v.trim())));
        }
    }
    let types: Value = api.get("device-types").await.or_page(&session)?;
    // A filter the API refuses (an unknown group) is shown above an empty list.
    let (devices, error) = match api.get::<Value>(&path).await {
        Ok(v) => (v, None),
        Err(f) => (json!({"items": []}), Some(f.message)),
    };
    let items = devices["items"].as_array().cloned().unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/console/devices" role="search" {
            label { "Search id or name" input type="search" name="q" value=(q.q); }
            label { "Type"
                select name="type" {
                    option value="" { "any" }
                    @for t in types["items"].as_array().into_iter().flatten() {
                        @let name = text(&t["name"]);
                        option value=(name) selected[q.device_type == name] { (name) }
                    }
                }
            }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[q.status == *s] { (s) } }
                }
            }
            label { "Tag" input name="tag" value=(q.tag) size="12"; }
            label { "Group" input name="group" value=(q.group) size="12"; }
            label { "Owner" input name="owner" value=(q.owner) size="12"; }
            label { "Metadata key=value" input name="metadata" value=(q.metadata) size="16" placeholder="model=Pixel 8"; }
            button type="submit" { "Filter" }
        }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        div.scroll {
            table {
                caption.hint { (items.len()) " devices on this page" }
                thead { tr { th scope="col" { "Device" } th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Status" } th scope="col" { "Owner" } th scope="col" { "Tags" } th scope="col" { "Last seen (UTC)" } } }
                tbody {
                    @for d in &items {
                        tr {
                            td { a href=(device_href(text(&d["device_type"]), text(&d["device_id"]))) { (text(&d["device_id"])) } }
                            td { (text(&d["name"])) }
                            td { (text(&d["device_type"])) }
                            td { (badge(text(&d["status"]))) }
                            td { (d["owner"].as_str().unwrap_or("")) }
                            td { @for t in d["tags"].as_array().into_iter().flatten() { a.tag href={"/console/devices?tag=" (enc(text(t)))} { (text(t)) } " " } }
                            td { (when(&d["last_seen_at"])) }
                        }
                    }
                }
            }
        }
        (pager("/console/devices", &query, &devices["next_after"]))
    };
    Ok(html(page("Devices", Some(&session), "devices", body)))
}

/// A skeleton payload from a JSON Schema: each property with its default, first example
/// or enum value, or an empty value of its type; what the admin edits before sending.
fn example(schema: &Value) -> Value {
    if let Some(v) = schema.get("default").or_else(|| schema["examples"].get(0)).or_else(|| schema["enum"].get(0)) {
        return v.clone();
    }
    match schema["type"].as_str() {
        Some("object") | None if schema["properties"].is_object() => {
            let mut out = serde_json::Map::new();
            for (k, v) in schema["properties"].as_object().into_iter().flatten() {
                out.insert(k.clone(), example(v));
            }
            Value::Object(out)
        }
        Some("object") => json!({}),
        Some("array") => json!([]),
        Some("integer") | Some("number") => json!(0),
        Some("boolean") => json!(false),
        Some("string") => json!(""),
        _ => Value::Null,
    }
}

#[derive(Deserialize, Default)]
pub struct ShowQuery {
    metric: Option<String>,
    added: Option<i64>,
}

/// What the operation form held when the API refused it: shown again with the reason.
#[derive(Default)]
struct FormState {
    code: String,
    payload: String,
    error: Option<String>,
    /// A pre-shared key just given (identity and key), shown this once.
    issued_psk: Option<Value>,
}

pub async fn show(
    State(console): State<ConsoleState>,
    session: Session,
    Path((t, id)): Path<(String, String)>,
    Query(q): Query<ShowQuery>,
) -> PageResult {
    device_page(&console, &session, &t, &id, q, FormState::default()).await
}

async fn device_page(
    console: &ConsoleState,
    session: &Session,
    t: &str,
    id: &str,
    q: ShowQuery,
    form: FormState,
) -> PageResult {
    let api = Api { console, session };
    let base = format!("devices/{}/{}", enc(t), enc(id));
    let device: Value = api.get(&base).await.or_page(session)?;
    let types: Value = api.get("device-types").await.or_page(session)?;
    let catalogue = types["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"] == t)
        .and_then(|d| d["operations"].as_array().cloned())
        .unwrap_or_default();
    let latest = device["telemetry"].as_array().cloned().unwrap_or_default();
    let numeric: Vec<&str> = latest.iter().filter(|p| p["value"].is_number()).map(|p| text(&p["name"])).collect();
    let metric = q.metric.clone().or_else(|| numeric.first().map(|s| s.to_string()));
    let mut points = Vec::new();
    if let Some(m) = &metric {
        let series: Value = api.get(&format!("{base}/telemetry?name={}&limit=500", enc(m))).await.or_page(session)?;
        for p in series["items"].as_array().into_iter().flatten() {
            if let (Some(at), Some(v)) = (p["at"].as_i64(), p["value"].as_f64()) {
                points.push((at, v));
            }
        }
        points.reverse();
    }
    let ops = operations_table(&api, session, t, id).await?;
    // Where policies exist: the effective policy (404: none applies) and compliance.
    let policy: Option<Value> = api.get(&format!("{base}/policy")).await.ok();
    let compliance: Option<Value> =
        if policy.is_some() { api.get(&format!("{base}/compliance")).await.ok() } else { None };
    let talks_coap = types["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"] == t)
        .and_then(|d| d["delivery"].as_array())
        .is_some_and(|ds| ds.iter().any(|d| d == "coap"));
    // 404: the device has no key.
    let psk: Option<Value> = if talks_coap { api.get(&format!("{base}/psk")).await.ok() } else { None };
    let certificates: Value = api.get(&format!("{base}/certificates")).await.or_page(session)?;
    let certificates = certificates.as_array().cloned().unwrap_or_default();
    let now = crate::store::now_ms();
    let href = device_href(t, id);
    let title = format!("{} {}", t, id);
    let tags: Vec<&str> = device["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let body = html! {
        @if let Some(a) = q.added { p.ok role="status" { "Operation added (activity " a href={"/console/activities/" (a)} { (a) } ")." } }
        div.two {
            section {
                h2 { "Device" }
                table {
                    tbody {
                        tr { th scope="row" { "Name" } td { (text(&device["name"])) } }
                        tr { th scope="row" { "Status" } td { (badge(text(&device["status"]))) } }
                        tr { th scope="row" { "Owner" } td { (device["owner"].as_str().unwrap_or("–")) " (" (text(&device["ownership"])) ")" } }
                        tr { th scope="row" { "Enrolled" } td { (when(&device["enrolled_at"])) } }
                        tr { th scope="row" { "Last seen" } td { (when(&device["last_seen_at"])) } }
                        tr { th scope="row" { "Push" } td { (device["push_transport"].as_str().unwrap_or("none")) } }
                    }
                }
                h2 { "Tags" }
                // A scoped session's token may not tag (the API answers 403 `scoped`).
                @if session.can(Role::Operator) && !session.scoped {
                    form.filters method="post" action={(href) "/tags"} {
                        (csrf(session))
                        label { "Tags, comma-separated" input name="tags" value=(tags.join(", ")) size="40"; }
                        button.secondary type="submit" { "Save tags" }
                    }
                } @else {
                    p { (tags.join(", ")) }
                }
                h2 { "Metadata" }
                @if device["metadata"].as_object().is_some_and(|m| !m.is_empty()) {
                    table { tbody { @for (k, v) in device["metadata"].as_object().into_iter().flatten() {
                        tr { th scope="row" { (k) } td { (v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())) } }
                    } } }
                } @else { p.hint { "The device has reported nothing about itself yet." } }
            }
            section {
                h2 { "Latest telemetry" }
                @if latest.is_empty() { p.hint { "No telemetry yet." } } @else {
                    table {
                        thead { tr { th scope="col" { "Metric" } th scope="col" { "Value" } th scope="col" { "At (UTC)" } } }
                        tbody { @for p in &latest {
                            tr {
                                td { @if p["value"].is_number() { a href={(href) "?metric=" (enc(text(&p["name"])))} { (text(&p["name"])) } } @else { (text(&p["name"])) } }
                                td.num { (p["value"].as_str().map(str::to_string).unwrap_or_else(|| p["value"].to_string())) }
                                td { (when(&p["at"])) }
                            }
                        } }
                    }
                }
                @if let Some(m) = &metric {
                    (chart(&points, m))
                    p { a href={"/console/metrics?resolution=minute&name=" (enc(m)) "&device=" (enc(t)) "%2F" (enc(id))} { (m) " per minute and per hour" } }
                }
            }
        }
        @if let Some(p) = &policy {
            h2 { "Policy and compliance" }
            table { tbody {
                tr { th scope="row" { "Effective policy" } td { @for n in p["policies"].as_array().into_iter().flatten() { (text(&n["name"])) " (revision " (n["revision"]) ") " } } }
                tr { th scope="row" { "Its bundle" } td { @if let Some(op) = p["operation"].as_i64() { a href={"/console/operations/" (op)} { "operation " (op) } " " (badge(text(&p["state"]))) } @else { "nothing to send" } } }
                @if let Some(c) = &compliance {
                    tr { th scope="row" { "Compliance" } td #compliance { (badge(text(&c["state"]))) @if c["blocked"] == true { " " (badge("blocked")) } " since " (when(&c["since"])) } }
                }
            } }
            @if let Some(c) = &compliance {
                @if c["checks"].as_array().is_some_and(|a| !a.is_empty()) {
                    table {
                        thead { tr { th scope="col" { "Policy" } th scope="col" { "Rule or feature" } th scope="col" { "Result" } th scope="col" { "Why" } } }
                        tbody { @for k in c["checks"].as_array().into_iter().flatten() {
                            tr {
                                td { (text(&k["policy"])) }
                                td { (k["rule"].as_str().or(k["feature"].as_str()).unwrap_or("–")) }
                                td { @match k["compliant"].as_bool() { Some(true) => (badge("compliant")), Some(false) => (badge("non_compliant")), None => (badge("unknown")) } }
                                td { (k["reason"].as_str().unwrap_or("")) }
                            }
                        } }
                    }
                }
            }
        }
        h2 #operations { "Operations" }
        (ops)
        @if session.can(Role::Operator) {
            h2 { "Send an operation" }
            @if catalogue.is_empty() { p.hint { "The device type's plugin is not loaded: no operation codes to offer." } } @else {
                form.card method="post" action={(href) "/operations/add"} {
                    (csrf(session))
                    @if let Some(e) = &form.error { p.error role="alert" id="op-error" { (e) } }
                    label for="op-code" { "Operation" }
                    select #op-code name="code" data-payload="op-payload" required {
                        @for o in &catalogue {
                            @let code = text(&o["code"]);
                            @let ex = if o["payload_schema"].is_null() { String::new() } else { serde_json::to_string_pretty(&example(&o["payload_schema"])).unwrap_or_default() };
                            option value=(code) data-example=(ex) selected[form.code == code] { (code) " — " (text(&o["description"])) " (" (text(&o["kind"])) ")" }
                        }
                    }
                    label for="op-payload" { "Payload (JSON; empty for none)" }
                    textarea #op-payload name="payload" rows="6" spellcheck="false" { (form.payload) }
                    p.hint { "The device type's plugin checks the payload before anything is queued; its message shows here if it refuses." }
                    button type="submit" { "Send" }
                    details {
                        summary { "Payload schemas" }
                        @for o in catalogue.iter().filter(|o| !o["payload_schema"].is_null()) {
                            h3 { code { (text(&o["code"])) } }
                            (json(&o["payload_schema"]))
                        }
                    }
                }
            }
        }
        @if session.can(Role::Admin) && !session.scoped {
            details open[form.issued_psk.is_some()] {
                summary { "Credentials and removal" }
                p { "Revoking ends the device's access tokens, certificates and pre-shared key: it must enroll again (or get a new key). Removing also cancels its queued operations." }
                h3 { "Certificates" }
                @if certificates.is_empty() {
                    p.hint { "None: the device has not asked for one (POST /agent/v1/" (t) "/certificate with a CSR; docs/security.md)." }
                } @else {
                    table #certificates {
                        thead { tr { th scope="col" { "Serial" } th scope="col" { "Issued (UTC)" } th scope="col" { "Valid until (UTC)" } th scope="col" { "State" } th scope="col" { "Action" } } }
                        tbody { @for c in &certificates {
                            @let serial = text(&c["serial"]);
                            @let live = c["revoked_at"].is_null() && c["not_after"].as_i64().is_some_and(|t| t > now);
                            tr {
                                td { code { (serial) } }
                                td { (when(&c["issued_at"])) }
                                td { (when(&c["not_after"])) }
                                td { @if !c["revoked_at"].is_null() { (badge("revoked")) } @else if live { (badge("active")) } @else { (badge("expired")) } }
                                td { @if live { (button(session, Role::Admin, &format!("{href}/certificates/{}/revoke", enc(serial)), "Revoke", "secondary")) } }
                            }
                        } }
                    }
                }
                @if talks_coap {
                    h3 { "Pre-shared key (LwM2M over DTLS)" }
                    @if let Some(k) = &form.issued_psk {
                        p.ok role="status" #psk-issued {
                            "New key for identity " code { (text(&k["identity"])) } ": " code #psk-key { (text(&k["key"])) }
                            ". Shown this once: put it in the device's LwM2M Security object (PSK mode)."
                        }
                    }
                    @if let Some(k) = &psk {
                        p #psk {
                            "Identity " code { (text(&k["identity"])) } ", given " (when(&k["created_at"])) " UTC "
                            @if k["revoked_at"].is_null() { (badge("active")) } @else { (badge("revoked")) }
                        }
                    } @else {
                        p.hint { "None: the device can register only over plain CoAP, where the server allows that (--coap-nosec)." }
                    }
                    (button(session, Role::Admin, &format!("{href}/psk"), if psk.is_some() { "Give a new key" } else { "Give a key" }, "secondary"))
                    " "
                }
                (button(session, Role::Admin, &format!("{href}/revoke"), "Revoke credentials", "secondary"))
                " "
                (button(session, Role::Admin, &format!("{href}/remove"), "Remove device", "danger"))
            }
        }
    };
    let status = if form.error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok((status, html(page(&title, Some(session), "devices", body))).into_response())
}

/// The device's newest operations: a live region the script refreshes.
async fn operations_table(api: &Api<'_>, session: &Session, t: &str, id: &str) -> Result<Markup, PageError> {
    let path = format!("operations?device_type={}&device_id={}&before=9007199254740991&limit=20", enc(t), enc(id));
    let ops: Value = api.get(&path).await.or_page(session)?;
    let items = ops["items"].as_array().cloned().unwrap_or_default();
    Ok(html! {
        div #ops data-live={"/console/devices/" (enc(t)) "/" (enc(id)) "/operations"} data-every="1500" aria-live="polite" {
            @if items.is_empty() { p.hint { "No operations yet." } } @else {
                table {
                    thead { tr { th scope="col" { "Id" } th scope="col" { "Code" } th scope="col" { "State" } th scope="col" { "Attempts" } th scope="col" { "Updated (UTC)" } } }
                    tbody { @for o in &items {
                        tr data-operation=(o["id"]) {
                            td { a href={"/console/operations/" (o["id"])} { (o["id"]) } }
                            td { code { (text(&o["code"])) } }
                            td.state { (badge(text(&o["state"]))) }
                            td.num { (o["attempts"]) "/" (o["max_attempts"]) }
                            td { (when(&o["updated_at"])) }
                        }
                    } }
                }
                p.hint { "The 20 newest; refreshed while this page is open." }
            }
        }
    })
}

pub async fn operations_fragment(
    State(console): State<ConsoleState>,
    session: Session,
    Path((t, id)): Path<(String, String)>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    Ok(html(operations_table(&api, &session, &t, &id).await?))
}

#[derive(Deserialize)]
pub struct AddForm {
    code: String,
    #[serde(default)]
    payload: String,
}

pub async fn add_operation(
    State(console): State<ConsoleState>,
    Path((t, id)): Path<(String, String)>,
    Posted(session, form): Posted<AddForm>,
) -> PageResult {
    let again = |error: String| FormState {
        code: form.code.clone(),
        payload: form.payload.clone(),
        error: Some(error),
        issued_psk: None,
    };
    let payload = if form.payload.trim().is_empty() {
        None
    } else {
        match serde_json::from_str::<Value>(&form.payload) {
            Ok(v) => Some(v),
            Err(e) => {
                let state = again(format!("The payload is not JSON: {e}"));
                return device_page(&console, &session, &t, &id, ShowQuery::default(), state).await;
            }
        }
    };
    let mut body = json!({"code": form.code, "targets": {"devices": [{"type": t, "id": id}]}});
    if let Some(p) = payload {
        body["payload"] = p;
    }
    let api = Api { console: &console, session: &session };
    match api.send(Method::POST, "operations", &body).await {
        Ok(added) => {
            let activity = added["activity"]["id"].as_i64().unwrap_or(0);
            Ok(see(&format!("{}?added={activity}#operations", device_href(&t, &id))))
        }
        Err(f) if f.status.is_client_error() && f.status != StatusCode::FORBIDDEN => {
            device_page(&console, &session, &t, &id, ShowQuery::default(), again(f.message)).await
        }
        Err(f) => Err(PageError::new(f, &session)),
    }
}

#[derive(Deserialize)]
pub struct TagsForm {
    tags: String,
}

pub async fn set_tags(
    State(console): State<ConsoleState>,
    Path((t, id)): Path<(String, String)>,
    Posted(session, form): Posted<TagsForm>,
) -> PageResult {
    let tags: Vec<&str> = form.tags.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let api = Api { console: &console, session: &session };
    let path = format!("devices/{}/{}/tags", enc(&t), enc(&id));
    api.send(Method::PUT, &path, &json!({"tags": tags})).await.or_page(&session)?;
    Ok(see(&device_href(&t, &id)))
}

pub async fn revoke(
    State(console): State<ConsoleState>,
    Path((t, id)): Path<(String, String)>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    let path = format!("devices/{}/{}/revoke-credentials", enc(&t), enc(&id));
    api.send(Method::POST, &path, &Value::Null).await.or_page(&session)?;
    Ok(see(&device_href(&t, &id)))
}

pub async fn revoke_certificate(
    State(console): State<ConsoleState>,
    Path((t, id, serial)): Path<(String, String, String)>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    let path = format!("devices/{}/{}/certificates/{}/revoke", enc(&t), enc(&id), enc(&serial));
    api.send(Method::POST, &path, &Value::Null).await.or_page(&session)?;
    Ok(see(&device_href(&t, &id)))
}

/// Give the device a new pre-shared key (generated) and show it this once.
pub async fn provision_psk(
    State(console): State<ConsoleState>,
    Path((t, id)): Path<(String, String)>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    let path = format!("devices/{}/{}/psk", enc(&t), enc(&id));
    let issued = api.send(Method::PUT, &path, &json!({})).await.or_page(&session)?;
    let shown = FormState { issued_psk: Some(issued), ..FormState::default() };
    device_page(&console, &session, &t, &id, ShowQuery::default(), shown).await
}

pub async fn remove(
    State(console): State<ConsoleState>,
    Path((t, id)): Path<(String, String)>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    let path = format!("devices/{}/{}", enc(&t), enc(&id));
    api.send(Method::DELETE, &path, &Value::Null).await.or_page(&session)?;
    Ok(see(&device_href(&t, &id)))
}

pub async fn operation(State(console): State<ConsoleState>, session: Session, Path(id): Path<i64>) -> PageResult {
    let api = Api { console: &console, session: &session };
    let op: Value = api.get(&format!("operations/{id}")).await.or_page(&session)?;
    let state = text(&op["state"]).to_string();
    let open = crate::ops::State::parse(&state).is_some_and(|s| !s.is_terminal());
    let body = html! {
        table { tbody {
            tr { th scope="row" { "Code" } td { code { (text(&op["code"])) } " (" (text(&op["kind"])) ")" } }
            tr { th scope="row" { "State" } td { (badge(&state)) } }
            @if let Some(d) = op["device"].as_object() {
                tr { th scope="row" { "Device" } td { a href=(device_href(text(&d["type"]), text(&d["id"]))) { (text(&d["type"])) " " (text(&d["id"])) } } }
            }
            tr { th scope="row" { "Activity" } td { a href={"/console/activities/" (op["activity"])} { (op["activity"]) } } }
            tr { th scope="row" { "Attempts" } td { (op["attempts"]) " of " (op["max_attempts"]) } }
            tr { th scope="row" { "Created" } td { (when(&op["created_at"])) } }
            tr { th scope="row" { "Expires" } td { (when(&op["expires_at"])) } }
        } }
        @if open { (button(&session, Role::Operator, &format!("/console/operations/{id}/cancel"), "Cancel operation", "danger")) }
        @if let Some(r) = op["response"].as_str() {
            h2 { "Latest response" }
            (json(&serde_json::from_str(r).unwrap_or(Value::String(r.into()))))
        }
        h2 { "Transitions" }
        table {
            thead { tr { th scope="col" { "At (UTC)" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "By" } } }
            tbody { @for tr_ in op["transitions"].as_array().into_iter().flatten() {
                tr { td { (when(&tr_["at"])) } td { (badge(text(&tr_["from_state"]))) } td { (badge(text(&tr_["to_state"]))) } td { (text(&tr_["actor"])) } }
            } }
        }
    };
    Ok(html(page(&format!("Operation {id}"), Some(&session), "activities", body)))
}

pub async fn cancel_operation(
    State(console): State<ConsoleState>,
    Path(id): Path<i64>,
    Posted(session, _): Posted<serde::de::IgnoredAny>,
) -> PageResult {
    let api = Api { console: &console, session: &session };
    api.send(Method::POST, &format!("operations/{id}/cancel"), &Value::Null).await.or_page(&session)?;
    Ok(see(&format!("/console/operations/{id}")))
}
