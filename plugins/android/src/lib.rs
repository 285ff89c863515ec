//! Drover's reference device type: Android devices running a WSO2-style agent.
//!
//! This is the plugin to read first. It shows the contract's whole shape with a simple
//! wire format: `describe` publishes the catalogue ([`operations`]), `validate` checks an
//! admin's payload, `enroll` reads the agent's enrollment JSON, `encode` and `decode`
//! translate the polling and MQTT traffic ([`wire`]). The host owns every state change.

pub mod operations;
pub mod wire;

use drover_sdk::device_type::Guest;
use drover_sdk::device_type::drover::plugin::types::{
    Channel, ChannelKind, CheckIn, Delivery, Device, DeviceMessage, DeviceTypeInfo, Encoded, Enrollment, HttpMethod,
    HttpResponse, MqttPublish, Operation, OperationCode, OperationKind, OperationResult, Outbound, Ownership,
    PluginError, PushToken, Reply, ResultStatus, TelemetryPoint, TelemetryValue,
};
use operations::{Kind, PayloadError};
use serde_json::Value;

/// The plugin. Stateless: everything it needs arrives in each call.
pub struct Android;

const JSON: &str = "application/json";

impl Guest for Android {
    fn describe() -> DeviceTypeInfo {
        DeviceTypeInfo {
            name: "android".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Android devices with the WSO2-style agent: JSON over HTTP polling or MQTT".into(),
            operations: operations::CODES
                .iter()
                .map(|c| OperationCode {
                    code: c.code.into(),
                    kind: kind_to_wit(c.kind),
                    description: c.description.into(),
                    payload_schema: c.schema.map(str::to_string),
                })
                .collect(),
            delivery: vec![Delivery::Poll, Delivery::Push, Delivery::WakeUp],
            content_types: vec![JSON.into()],
            max_operations_per_message: None,
        }
    }

    fn validate(code: String, payload: Option<String>) -> Result<(), PluginError> {
        operations::validate(&code, payload.as_deref()).map_err(|e| match e {
            PayloadError::UnknownCode(c) => PluginError::unknown_operation(&c),
            PayloadError::Malformed(m) => PluginError::malformed(m),
            PayloadError::Invalid(m) => PluginError::invalid(m),
        })
    }

    fn enroll(message: Channel, body: Vec<u8>) -> Result<Enrollment, PluginError> {
        if let Channel::Http(req) = &message
            && req.method != HttpMethod::Post
        {
            return Err(PluginError::invalid("enrollment is a POST"));
        }
        let req: wire::EnrollRequest =
            serde_json::from_slice(&body).map_err(|e| PluginError::malformed(format!("enrollment request: {e}")))?;
        enrollment(req)
    }

    fn encode(_device: Device, operations: Vec<Operation>, channel: ChannelKind) -> Result<Encoded, PluginError> {
        // A policy bundle may name its entries' payloads `payload` (Drover's policies do);
        // the agent reads `payLoad`.
        let bundles: Vec<Option<String>> = operations
            .iter()
            .map(|op| match (op.code.as_str(), &op.payload) {
                ("POLICY_BUNDLE", Some(p)) => operations::agent_bundle(p),
                _ => None,
            })
            .collect();
        let out: Vec<wire::OutOperation<'_>> = operations
            .iter()
            .map(|op| wire::OutOperation {
                id: op.id,
                code: &op.code,
                kind: match op.kind {
                    OperationKind::Command => "COMMAND",
                    OperationKind::Profile => "PROFILE",
                    OperationKind::Policy => "POLICY",
                },
                status: "IN_PROGRESS",
                payload: op.payload.as_deref(),
            })
            .zip(&bundles)
            .map(|(mut out, bundle)| {
                if let Some(b) = bundle {
                    out.payload = Some(b);
                }
                out
            })
            .collect();
        let body = wire::encode(&out);
        let output = match channel {
            ChannelKind::Http => {
                Outbound::Http(HttpResponse { status: 200, content_type: Some(JSON.into()), headers: vec![], body })
            }
            ChannelKind::Mqtt => Outbound::Mqtt(vec![MqttPublish { topic_suffix: "operations".into(), payload: body }]),
            ChannelKind::Coap => return Err(PluginError::unsupported("Android devices do not speak CoAP")),
        };
        Ok(Encoded { output, delivered: operations.iter().map(|o| o.id).collect(), session: None })
    }

