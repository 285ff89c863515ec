//! Device type `esp8266`: small Wi-Fi boards. They enroll once over HTTP, then hold an
//! MQTT connection: commands arrive on `cmd` (JSON) or `cmd/bin` (compact binary, for
//! boards that said `"encoding": "binary"` at enrollment); they answer on `reply`, report
//! firmware-update progress on `ota`, telemetry on `telemetry`, and binary frames on
//! `bin`. README.md has the protocol with byte layouts.

pub mod wire;

use drover_sdk::device_type::Guest;
use drover_sdk::device_type::drover::plugin::types::{
    Channel, ChannelKind, Delivery, Device, DeviceMessage, DeviceTypeInfo, Encoded, Enrollment, HttpMethod,
    HttpResponse, MqttPublish, Operation, OperationCode, OperationKind, OperationResult, Outbound, Ownership,
    PluginError, Reply, ResultStatus, TelemetryPoint, TelemetryValue,
};
use serde::Deserialize;
use wire::{Command, Status};

pub struct Esp8266;

/// (code, description, JSON Schema of the payload).
pub const CODES: &[(&str, &str, Option<&str>)] = &[
    ("REBOOT", "Restart the board", None),
    (
        "SET_INTERVAL",
        "Telemetry reporting interval",
        Some(
            r#"{"type":"object","required":["seconds"],"properties":{"seconds":{"type":"integer","minimum":5,"maximum":86400}}}"#,
        ),
    ),
    (
        "LED",
        "Switch the on-board LED",
        Some(r#"{"type":"object","required":["state"],"properties":{"state":{"enum":["on","off","blink"]}}}"#),
    ),
    ("FIRMWARE_UPDATE", "Download, verify (sha256) and flash a firmware image, reporting progress", Some(OTA_SCHEMA)),
    (
        "FIRMWARE_ROLLBACK",
        "Flash an older image on purpose (a rollout's rollback); the board accepts the downgrade",
        Some(OTA_SCHEMA),
    ),
];

/// The payload of an update: the standard form rollouts send (docs/plugin-contract.md).
const OTA_SCHEMA: &str = r#"{"type":"object","required":["url","sha256","size","version"],"properties":{"url":{"type":"string","format":"uri"},"sha256":{"type":"string","pattern":"^[0-9a-fA-F]{64}$"},"size":{"type":"integer","minimum":1,"maximum":1048576},"version":{"type":"string"}}}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    /// `ESP.getChipId()` in hex.
    chip_id: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    firmware: Option<String>,
    #[serde(default)]
    sdk: Option<String>,
    #[serde(default)]
    flash_size: Option<u64>,
    /// `json` (default) or `binary`.
    #[serde(default)]
    encoding: Option<String>,
}

fn binary(device: &Device) -> bool {
    device.metadata.iter().any(|(k, v)| k == "encoding" && v == "binary")
}

impl Guest for Esp8266 {
    fn describe() -> DeviceTypeInfo {
        DeviceTypeInfo {
            name: "esp8266".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "ESP8266 boards: commands, telemetry and firmware updates over MQTT (JSON or binary)".into(),
            operations: CODES
                .iter()
                .map(|(code, description, schema)| OperationCode {
                    code: (*code).into(),
                    kind: OperationKind::Command,
                    description: (*description).into(),
                    payload_schema: schema.map(str::to_string),
                })
                .collect(),
            delivery: vec![Delivery::Push],
            content_types: vec!["application/json".into(), "application/octet-stream".into()],
            max_operations_per_message: Some(16),
        }
    }

    fn validate(code: String, payload: Option<String>) -> Result<(), PluginError> {
        if !CODES.iter().any(|(c, _, _)| *c == code) {
            return Err(PluginError::unknown_operation(&code));
        }
        wire::command(&code, payload.as_deref()).map(|_| ()).map_err(PluginError::invalid)
    }

