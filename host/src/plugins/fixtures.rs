//! `drover plugin test`: run a device-type plugin against recorded device payloads, with
//! no server. A fixtures directory holds the payloads and a `cases.toml` saying how each
//! reaches the plugin and what must come out:
//!
//! ```toml
//! [[case]]
//! file = "enroll.json"                    # the payload, relative to the directory
//! call = "enroll"                         # enroll | decode [default: decode]
//! path = "devices/{id}/pending-operations"  # agent sub-path ({id}: the enrolled device) [enroll: "enroll", decode: "poll"]
//! method = "PUT"                          # [enroll: POST, decode: PUT]
//! content_type = "application/json"       # [none]
//! topic = "reply"                         # decode an MQTT message with this topic suffix instead of HTTP
//! coap = "3/0"                            # a CoAP response to a request on this path (enroll: the registration, `rd`)
//! code = 205                              # the CoAP response code [205]; `query` and `format` (content format) too
//! operation = 7                           # the operation the CoAP response answers [1]
//! expect = "ok"                           # ok | error [default: ok]
//! results = 3                             # how many operation results it must decode
//! telemetry = 1                           # how many telemetry points
//! info = ["OS_VERSION"]                   # info keys it must report
//! check_in = "token-update"               # authenticate | token-update | heartbeat | check-out | none
//! reply = "pending-operations"            # none | pending-operations | immediate
//! ```
//!
//! Cases run in order and share one device, as a real one would: enrolling sets its id
//! and metadata, reported info is merged in, the session a decode returns is passed to
//! the next (OMA-DM sessions span messages).

use super::CallError;
use super::runtime::LoadedPlugin;
use super::types::{
    Channel, CheckIn, CoapMessage, CoapMethod, Device, HttpMethod, HttpRequest, MqttMessage, Reply, ResultStatus,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(rename = "case", default)]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    file: String,
    #[serde(default)]
    call: Option<String>,
    path: Option<String>,
    method: Option<String>,
    content_type: Option<String>,
    topic: Option<String>,
    coap: Option<String>,
    code: Option<u16>,
    #[serde(default)]
    query: Vec<String>,
    format: Option<u16>,
    operation: Option<u64>,
    #[serde(default)]
    expect: Option<String>,
    results: Option<usize>,
    telemetry: Option<usize>,
    #[serde(default)]
    info: Vec<String>,
    check_in: Option<String>,
    reply: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Cases { path: PathBuf, message: String },
    #[error(
        "plugin {0} is not a device type: `plugin test` feeds device payloads (test transports and rules with `cargo test` in their crate)"
    )]
    NotDeviceType(String),
}

/// What one case did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub file: String,
    pub call: String,
    pub passed: bool,
    /// What the plugin answered, or why the case failed.
    pub detail: String,
}

fn method(text: &str) -> Option<HttpMethod> {
    Some(match text.to_ascii_uppercase().as_str() {
        "GET" => HttpMethod::Get,
        "HEAD" => HttpMethod::Head,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        _ => return None,
    })
}

