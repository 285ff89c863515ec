//! Device type `lwm2m`: LwM2M clients over CoAP. The host runs the registration
//! interface (register, update, de-register on `/rd`) and the CoAP exchanges; this plugin
//! validates registrations, turns operations into Read / Write / Execute / Observe
//! requests on object/instance/resource paths, and decodes the answers (TLV, SenML JSON,
//! text). A firmware update is one operation: write the Package URI, observe /5/0, and
//! execute Update when the device says the package is downloaded. README.md has the
//! details.

pub mod codec;
pub mod objects;

use codec::Values;
use drover_sdk::device_type::Guest;
use drover_sdk::device_type::drover::plugin::types::{
    Channel, ChannelKind, CoapMessage, CoapMethod, CoapRequest, Delivery, Device, DeviceMessage, DeviceTypeInfo,
    Encoded, Enrollment, Operation, OperationCode, OperationKind, OperationResult, Outbound, Ownership, PluginError,
    Reply, ResultStatus, TelemetryPoint, TelemetryValue,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub struct Lwm2m;

const PATH_SCHEMA: &str = r#"{"type":"object","additionalProperties":false,"required":["path"],"properties":{"path":{"type":"string","pattern":"^/?[0-9]+(/[0-9]+){0,3}$"},"format":{"enum":["tlv","senml","text"]}}}"#;

/// (code, kind, description, payload schema).
pub const CODES: &[(&str, OperationKind, &str, Option<&str>)] = &[
    (
        "Read",
        OperationKind::Command,
        "Read an object, instance or resource (`format`: tlv (default), senml or text)",
        Some(PATH_SCHEMA),
    ),
    (
        "Write",
        OperationKind::Profile,
        "Write a resource: `path` and `value` (`format`: text (default) or tlv)",
        Some(
            r#"{"type":"object","additionalProperties":false,"required":["path","value"],"properties":{"path":{"type":"string"},"value":{"type":["string","number","boolean"]},"format":{"enum":["tlv","text"]}}}"#,
        ),
    ),
    (
        "Execute",
        OperationKind::Command,
        "Execute a resource, with optional `args`",
        Some(
            r#"{"type":"object","additionalProperties":false,"required":["path"],"properties":{"path":{"type":"string"},"args":{"type":"string"}}}"#,
        ),
    ),
    (
        "Observe",
        OperationKind::Command,
        "Observe a path: every notification is recorded as telemetry",
        Some(PATH_SCHEMA),
    ),
    ("CancelObserve", OperationKind::Command, "Stop observing a path", Some(PATH_SCHEMA)),
    ("DeviceInfo", OperationKind::Command, "Read /3/0 (Device); it updates the device record and telemetry", None),
    ("Reboot", OperationKind::Command, "Execute /3/0/4 (Reboot)", None),
    ("FactoryReset", OperationKind::Command, "Execute /3/0/5 (Factory Reset)", None),
    (
        "FIRMWARE_UPDATE",
        OperationKind::Command,
        "Firmware by Package URI: write /5/0/1, observe /5/0, execute /5/0/2 once downloaded; ends with the Update Result",
        Some(FIRMWARE_SCHEMA),
    ),
    (
        "FIRMWARE_ROLLBACK",
        OperationKind::Command,
        "An older image by Package URI (a rollout's rollback): the same steps as FIRMWARE_UPDATE",
        Some(FIRMWARE_SCHEMA),
    ),
];

/// `uri` as admins write it, or the standard update payload of rollouts (`url`, with
/// `sha256`, `size` and `version`, which LwM2M's Package URI method does not carry:
/// the device checks the package itself).
const FIRMWARE_SCHEMA: &str = r#"{"type":"object","additionalProperties":false,"properties":{"uri":{"type":"string","pattern":"^(coaps?|https?)://"},"url":{"type":"string","pattern":"^(coaps?|https?)://"},"sha256":{"type":"string"},"size":{"type":"integer"},"version":{"type":"string"}}}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathPayload {
    path: String,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WritePayload {
    path: String,
    value: Value,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutePayload {
    path: String,
    #[serde(default)]
    args: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FirmwarePayload {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default, rename = "sha256")]
    _sha256: Option<String>,
    #[serde(default, rename = "size")]
    _size: Option<u64>,
    #[serde(default, rename = "version")]
    _version: Option<String>,
}

fn parse<T: for<'de> Deserialize<'de>>(code: &str, payload: Option<&str>) -> Result<T, String> {
    serde_json::from_str(payload.unwrap_or("null")).map_err(|e| format!("{code} payload: {e}"))
}

fn path_of(text: &str, min_depth: usize, what: &str) -> Result<String, String> {
    let p = codec::parse_path(text)?;
    if p.len() < min_depth {
        return Err(format!(
            "{what} needs a {} path, `{text}` is not one",
            ["", "object", "instance", "resource"][min_depth]
        ));
    }
    Ok(p.iter().map(u16::to_string).collect::<Vec<_>>().join("/"))
}

fn accept(format: Option<&str>) -> Result<u16, String> {
    match format.unwrap_or("tlv") {
        "tlv" => Ok(codec::TLV),
        "senml" => Ok(codec::SENML_JSON),
        "text" => Ok(codec::TEXT),
        other => Err(format!("`format` `{other}`: tlv, senml or text")),
    }
}

fn request(id: u64, method: CoapMethod, path: &str) -> CoapRequest {
    CoapRequest {
        operation_id: id,
        method,
        path: path.into(),
        content_format: None,
        accept: None,
        observe: None,
        payload: vec![],
    }
}

/// The CoAP requests for one operation.
pub fn requests(id: u64, code: &str, payload: Option<&str>) -> Result<Vec<CoapRequest>, String> {
    Ok(match code {
        "Read" | "Observe" | "CancelObserve" => {
            let p: PathPayload = parse(code, payload)?;
            let mut r = request(id, CoapMethod::Get, &path_of(&p.path, 1, code)?);
            r.accept = Some(accept(p.format.as_deref())?);
            r.observe = match code {
                "Observe" => Some(true),
                "CancelObserve" => Some(false),
                _ => None,
            };
            vec![r]
        }
        "Write" => {
            let w: WritePayload = parse(code, payload)?;
            let path = path_of(&w.path, 3, code)?;
            let parts = codec::parse_path(&path)?;
            if objects::resource_type(&parts) == Some(objects::Type::Execute) {
                return Err(format!("Write: `{path}` is an executable resource (use Execute)"));
            }
            let mut r = request(id, CoapMethod::Put, &path);
            match w.format.as_deref().unwrap_or("text") {
                "text" => {
                    r.content_format = Some(codec::TEXT);
                    r.payload = match &w.value {
                        Value::String(s) => s.clone().into_bytes(),
                        Value::Bool(b) => if *b { "1" } else { "0" }.into(),
                        Value::Number(n) => n.to_string().into_bytes(),
                        other => return Err(format!("Write: {other} cannot be a resource value")),
                    };
                }
                "tlv" => {
                    r.content_format = Some(codec::TLV);
                    let value = codec::tlv_value(&w.value, objects::resource_type(&parts))?;
                    r.payload = codec::encode_tlv_resource(parts[2], &value);
                }
                other => return Err(format!("Write: `format` `{other}`: text or tlv")),
            }
            vec![r]
        }
        "Execute" => {
            let e: ExecutePayload = parse(code, payload)?;
            let mut r = request(id, CoapMethod::Post, &path_of(&e.path, 3, code)?);
            if let Some(a) = e.args {
                r.content_format = Some(codec::TEXT);
                r.payload = a.into_bytes();
            }
            vec![r]
        }
        "DeviceInfo" => {
            let mut r = request(id, CoapMethod::Get, "3/0");
            r.accept = Some(codec::TLV);
            vec![r]
        }
        "Reboot" => vec![request(id, CoapMethod::Post, "3/0/4")],
        "FactoryReset" => vec![request(id, CoapMethod::Post, "3/0/5")],
        "FIRMWARE_UPDATE" | "FIRMWARE_ROLLBACK" => {
            let f: FirmwarePayload = parse(code, payload)?;
            let uri = match (f.uri, f.url) {
                (Some(u), None) | (None, Some(u)) => u,
                _ => return Err(format!("{code}: give the package's `uri` (or a rollout's `url`), one of them")),
            };
            let scheme_ok = ["coap://", "coaps://", "http://", "https://"].iter().any(|s| uri.starts_with(s));
            if !scheme_ok || uri.len() > 255 || uri.chars().any(char::is_whitespace) {
                return Err(format!("{code}: `uri` `{uri}` is not a coap(s) or http(s) URI"));
            }
            let mut write = request(id, CoapMethod::Put, "5/0/1");
            write.content_format = Some(codec::TEXT);
            write.payload = uri.into_bytes();
            let mut observe = request(id, CoapMethod::Get, "5/0");
            observe.accept = Some(codec::TLV);
            observe.observe = Some(true);
            vec![write, observe]
        }
        other => return Err(format!("unknown operation code `{other}`")),
    })
}

/// Per-device plugin state: firmware operations whose Update was already executed.
#[derive(Default, Serialize, Deserialize)]
struct Session {
    #[serde(default)]
    executed: Vec<u64>,
}

/// Endpoint names become device ids (and URL segments): keep them plain.
fn check_endpoint(ep: &str) -> Result<(), String> {
    let ok = !ep.is_empty()
        && ep.len() <= 64
        && ep.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok { Ok(()) } else { Err(format!("endpoint name `{ep}`: 1 to 64 letters, digits, `-`, `_`, `.` or `:`")) }
}

fn query<'a>(q: &'a [String], key: &str) -> Option<&'a str> {
    q.iter().find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

