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
//!
//! A policy rule's cases give parameters (a TOML table, passed as JSON) and, to evaluate,
//! a device context file (JSON: `device_type`, `device_id`, `metadata` object, `tags`,
//! `telemetry` object of name → value):
//!
//! ```toml
//! [[case]]
//! call = "check-params"                   # check-params | evaluate
//! params = { telemetry = "battery", min = 20 }
//! expect = "ok"                           # ok | error [default: ok]
//!
//! [[case]]
//! call = "evaluate"
//! params = { telemetry = "battery", min = 20 }
//! context = "flat.json"
//! compliant = false                       # the verdict it must give
//! reason = "below 20"                     # text its reason must contain
//! ```

use super::CallError;
use super::runtime::LoadedPlugin;
use super::types::{
    Channel, CheckIn, CoapMessage, CoapMethod, Device, HttpMethod, HttpRequest, MqttMessage, Reply, ResultStatus,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A `cases.toml`: a device type's cases, or a rule's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile<C> {
    #[serde(rename = "case", default = "Vec::new")]
    cases: Vec<C>,
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
        "plugin {0} is a transport: `plugin test` feeds device payloads and rule contexts (test transports with `cargo test` in their crate)"
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

/// The cases of `dir/cases.toml`; there must be at least one.
fn read_cases<C: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Vec<C>, FixtureError> {
    let path = dir.join("cases.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| FixtureError::Read { path: path.clone(), source })?;
    let file: CasesFile<C> = toml::from_str(&text)
        .map_err(|e| FixtureError::Cases { path: path.clone(), message: e.message().to_string() })?;
    if file.cases.is_empty() {
        return Err(FixtureError::Cases { path, message: "no [[case]] entries".into() });
    }
    Ok(file.cases)
}

/// How `case` reaches the plugin (`call`: enroll or decode), for device `device_id`.
fn channel_of(case: &Case, call: &str, device_id: &str) -> Result<Channel, String> {
    let default_method = if call == "enroll" { "POST" } else { "PUT" };
    let Some(http_method) = method(case.method.as_deref().unwrap_or(default_method)) else {
        return Err(format!("`method = {:?}` is not an HTTP method", case.method));
    };
    Ok(match (&case.topic, &case.coap) {
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
                .replace("{id}", device_id),
            query: String::new(),
            content_type: case.content_type.clone(),
            headers: vec![],
        }),
    })
}

/// One recorded payload and how it reaches the plugin: a seed for fuzzing the plugin's
/// `enroll` and `decode` with variations of it (`tests/tests/fuzz.rs`).
#[derive(Debug, Clone)]
pub struct Input {
    pub file: String,
    /// `enroll` or `decode`.
    pub call: String,
    pub channel: Channel,
    pub body: Vec<u8>,
}

/// Every device-type case of `dir/cases.toml` as an [`Input`], decodes for device
/// `device_id` (the one the cases' enrollment makes).
pub fn inputs(dir: &Path, device_id: &str) -> Result<Vec<Input>, FixtureError> {
    let cases: Vec<Case> = read_cases(dir)?;
    let mut out = Vec::new();
    for case in &cases {
        let path = dir.join(&case.file);
        let body = std::fs::read(&path).map_err(|source| FixtureError::Read { path: path.clone(), source })?;
        let call = case.call.clone().unwrap_or_else(|| "decode".into());
        let channel = channel_of(case, &call, device_id)
            .map_err(|message| FixtureError::Cases { path: dir.join("cases.toml"), message })?;
        out.push(Input { file: case.file.clone(), call, channel, body });
    }
    Ok(out)
}

/// Run every case of `dir/cases.toml` against `plugin`, in order.
pub async fn run(plugin: &LoadedPlugin, dir: &Path) -> Result<Vec<Outcome>, FixtureError> {
    if plugin.rule_info().is_some() {
        return run_rule(plugin, dir).await;
    }
    if plugin.device_type_info().is_none() {
        return Err(FixtureError::NotDeviceType(plugin.label()));
    }
    let cases: Vec<Case> = read_cases(dir)?;
    let mut device = Device { id: "fixture-device".into(), metadata: vec![], session: vec![] };
    let mut outcomes = Vec::new();
    for case in &cases {
        let path = dir.join(&case.file);
        let body = std::fs::read(&path).map_err(|source| FixtureError::Read { path: path.clone(), source })?;
        let call = case.call.clone().unwrap_or_else(|| "decode".into());
        let bad = |detail: String| Outcome { file: case.file.clone(), call: call.clone(), passed: false, detail };
        let want_ok = match expects_ok(case.expect.as_deref()) {
            Ok(ok) => ok,
            Err(why) => {
                outcomes.push(bad(why));
                continue;
            }
        };
        let channel = match channel_of(case, &call, &device.id) {
            Ok(c) => c,
            Err(why) => {
                outcomes.push(bad(why));
                continue;
            }
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleCase {
    call: String,
    #[serde(default)]
    params: Option<toml::Value>,
    context: Option<String>,
    expect: Option<String>,
    compliant: Option<bool>,
    reason: Option<String>,
}

/// A device context file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextFile {
    #[serde(default)]
    device_type: String,
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    telemetry: serde_json::Map<String, serde_json::Value>,
}

fn context(
    file: ContextFile,
) -> Result<super::bindings::policy_rule::drover::plugin::policy_types::EvaluationContext, String> {
    use super::types::{TelemetryPoint, TelemetryValue};
    let text = |v: serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let mut telemetry = Vec::new();
    for (name, v) in file.telemetry {
        let value = match v {
            serde_json::Value::Number(n) => TelemetryValue::Number(n.as_f64().unwrap_or_default()),
            serde_json::Value::Bool(b) => TelemetryValue::Boolean(b),
            serde_json::Value::String(s) => TelemetryValue::Text(s),
            other => return Err(format!("telemetry `{name}` is {other}: a number, a boolean or a string")),
        };
        telemetry.push(TelemetryPoint { name, timestamp_ms: None, value });
    }
    Ok(super::bindings::policy_rule::drover::plugin::policy_types::EvaluationContext {
        device_type: file.device_type,
        device_id: file.device_id,
        metadata: file.metadata.into_iter().map(|(k, v)| (k, text(v))).collect(),
        tags: file.tags,
        telemetry,
    })
}

/// Run a policy rule's cases.
async fn run_rule(plugin: &LoadedPlugin, dir: &Path) -> Result<Vec<Outcome>, FixtureError> {
    let cases: Vec<RuleCase> = read_cases(dir)?;
    let mut outcomes = Vec::new();
    for case in &cases {
        let file = case.context.clone().unwrap_or_else(|| "(parameters)".into());
        let bad = |detail: String| Outcome { file: file.clone(), call: case.call.clone(), passed: false, detail };
        let want_ok = match expects_ok(case.expect.as_deref()) {
            Ok(ok) => ok,
            Err(why) => {
                outcomes.push(bad(why));
                continue;
            }
        };
        let params = match &case.params {
            Some(p) => serde_json::to_string(p).unwrap_or_default(),
            None => "{}".into(),
        };
        let mut wrong = Vec::new();
        let answer: Result<String, CallError> = match case.call.as_str() {
            "check-params" => plugin.check_params(&params).await.map(|()| "parameters accepted".to_string()),
            "evaluate" => {
                let Some(name) = &case.context else {
                    outcomes.push(bad("an `evaluate` case needs `context`, a device context file".into()));
                    continue;
                };
                let path = dir.join(name);
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| FixtureError::Read { path: path.clone(), source })?;
                let ctx = match serde_json::from_str::<ContextFile>(&text).map_err(|e| e.to_string()).and_then(context)
                {
                    Ok(c) => c,
                    Err(e) => {
                        outcomes.push(bad(format!("{name}: {e}")));
                        continue;
                    }
                };
                plugin.evaluate(&params, ctx).await.map(|v| {
                    if let Some(want) = case.compliant
                        && want != v.compliant
                    {
                        wrong.push(format!("the case wants compliant = {want}"));
                    }
                    if let Some(want) = &case.reason
                        && !v.reason.as_deref().unwrap_or_default().contains(want.as_str())
                    {
                        wrong.push(format!("the case wants a reason with `{want}`"));
                    }
                    let verdict = if v.compliant { "compliant" } else { "not compliant" };
                    format!("{verdict}{}", v.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())
                })
            }
            other => {
                outcomes.push(bad(format!("`call = \"{other}\"`: use check-params or evaluate")));
                continue;
            }
        };
        outcomes.push(match (answer, want_ok) {
            (Ok(detail), true) if wrong.is_empty() => {
                Outcome { file: file.clone(), call: case.call.clone(), passed: true, detail }
            }
            (Ok(detail), true) => bad(format!("{detail}; {}", wrong.join("; "))),
            (Ok(detail), false) => bad(format!("the case expects an error, the plugin accepted it: {detail}")),
            (Err(CallError::Rejected(e)), false) => Outcome {
                file: file.clone(),
                call: case.call.clone(),
                passed: true,
                detail: format!("refused as expected: {}", e.message),
            },
            (Err(e), _) => bad(e.to_string()),
        });
    }
    Ok(outcomes)
}

/// A case's `expect`: `ok` (the default) or `error`.
fn expects_ok(expect: Option<&str>) -> Result<bool, String> {
    match expect.unwrap_or("ok") {
        "ok" => Ok(true),
        "error" => Ok(false),
        other => Err(format!("`expect = \"{other}\"`: use ok or error")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn expect_is_ok_or_error() {
        assert_eq!(super::expects_ok(None), Ok(true));
        assert_eq!(super::expects_ok(Some("error")), Ok(false));
        let why = super::expects_ok(Some("fail")).unwrap_err();
        assert!(why.contains("`expect = \"fail\"`") && why.contains("use ok or error"), "{why}");
    }
}