    fn decode(device: Device, message: Channel, body: Vec<u8>) -> Result<DeviceMessage, PluginError> {
        let (what, is_http) = match &message {
            Channel::Http(req) => (route(&device.id, req.method, &req.path)?, true),
            Channel::Mqtt(m) => (
                match m.topic_suffix.as_str() {
                    "reply" => Route::Results,
                    "telemetry" => Route::Telemetry,
                    "info" => Route::Info,
                    other => {
                        return Err(PluginError::invalid(format!(
                            "unknown topic `{other}`: use reply, telemetry or info"
                        )));
                    }
                },
                false,
            ),
            Channel::Coap(_) => return Err(PluginError::unsupported("Android devices do not speak CoAP")),
        };
        let mut msg = DeviceMessage {
            results: vec![],
            check_in: None,
            telemetry: vec![],
            info: vec![],
            reply: Reply::None,
            session: None,
        };
        match what {
            Route::Results => {
                let mut results = Vec::new();
                for r in wire::decode_results(&body).map_err(PluginError::malformed)? {
                    let status = match r.status {
                        wire::AgentStatus::InProgress => ResultStatus::InProgress,
                        wire::AgentStatus::Completed => ResultStatus::Completed,
                        wire::AgentStatus::Error => ResultStatus::Error,
                        wire::AgentStatus::NotNow => ResultStatus::NotNow,
                        // PENDING says nothing new: the host already knows it is queued.
                        wire::AgentStatus::Pending => continue,
                    };
                    // A compliance answer becomes the standard per-feature record; one
                    // that does not read refuses the whole report, so nothing is recorded
                    // from it.
                    let response = if r.code == "POLICY_MONITOR" && r.status == wire::AgentStatus::Completed {
                        Some(r.compliance_json().map_err(PluginError::malformed)?)
                    } else {
                        r.response_json()
                    };
                    results.push(OperationResult { operation_id: r.id, status, response });
                }
                msg.results = results;
                if is_http {
                    msg.reply = Reply::PendingOperations;
                }
            }
            Route::Info => {
                let mut info: Vec<(String, String)> = wire::decode_info(&body)
                    .map_err(PluginError::malformed)?
                    .into_iter()
                    .map(|p| (p.name.clone(), p.value_text()))
                    .collect();
                // The agent reports a new FCM registration token as a property; it is a
                // push token, not metadata to show.
                if let Some(token) = take_fcm_token(&mut info) {
                    msg.check_in = Some(CheckIn::TokenUpdate(token));
                }
                msg.info = info;
            }
            Route::Telemetry => {
                let (ts, values) = wire::decode_telemetry(&body).map_err(PluginError::malformed)?;
                msg.telemetry = values
                    .into_iter()
                    .map(|(name, v)| {
                        let value = match v {
                            Value::Number(n) => TelemetryValue::Number(n.as_f64().unwrap_or(f64::NAN)),
                            Value::Bool(b) => TelemetryValue::Boolean(b),
                            Value::String(s) => TelemetryValue::Text(s),
                            other => TelemetryValue::Text(other.to_string()),
                        };
                        TelemetryPoint { name, timestamp_ms: ts, value }
                    })
                    .collect();
            }
        }
        Ok(msg)
    }
}

enum Route {
    Results,
    Info,
    Telemetry,
}