impl Guest for Lwm2m {
    fn describe() -> DeviceTypeInfo {
        DeviceTypeInfo {
            name: "lwm2m".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "LwM2M clients over CoAP: Read, Write, Execute, Observe; /3 Device and /5 Firmware Update"
                .into(),
            operations: CODES
                .iter()
                .map(|(code, kind, description, schema)| OperationCode {
                    code: (*code).into(),
                    kind: *kind,
                    description: (*description).into(),
                    payload_schema: schema.map(str::to_string),
                })
                .collect(),
            delivery: vec![Delivery::Coap],
            content_types: vec![
                "application/vnd.oma.lwm2m+tlv".into(),
                "application/senml+json".into(),
                "text/plain".into(),
            ],
            max_operations_per_message: Some(8),
        }
    }

    fn validate(code: String, payload: Option<String>) -> Result<(), PluginError> {
        if !CODES.iter().any(|c| c.0 == code) {
            return Err(PluginError::unknown_operation(&code));
        }
        requests(0, &code, payload.as_deref()).map(|_| ()).map_err(PluginError::invalid)
    }

    /// A registration (`POST /rd?ep=…&lt=…&lwm2m=…&b=…` with the object links).
    fn enroll(message: Channel, body: Vec<u8>) -> Result<Enrollment, PluginError> {
        let Channel::Coap(m) = message else {
            return Err(PluginError::unsupported("LwM2M devices register over CoAP (POST /rd)"));
        };
        let ep =
            query(&m.query, "ep").ok_or_else(|| PluginError::invalid("registration without `ep` (endpoint name)"))?;
        check_endpoint(ep).map_err(PluginError::invalid)?;
        let objects = codec::parse_links(&body).map_err(PluginError::malformed)?;
        let mut metadata = vec![("objects".to_string(), objects.join(","))];
        for (key, name) in [("lwm2m", "lwm2m_version"), ("b", "binding"), ("lt", "lifetime")] {
            if let Some(v) = query(&m.query, key) {
                metadata.push((name.into(), v.into()));
            }
        }
        Ok(Enrollment {
            device_id: ep.into(),
            name: None,
            ownership: Ownership::Cope,
            owner: None,
            metadata,
            push: None,
        })
    }