    fn enroll(message: Channel, body: Vec<u8>) -> Result<Enrollment, PluginError> {
        if let Channel::Http(req) = &message
            && req.method != HttpMethod::Post
        {
            return Err(PluginError::invalid("enrollment is a POST"));
        }
        let r: EnrollRequest =
            serde_json::from_slice(&body).map_err(|e| PluginError::malformed(format!("enrollment: {e}")))?;
        let chip = r.chip_id.to_ascii_lowercase();
        if !(6..=8).contains(&chip.len()) || !chip.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PluginError::invalid(format!("`chip_id` `{}` must be 6 to 8 hex digits", r.chip_id)));
        }
        let encoding = r.encoding.unwrap_or_else(|| "json".into());
        if encoding != "json" && encoding != "binary" {
            return Err(PluginError::invalid(format!("`encoding` `{encoding}`: json or binary")));
        }
        let mut metadata = vec![("encoding".to_string(), encoding)];
        for (k, v) in [("model", r.model), ("firmware", r.firmware), ("sdk", r.sdk)] {
            if let Some(v) = v {
                metadata.push((k.into(), v));
            }
        }
        if let Some(f) = r.flash_size {
            metadata.push(("flash_size".into(), f.to_string()));
        }
        Ok(Enrollment {
            device_id: format!("esp-{chip}"),
            name: None,
            ownership: Ownership::Cope,
            owner: None,
            metadata,
            push: None,
        })
    }

    fn encode(device: Device, operations: Vec<Operation>, channel: ChannelKind) -> Result<Encoded, PluginError> {
        let mut ops: Vec<(u64, Command)> = Vec::new();
        for o in &operations {
            let c = wire::command(&o.code, o.payload.as_deref())
                .map_err(|m| PluginError::invalid(format!("operation {}: {m}", o.id)))?;
            ops.push((o.id, c));
        }
        let (suffix, payload) =
            if binary(&device) { ("cmd/bin", wire::encode_binary(&ops)) } else { ("cmd", wire::encode_json(&ops)) };
        let output = match channel {
            ChannelKind::Mqtt if ops.is_empty() => Outbound::Mqtt(vec![]),
            ChannelKind::Mqtt => Outbound::Mqtt(vec![MqttPublish { topic_suffix: suffix.into(), payload }]),
            // Boards are pushed to; an HTTP answer carries the same frame for a board
            // that fetches it (bootstrapping, debugging).
            _ => Outbound::Http(HttpResponse {
                status: 200,
                content_type: Some(
                    if binary(&device) { "application/octet-stream" } else { "application/json" }.into(),
                ),
                headers: vec![],
                body: payload,
            }),
        };
        Ok(Encoded { output, delivered: ops.iter().map(|(id, _)| *id).collect(), session: None })
    }

    fn decode(_device: Device, message: Channel, body: Vec<u8>) -> Result<DeviceMessage, PluginError> {
        let topic = match &message {
            Channel::Mqtt(m) => m.topic_suffix.clone(),
            Channel::Http(r) => r.path.trim_matches('/').rsplit('/').next().unwrap_or_default().to_string(),
            Channel::Coap(_) => return Err(PluginError::unsupported("esp8266 boards do not speak CoAP")),
        };
        let decoded = match topic.as_str() {
            "reply" => wire::decode_reply(&body),
            "ota" => wire::decode_ota(&body),
            "telemetry" => wire::decode_telemetry(&body),
            "bin" => wire::decode_binary(&body),
            other => {
                return Err(PluginError::invalid(format!("unknown topic `{other}`: reply, ota, telemetry or bin")));
            }
        }
        .map_err(PluginError::malformed)?;
        Ok(DeviceMessage {
            results: decoded
                .reports
                .into_iter()
                .map(|r| OperationResult {
                    operation_id: r.id,
                    status: match r.status {
                        Status::Done => ResultStatus::Completed,
                        Status::Failed => ResultStatus::Error,
                        Status::Working => ResultStatus::InProgress,
                        Status::Busy => ResultStatus::NotNow,
                    },
                    response: r.response,
                })
                .collect(),
            check_in: None,
            telemetry: decoded
                .numbers
                .into_iter()
                .map(|(name, v, ts)| TelemetryPoint { name, timestamp_ms: ts, value: TelemetryValue::Number(v) })
                .collect(),
            info: decoded.info,
            reply: Reply::None,
            session: None,
        })
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_device_type!(Esp8266);
