//! Device type `ios`: iPhones, iPads and Macs over the Apple MDM protocol. The device
//! PUTs check-in messages (Authenticate, TokenUpdate, CheckOut) and command reports
//! (Idle, Acknowledged, Error, CommandFormatError, NotNow) as XML plists; Drover answers
//! a report with one command, or an empty body when nothing is left. Wake-up goes through
//! the `apns` transport with the token and PushMagic of the TokenUpdate. README.md has
//! the protocol as Drover speaks it.

pub mod profile;
pub mod wire;

use drover_sdk::device_type::drover::plugin::types::{
    Channel, ChannelKind, CheckIn, Delivery, Device, DeviceMessage, DeviceTypeInfo, Encoded, Enrollment, HttpMethod,
    HttpResponse, Operation, OperationCode, OperationKind, OperationResult, Outbound, Ownership, PluginError,
    PushToken, Reply, ResultStatus, TelemetryPoint, TelemetryValue,
};
use drover_sdk::device_type_enrolling::Guest;
use drover_sdk::device_type_enrolling::exports::drover::plugin::enrollment_exchange::{
    EnrollContext, Guest as Exchange, Issued, Refusal, Step as EnrollStep,
};
use wire::{CheckInKind, Message, Status};

pub struct Ios;

fn empty(status: u16) -> Outbound {
    Outbound::Http(HttpResponse { status, content_type: None, headers: vec![], body: vec![] })
}

fn nothing() -> DeviceMessage {
    DeviceMessage {
        results: vec![],
        check_in: None,
        telemetry: vec![],
        info: vec![],
        reply: Reply::None,
        session: None,
    }
}

impl Guest for Ios {
    fn describe() -> DeviceTypeInfo {
        DeviceTypeInfo {
            name: "ios".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "iOS, iPadOS and macOS over the Apple MDM protocol (plists), woken through APNs".into(),
            operations: wire::CODES
                .iter()
                .map(|c| OperationCode {
                    code: c.code.into(),
                    kind: match c.kind {
                        wire::Kind::Command => OperationKind::Command,
                        wire::Kind::Profile => OperationKind::Profile,
                        wire::Kind::Policy => OperationKind::Policy,
                    },
                    description: c.description.into(),
                    payload_schema: c.schema(),
                })
                .chain(wire::FEATURES.iter().map(|(code, _, description)| OperationCode {
                    code: (*code).into(),
                    kind: OperationKind::Profile,
                    description: (*description).into(),
                    payload_schema: Some(r#"{"type":"object","minProperties":1}"#.into()),
                }))
                .collect(),
            delivery: vec![Delivery::WakeUp, Delivery::Poll],
            content_types: vec![wire::CHECKIN_CONTENT_TYPE.into(), wire::REPORT_CONTENT_TYPE.into()],
            // The protocol: one command per request; an empty answer ends the exchange.
            max_operations_per_message: Some(1),
        }
    }

    fn validate(code: String, payload: Option<String>) -> Result<(), PluginError> {
        if wire::lookup(&code).is_none() && !wire::FEATURES.iter().any(|(c, _, _)| *c == code) {
            return Err(PluginError::unknown_operation(&code));
        }
        wire::validate(&code, payload.as_deref()).map_err(PluginError::invalid)
    }

    /// Enrollment is the Authenticate check-in, PUT to the enroll URL with an enrollment
    /// token; the answer carries the device's credential.
    fn enroll(_message: Channel, body: Vec<u8>) -> Result<Enrollment, PluginError> {
        let message = wire::parse(&body).map_err(|e| PluginError::malformed(format!("Authenticate: {e}")))?;
        let Message::CheckIn { kind: CheckInKind::Authenticate, id, fields } = message else {
            return Err(PluginError::invalid("enrollment is the Authenticate check-in message"));
        };
        if !fields.contains_key("Topic") {
            return Err(PluginError::invalid("Authenticate without `Topic` (the MDM push topic)"));
        }
        let user_enrollment = fields.contains_key("EnrollmentID");
        let name = wire::metadata(&fields, Some(&["DeviceName"])).pop().map(|(_, v)| v);
        Ok(Enrollment {
            device_id: id,
            name,
            // A User Enrollment is a personal device; the device channel of a full
            // enrollment is the organisation's.
            ownership: if user_enrollment { Ownership::Byod } else { Ownership::Cope },
            owner: None,
            metadata: wire::metadata(&fields, Some(wire::METADATA_KEYS)),
            push: None,
        })
    }

    fn encode(_device: Device, operations: Vec<Operation>, channel: ChannelKind) -> Result<Encoded, PluginError> {
        if channel != ChannelKind::Http {
            return Err(PluginError::unsupported("Apple devices are reached over HTTP only"));
        }
        let Some(op) = operations.first() else {
            // "Nothing left": an empty 200 ends the device's exchange until the next push.
            return Ok(Encoded { output: empty(200), delivered: vec![], session: None });
        };
        let command = wire::command(op.id, &op.code, op.payload.as_deref())
            .map_err(|e| PluginError::invalid(format!("operation {}: {e}", op.id)))?;
        Ok(Encoded {
            output: Outbound::Http(HttpResponse {
                status: 200,
                content_type: Some(wire::COMMAND_CONTENT_TYPE.into()),
                headers: vec![],
                body: wire::to_xml(command),
            }),
            delivered: vec![op.id],
            session: None,
        })
    }

    fn decode(device: Device, message: Channel, body: Vec<u8>) -> Result<DeviceMessage, PluginError> {
        if !matches!(message, Channel::Http(_)) {
            return Err(PluginError::unsupported("Apple devices speak HTTP only"));
        }
        decode(&device, &body)
    }
}

impl Exchange for Ios {
    /// `GET enroll/profile?token=…`: the enrollment profile (`profile.rs`). Its SCEP
    /// payload gets the certificate and its first check-in claims the device, so nothing
    /// here admits a device.
    fn enroll_step(context: EnrollContext, message: Channel, _body: Vec<u8>) -> Result<EnrollStep, PluginError> {
        let Channel::Http(request) = message else {
            return Err(PluginError::unsupported("Apple devices enroll over HTTP only"));
        };
        if request.path != "enroll/profile" || !matches!(request.method, HttpMethod::Get | HttpMethod::Head) {
            return Err(PluginError::unsupported(format!(
                "`{}` is not an enrollment step of Apple devices: the profile is `GET enroll/profile?token=…`, the \
                 check-in `PUT enroll?token=…`",
                request.path
            )));
        }
        use drover_sdk::device_type::drover::plugin::config::get;
        let (topic, organization) = (get("topic"), get("organization"));
        profile::answer(&context.agent_url, &request.query, topic.as_deref(), organization.as_deref())
            .map(EnrollStep::Reply)
    }