    fn encode(_device: Device, operations: Vec<Operation>, channel: ChannelKind) -> Result<Encoded, PluginError> {
        if channel != ChannelKind::Coap {
            return Err(PluginError::unsupported("LwM2M devices are reached over CoAP only"));
        }
        let mut out = Vec::new();
        for o in &operations {
            out.extend(
                requests(o.id, &o.code, o.payload.as_deref())
                    .map_err(|e| PluginError::invalid(format!("operation {}: {e}", o.id)))?,
            );
        }
        Ok(Encoded { output: Outbound::Coap(out), delivered: operations.iter().map(|o| o.id).collect(), session: None })
    }

    fn decode(device: Device, message: Channel, body: Vec<u8>) -> Result<DeviceMessage, PluginError> {
        let Channel::Coap(m) = message else {
            return Err(PluginError::unsupported("LwM2M devices speak CoAP only"));
        };
        decode(&device, &m, &body)
    }
}

fn code_text(code: u16) -> String {
    format!("{}.{:02}", code / 100, code % 100)
}

fn meaning(code: u16) -> &'static str {
    match code {
        201 => "Created",
        202 => "Deleted",
        204 => "Changed",
        205 => "Content",
        231 => "Continue",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Bad Option",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Entity Incomplete",
        413 => "Request Entity Too Large",
        415 => "Unsupported Content-Format",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Decode a device's CoAP response to a request made for an operation.
pub fn decode(device: &Device, m: &CoapMessage, body: &[u8]) -> Result<DeviceMessage, PluginError> {
    let mut out = DeviceMessage {
        results: vec![],
        check_in: None,
        telemetry: vec![],
        info: vec![],
        reply: Reply::None,
        session: None,
    };
    if m.method.is_some() {
        return Err(PluginError::unsupported(
            "device requests (register, update) are the host's; only responses come here",
        ));
    }
    let Some(operation_id) = m.operation_id else {
        return Err(PluginError::invalid("a response that answers no operation"));
    };
    if m.code >= 300 {
        let response = json!({"code": code_text(m.code), "meaning": meaning(m.code), "path": m.path,
                              "diagnostic": String::from_utf8_lossy(body)});
        out.results.push(OperationResult {
            operation_id,
            status: ResultStatus::Error,
            response: Some(response.to_string()),
        });
        return Ok(out);
    }
    let values = codec::decode(&m.path, m.content_format, body).map_err(PluginError::malformed)?;
    take_values(&values, &mut out);
    let path = m.path.trim_matches('/');
    let (status, response) = match path {
        // Firmware update by Package URI: the write, the execute, then the state machine.
        "5/0/1" => (ResultStatus::InProgress, json!({"firmware": "package URI written", "code": code_text(m.code)})),
        "5/0/2" => (ResultStatus::InProgress, json!({"firmware": "update started", "code": code_text(m.code)})),
        "5/0" | "5/0/3" if values.contains_key("5/0/3") => firmware(device, operation_id, &values, &mut out)?,
        _ => (ResultStatus::Completed, json!({"code": code_text(m.code), "values": named(&values)})),
    };
    out.results.push(OperationResult { operation_id, status, response: Some(response.to_string()) });
    Ok(out)
}

/// Where a firmware update is, from an observation of /5/0: downloading, downloaded (then
/// Drover executes Update, once), updating, or done with the Update Result.
fn firmware(
    device: &Device,
    operation: u64,
    values: &Values,
    out: &mut DeviceMessage,
) -> Result<(ResultStatus, Value), PluginError> {
    let state = values.get("5/0/3").and_then(Value::as_i64).unwrap_or(-1);
    let result = values.get("5/0/5").and_then(Value::as_i64).unwrap_or(0);
    // The standard update states rollouts read (docs/plugin-contract.md, "Updates").
    let update_state = match state {
        2 | 3 => "installing",
        _ => "downloading",
    };
    let response = json!({"state": objects::firmware_state(state), "update_result": result,
                          "meaning": objects::update_result(result), "update_state": update_state});
    Ok(match (state, result) {
        (0, 1) => (ResultStatus::Completed, response),
        (0, r) if r >= 2 => (ResultStatus::Error, response),
        (2, _) => {
            let mut session: Session = serde_json::from_slice(&device.session).unwrap_or_default();
            if !session.executed.contains(&operation) {
                session.executed.push(operation);
                // Keep the list short: only recent updates can be notified again.
                let n = session.executed.len();
                session.executed.drain(..n.saturating_sub(16));
                out.session = Some(serde_json::to_vec(&session).expect("serializes"));
                out.reply = Reply::Immediate(Outbound::Coap(vec![request(operation, CoapMethod::Post, "5/0/2")]));
            }
            (ResultStatus::InProgress, response)
        }
        _ => (ResultStatus::InProgress, response),
    })
}

/// Values keyed by path, with the resource's name where Drover knows it.
fn named(values: &Values) -> Value {
    let mut out = serde_json::Map::new();
    for (path, v) in values {
        let parts = codec::parse_path(path).unwrap_or_default();
        let key = match objects::resource_name(&parts) {
            Some(name) => format!("{path} {name}"),
            None => path.clone(),
        };
        out.insert(key, v.clone());
    }
    Value::Object(out)
}

/// Device resources that describe the device become metadata; measurements telemetry.
fn take_values(values: &Values, out: &mut DeviceMessage) {
    for (path, v) in values {
        let parts = codec::parse_path(path).unwrap_or_default();
        let Some(name) = objects::resource_name(&parts) else { continue };
        match (parts.first(), name) {
            (
                Some(3),
                "Manufacturer"
                | "ModelNumber"
                | "SerialNumber"
                | "FirmwareVersion"
                | "DeviceType"
                | "HardwareVersion"
                | "SoftwareVersion"
                | "SupportedBindingAndModes",
            ) => {
                if let Some(s) = v.as_str() {
                    out.info.push((name.into(), s.into()));
                    if name == "FirmwareVersion" {
                        // The key rollouts compare with an artifact's version.
                        out.info.push(("firmware".into(), s.into()));
                    }
                }
            }
            // Multi-instance resources (one voltage per power source) are left to the result.
            (Some(3), "BatteryLevel" | "MemoryFree" | "PowerSourceVoltage" | "ErrorCode") if parts.len() == 3 => {
                if let Some(n) = v.as_f64() {
                    let telemetry = match name {
                        "BatteryLevel" => "battery".to_string(),
                        "MemoryFree" => "memory.free_kb".to_string(),
                        "PowerSourceVoltage" => "power.voltage_mv".to_string(),
                        _ => "error_code".to_string(),
                    };
                    out.telemetry.push(TelemetryPoint {
                        name: telemetry,
                        timestamp_ms: None,
                        value: TelemetryValue::Number(n),
                    });
                }
            }
            (Some(5), "State" | "UpdateResult") => {
                if let Some(n) = v.as_f64() {
                    let t = if name == "State" { "firmware.state" } else { "firmware.update_result" };
                    out.telemetry.push(TelemetryPoint {
                        name: t.into(),
                        timestamp_ms: None,
                        value: TelemetryValue::Number(n),
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_device_type!(Lwm2m);

#[cfg(test)]
mod tests;