/// Run every case of `dir/cases.toml` against `plugin`, in order.
pub async fn run(plugin: &LoadedPlugin, dir: &Path) -> Result<Vec<Outcome>, FixtureError> {
    if plugin.device_type_info().is_none() {
        return Err(FixtureError::NotDeviceType(plugin.label()));
    }
    let cases_path = dir.join("cases.toml");
    let text = std::fs::read_to_string(&cases_path)
        .map_err(|source| FixtureError::Read { path: cases_path.clone(), source })?;
    let cases: CasesFile = toml::from_str(&text)
        .map_err(|e| FixtureError::Cases { path: cases_path.clone(), message: e.message().to_string() })?;
    if cases.cases.is_empty() {
        return Err(FixtureError::Cases { path: cases_path, message: "no [[case]] entries".into() });
    }
    let mut device = Device { id: "fixture-device".into(), metadata: vec![], session: vec![] };
    let mut outcomes = Vec::new();
    for case in &cases.cases {
        let path = dir.join(&case.file);
        let body = std::fs::read(&path).map_err(|source| FixtureError::Read { path: path.clone(), source })?;
        let call = case.call.clone().unwrap_or_else(|| "decode".into());
        let bad = |detail: String| Outcome { file: case.file.clone(), call: call.clone(), passed: false, detail };
        let want_ok = match case.expect.as_deref().unwrap_or("ok") {
            "ok" => true,
            "error" => false,
            other => {
                outcomes.push(bad(format!("`expect = \"{other}\"`: use ok or error")));
                continue;
            }
        };
        let default_method = if call == "enroll" { "POST" } else { "PUT" };
        let Some(http_method) = method(case.method.as_deref().unwrap_or(default_method)) else {
            outcomes.push(bad(format!("`method = {:?}` is not an HTTP method", case.method)));
            continue;
        };
        let channel = match (&case.topic, &case.coap) {
            (Some(t), _) => Channel::Mqtt(MqttMessage { topic_suffix: t.clone() }),
            (None, Some(path)) => Channel::Coap(CoapMessage {
                method: (call == "enroll").then_some(CoapMethod::Post),
                code: if call == "enroll" { 0 } else { case.code.unwrap_or(205) },
                path: path.clone(),
                query: case.query.clone(),
                content_format: case.format,
                operation_id: (call != "enroll").then_some(case.operation.unwrap_or(1)),
            }),
            (None, None) => Channel::Http(HttpRequest {
                method: http_method,
                path: case
                    .path
                    .clone()
                    .unwrap_or_else(|| if call == "enroll" { "enroll".into() } else { "poll".into() })
                    .replace("{id}", &device.id),
                query: String::new(),
                content_type: case.content_type.clone(),
                headers: vec![],
            }),
        };
        let (answer, mut checks): (Result<String, CallError>, Vec<String>) = match call.as_str() {
            "enroll" => match plugin.enroll(super::Source::Admin, channel, body).await {
                Ok(e) => {
                    device.id = e.device_id.clone();
                    device.metadata = e.metadata.clone();
                    let push = e.push.as_ref().map_or(String::new(), |p| format!(", push token for {}", p.transport));
                    (Ok(format!("device `{}`, {} metadata{push}", e.device_id, e.metadata.len())), vec![])
                }
                Err(e) => (Err(e), vec![]),
            },
            "decode" => match plugin.decode(super::Source::Admin, device.clone(), channel, body).await {
                Ok(m) => {
                    let mut checks = Vec::new();
                    if let Some(n) = case.results
                        && m.results.len() != n
                    {
                        checks.push(format!("decoded {} results, the case wants {n}", m.results.len()));
                    }
                    if let Some(n) = case.telemetry
                        && m.telemetry.len() != n
                    {
                        checks.push(format!("decoded {} telemetry points, the case wants {n}", m.telemetry.len()));
                    }
                    for key in &case.info {
                        if !m.info.iter().any(|(k, _)| k == key) {
                            checks.push(format!("no info `{key}`"));
                        }
                    }
                    for (k, v) in &m.info {
                        match device.metadata.iter_mut().find(|(dk, _)| dk == k) {
                            Some(slot) => slot.1 = v.clone(),
                            None => device.metadata.push((k.clone(), v.clone())),
                        }
                    }
                    if let Some(s) = &m.session {
                        device.session = s.clone();
                    }
                    let statuses: Vec<String> = m
                        .results
                        .iter()
                        .map(|r| {
                            let s = match r.status {
                                ResultStatus::Completed => "completed",
                                ResultStatus::Error => "error",
                                ResultStatus::InProgress => "in-progress",
                                ResultStatus::NotNow => "not-now",
                            };
                            format!("{}:{s}", r.operation_id)
                        })
                        .collect();
                    let check_in_name = match &m.check_in {
                        None => "none",
                        Some(CheckIn::Authenticate) => "authenticate",
                        Some(CheckIn::TokenUpdate(_)) => "token-update",
                        Some(CheckIn::Heartbeat) => "heartbeat",
                        Some(CheckIn::CheckOut) => "check-out",
                    };
                    if let Some(want) = &case.check_in
                        && want != check_in_name
                    {
                        checks.push(format!("check-in is {check_in_name}, the case wants {want}"));
                    }
                    let check_in = match &m.check_in {
                        None => String::new(),
                        Some(CheckIn::TokenUpdate(t)) => format!(", token update for {}", t.transport),
                        Some(_) => format!(", check-in {check_in_name}"),
                    };
                    let reply = match &m.reply {
                        Reply::None => "none",
                        Reply::PendingOperations => "pending-operations",
                        Reply::Immediate(_) => "immediate",
                    };
                    if let Some(want) = &case.reply
                        && want != reply
                    {
                        checks.push(format!("reply is {reply}, the case wants {want}"));
                    }
                    let detail = format!(
                        "{} results [{}], {} telemetry, {} info{check_in}; reply: {reply}",
                        m.results.len(),
                        statuses.join(" "),
                        m.telemetry.len(),
                        m.info.len()
                    );
                    (Ok(detail), checks)
                }
                Err(e) => (Err(e), vec![]),
            },
            other => {
                outcomes.push(bad(format!("`call = \"{other}\"`: use enroll or decode")));
                continue;
            }
        };
        let outcome = match (answer, want_ok) {
            (Ok(detail), true) if checks.is_empty() => Outcome { file: case.file.clone(), call, passed: true, detail },
            (Ok(detail), true) => {
                checks.insert(0, detail);
                bad(checks.join("; "))
            }
            (Ok(detail), false) => bad(format!("the case expects an error, the plugin accepted it: {detail}")),
            (Err(CallError::Rejected(e)), false) => Outcome {
                file: case.file.clone(),
                call,
                passed: true,
                detail: format!("refused as expected: {}", e.message),
            },
            (Err(e), _) => bad(e.to_string()),
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}