/// Map an agent HTTP path to what it carries. The agent uses the WSO2 paths
/// `devices/{id}/pending-operations` and `devices/{id}/info`; the id in the path must be
/// the authenticated device's, so a device cannot report for another.
fn route(device_id: &str, method: HttpMethod, path: &str) -> Result<Route, PluginError> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (id, tail) = match parts.as_slice() {
        ["devices", id, tail] => (Some(*id), *tail),
        [tail] => (None, *tail),
        _ => return Err(PluginError::invalid(format!("unknown agent path `{path}`"))),
    };
    if let Some(id) = id
        && id != device_id
    {
        return Err(PluginError::invalid(format!("path names device `{id}` but the credential is for `{device_id}`")));
    }
    match (method, tail) {
        (HttpMethod::Put | HttpMethod::Post, "pending-operations") => Ok(Route::Results),
        (HttpMethod::Put | HttpMethod::Post, "info") => Ok(Route::Info),
        (HttpMethod::Post, "telemetry") => Ok(Route::Telemetry),
        (m, t) => Err(PluginError::invalid(format!("{m:?} {t} is not an agent endpoint"))),
    }
}

fn kind_to_wit(k: Kind) -> OperationKind {
    match k {
        Kind::Command => OperationKind::Command,
        Kind::Profile => OperationKind::Profile,
        Kind::Policy => OperationKind::Policy,
    }
}

/// Property names of the WSO2 agent that the host keeps as metadata.
const MODEL: &str = "DEVICE_MODEL";
const OS_VERSION: &str = "OS_VERSION";

fn enrollment(req: wire::EnrollRequest) -> Result<Enrollment, PluginError> {
    let id = req.device_identifier.trim();
    if id.is_empty() || id.len() > 128 {
        return Err(PluginError::invalid("`deviceIdentifier` must be 1 to 128 characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
        return Err(PluginError::invalid("`deviceIdentifier` may hold only letters, digits and - _ . :"));
    }
    let ownership = match req.enrolment_info.ownership.to_ascii_uppercase().as_str() {
        "BYOD" => Ownership::Byod,
        "COPE" => Ownership::Cope,
        other => {
            return Err(PluginError::invalid(format!("`enrolmentInfo.ownership` is `{other}`: use BYOD or COPE")));
        }
    };
    let mut metadata: Vec<(String, String)> =
        req.properties.iter().filter(|p| !p.name.is_empty()).map(|p| (p.name.clone(), p.value_text())).collect();
    let get = |k: &str| metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get(MODEL) {
        Some(m) if !m.trim().is_empty() => {}
        _ => return Err(PluginError::invalid(format!("property `{MODEL}` is required"))),
    }
    match get(OS_VERSION) {
        Some(v) if is_version(v) => {}
        Some(v) => {
            return Err(PluginError::invalid(format!(
                "property `{OS_VERSION}` is `{v}`: expected a version like 13 or 8.1.0"
            )));
        }
        None => return Err(PluginError::invalid(format!("property `{OS_VERSION}` is required"))),
    }
    if let Some(d) = req.description.filter(|d| !d.is_empty()) {
        metadata.push(("description".into(), d));
    }
    let push = take_fcm_token(&mut metadata);
    Ok(Enrollment {
        device_id: id.to_string(),
        name: req.name.filter(|n| !n.trim().is_empty()),
        ownership,
        owner: req.enrolment_info.owner.filter(|o| !o.is_empty()),
        metadata,
        push,
    })
}

/// Property the agent reports its FCM registration token in (at enrollment and whenever
/// Firebase rotates it).
pub const FCM_TOKEN: &str = "FCM_TOKEN";

/// Remove the FCM token property from `props`, as a push token for the `fcm` transport.
fn take_fcm_token(props: &mut Vec<(String, String)>) -> Option<PushToken> {
    let i = props.iter().position(|(k, _)| k == FCM_TOKEN)?;
    let (_, token) = props.remove(i);
    let token = token.trim().to_string();
    (!token.is_empty()).then(|| PushToken { transport: "fcm".into(), token, extra: vec![] })
}

fn is_version(v: &str) -> bool {
    !v.is_empty() && v.split('.').all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_device_type!(Android);

#[cfg(test)]
mod tests;