    fn enrolled(
        _context: EnrollContext,
        _message: Channel,
        _body: Vec<u8>,
        _outcome: Result<Issued, Refusal>,
    ) -> Result<HttpResponse, PluginError> {
        Err(PluginError::unsupported("no enrollment step of Apple devices admits a device"))
    }
}

/// Decode a check-in or a command report of `device`.
pub fn decode(device: &Device, body: &[u8]) -> Result<DeviceMessage, PluginError> {
    let message = wire::parse(body).map_err(PluginError::malformed)?;
    if message.device_id() != device.id {
        return Err(PluginError::invalid(format!(
            "the message is from `{}`, but this credential is `{}`'s",
            message.device_id(),
            device.id
        )));
    }
    let mut out = nothing();
    match message {
        Message::CheckIn { kind, fields, .. } => {
            out.reply = Reply::Immediate(empty(200));
            match kind {
                CheckInKind::Authenticate => {
                    out.check_in = Some(CheckIn::Authenticate);
                    out.info = wire::metadata(&fields, Some(wire::METADATA_KEYS));
                }
                CheckInKind::TokenUpdate => {
                    let (token, extra) = wire::push_token(&fields).map_err(PluginError::invalid)?;
                    out.check_in = Some(CheckIn::TokenUpdate(PushToken { transport: "apns".into(), token, extra }));
                }
                CheckInKind::CheckOut => out.check_in = Some(CheckIn::CheckOut),
                // Drover manages the device channel; 410 tells the user channel not to ask again.
                CheckInKind::UserAuthenticate => out.reply = Reply::Immediate(empty(410)),
                CheckInKind::Other(t) => {
                    return Err(PluginError::unsupported(format!(
                        "check-in `MessageType` `{t}` is not supported (Authenticate, TokenUpdate, CheckOut)"
                    )));
                }
            }
        }
        Message::Report { status, command_uuid, fields, .. } => {
            out.reply = Reply::PendingOperations;
            let Some(uuid) = command_uuid else { return Ok(out) };
            let Some(operation_id) = wire::operation_id(&uuid) else {
                // Not one of ours (a command of the MDM before Drover): nothing to record.
                return Ok(out);
            };
            let status = match status {
                Status::Idle => return Ok(out),
                Status::Acknowledged => ResultStatus::Completed,
                Status::Error | Status::CommandFormatError => ResultStatus::Error,
                Status::NotNow => ResultStatus::NotNow,
            };
            let response = wire::response_json(&fields);
            if status == ResultStatus::Completed {
                device_information(&fields, &mut out);
            }
            let response = match response {
                serde_json::Value::Object(o) if o.is_empty() => None,
                r => Some(r.to_string()),
            };
            out.results.push(OperationResult { operation_id, status, response });
        }
    }
    Ok(out)
}

/// A DeviceInformation answer updates the device record and reports battery and storage.
fn device_information(fields: &plist::Dictionary, out: &mut DeviceMessage) {
    let Some(plist::Value::Dictionary(answers)) = fields.get("QueryResponses") else { return };
    out.info = wire::metadata(answers, None);
    let number = |key: &str| match answers.get(key) {
        Some(plist::Value::Real(r)) => Some(*r),
        Some(plist::Value::Integer(i)) => i.as_signed().map(|i| i as f64),
        _ => None,
    };
    // BatteryLevel is 0.0–1.0; -1 means unknown.
    if let Some(b) = number("BatteryLevel").filter(|b| (0.0..=1.0).contains(b)) {
        let value = TelemetryValue::Number((b * 100.0).round());
        out.telemetry.push(TelemetryPoint { name: "battery".into(), timestamp_ms: None, value });
    }
    if let Some(gb) = number("AvailableDeviceCapacity") {
        let value = TelemetryValue::Number(gb);
        out.telemetry.push(TelemetryPoint { name: "storage.available_gb".into(), timestamp_ms: None, value });
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_device_type_enrolling!(Ios);

#[cfg(test)]
mod tests;
