//! Device type `windows`: Windows PCs and devices over OMA-DM 1.2 (SyncML), as the
//! built-in MDM client speaks it. A management session spans several HTTP POSTs: the
//! device opens it (Alert 1201, or 1200 after a WNS push) with its DevInfo; Drover
//! answers with Status for everything the device sent plus commands (Get, Replace, Add,
//! Delete, Exec) for queued operations; the device answers those with Status and Results,
//! and so on until Drover sends nothing new. SessionID, MsgIDs and which CmdID carried
//! which operation live in the per-device session the host keeps. README.md has the
//! protocol as Drover speaks it.

pub mod mde2;
pub mod operations;
pub mod syncml;

use drover_sdk::device_type::drover::plugin::types::{
    Channel, ChannelKind, CheckIn, Delivery, Device, DeviceMessage, DeviceTypeInfo, Encoded, Enrollment, HttpResponse,
    Operation, OperationCode, OperationKind, OperationResult, Outbound, Ownership, PluginError, PushToken, Reply,
    ResultStatus, TelemetryPoint, TelemetryValue,
};
use drover_sdk::device_type_enrolling::Guest;
use drover_sdk::device_type_enrolling::exports::drover::plugin::enrollment_exchange::{
    EnrollContext, Guest as Exchange, Issued, Refusal, Step as EnrollStep,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use syncml::{Command, Item, Message};

pub struct Windows;

/// Per-device session state, kept by the host between messages.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// The device's SessionID.
    pub id: String,
    /// The server URL the device addressed (its Target LocURI): Drover's Source LocURI.
    pub server: String,
    /// MsgID of the device's last message, and of Drover's last answer.
    pub client_msg: u32,
    pub server_msg: u32,
    /// Commands sent and not yet answered by a Status.
    pub sent: Vec<Sent>,
    /// Statuses Drover owes for the device's last message.
    pub owed: Vec<Owed>,
    /// The device's last message had no `<Final/>`: its package continues in the next
    /// message, and Drover asks for it (Alert 1222) instead of sending commands.
    #[serde(default)]
    pub more: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Sent {
    pub msg: u32,
    pub cmd: u32,
    pub operation: u64,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Owed {
    pub cmd_ref: u32,
    pub cmd: String,
    pub code: u16,
}

impl Session {
    fn load(bytes: &[u8]) -> Result<Session, PluginError> {
        if bytes.is_empty() {
            return Ok(Session::default());
        }
        serde_json::from_slice(bytes).map_err(|e| {
            PluginError::new(
                drover_sdk::device_type::drover::plugin::types::ErrorCode::Internal,
                format!("stored session is unreadable: {e}"),
            )
        })
    }

    fn save(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a session serializes")
    }
}

fn kind(k: operations::Kind) -> OperationKind {
    match k {
        operations::Kind::Command => OperationKind::Command,
        operations::Kind::Profile => OperationKind::Profile,
        operations::Kind::Policy => OperationKind::Policy,
    }
}

/// The device id of a session-opening message: `./DevInfo/DevId`, which must agree with
/// the header's Source LocURI when both are there.
fn device_id(m: &Message) -> Result<String, String> {
    let dev_id = dev_info(m).into_iter().find(|(k, _)| k == "DevId").map(|(_, v)| v);
    let id = dev_id.clone().unwrap_or_else(|| m.source.clone());
    if let Some(d) = &dev_id
        && *d != m.source
    {
        return Err(format!("./DevInfo/DevId `{d}` differs from the header's Source LocURI `{}`", m.source));
    }
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(format!("device id `{id}` is not usable (1 to 128 characters, no spaces or slashes)"));
    }
    Ok(id)
}

/// `./DevInfo/*` values the device reported in a Replace (or Add).
fn dev_info(m: &Message) -> Vec<(String, String)> {
    m.commands
        .iter()
        .filter(|c| c.name == "Replace" || c.name == "Add")
        .flat_map(|c| &c.items)
        .filter_map(|i| {
            let key = i.source.as_deref()?.strip_prefix("./DevInfo/")?;
            Some((key.to_string(), i.data.clone().unwrap_or_default()))
        })
        .collect()
}

impl Guest for Windows {
    fn describe() -> DeviceTypeInfo {
        DeviceTypeInfo {
            name: "windows".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Windows over OMA-DM 1.2 (SyncML): multi-message sessions, woken through WNS".into(),
            operations: operations::CODES
                .iter()
                .map(|c| OperationCode {
                    code: c.code.into(),
                    kind: kind(c.kind),
                    description: c.description.into(),
                    payload_schema: c.schema.map(str::to_string),
                })
                .collect(),
            delivery: vec![Delivery::WakeUp, Delivery::Poll],
            content_types: vec![syncml::CONTENT_TYPE.into()],
            max_operations_per_message: Some(16),
        }
    }

    fn validate(code: String, payload: Option<String>) -> Result<(), PluginError> {
        if operations::lookup(&code).is_none() {
            return Err(PluginError::unknown_operation(&code));
        }
        operations::command(&code, payload.as_deref()).map(|_| ()).map_err(PluginError::invalid)
    }

    /// Enrollment is the session-opening message (Alert 1201 with DevInfo), POSTed to the
    /// enroll URL; the device then opens its first session with its credential.
    fn enroll(_message: Channel, body: Vec<u8>) -> Result<Enrollment, PluginError> {
        let m = syncml::parse(&body).map_err(|e| PluginError::malformed(format!("enrollment: {e}")))?;
        let id = device_id(&m).map_err(PluginError::invalid)?;
        let metadata: Vec<(String, String)> = dev_info(&m).into_iter().filter(|(k, _)| k != "DevId").collect();
        if metadata.is_empty() {
            return Err(PluginError::invalid("enrollment: no ./DevInfo values (Man, Mod, DmV, Lang) in a Replace"));
        }
        Ok(Enrollment { device_id: id, name: None, ownership: Ownership::Cope, owner: None, metadata, push: None })
    }

    fn encode(device: Device, operations: Vec<Operation>, channel: ChannelKind) -> Result<Encoded, PluginError> {
        if channel != ChannelKind::Http {
            return Err(PluginError::unsupported("Windows devices are reached over HTTP only"));
        }
        encode(&device, &operations)
    }

    fn decode(device: Device, message: Channel, body: Vec<u8>) -> Result<DeviceMessage, PluginError> {
        if !matches!(message, Channel::Http(_)) {
            return Err(PluginError::unsupported("Windows devices speak HTTP only"));
        }
        decode(&device, &body)
    }
}

impl Exchange for Windows {
    /// MS-MDE2 (`mde2.rs`): discovery, policy and enrollment under `enroll/`.
    fn enroll_step(context: EnrollContext, message: Channel, body: Vec<u8>) -> Result<EnrollStep, PluginError> {
        let Channel::Http(request) = message else {
            return Err(PluginError::unsupported("Windows enrolls over HTTP only"));
        };
        mde2::step(&context, &request.path, request.method, &body)
    }

    fn enrolled(
        context: EnrollContext,
        _message: Channel,
        body: Vec<u8>,
        outcome: Result<Issued, Refusal>,
    ) -> Result<HttpResponse, PluginError> {
        Ok(mde2::enrolled(&context, &body, outcome))
    }
}

/// Decode one client message of a session.
pub fn decode(device: &Device, body: &[u8]) -> Result<DeviceMessage, PluginError> {
    let m = syncml::parse(body).map_err(PluginError::malformed)?;
    if m.source != device.id {
        return Err(PluginError::invalid(format!(
            "the message is from `{}` (Source LocURI), but this credential is `{}`'s",
            m.source, device.id
        )));
    }
    let mut session = Session::load(&device.session)?;
    let mut out = DeviceMessage {
        results: vec![],
        check_in: None,
        telemetry: vec![],
        info: vec![],
        reply: Reply::PendingOperations,
        session: None,
    };
    if session.id != m.session_id {
        // A new session. Commands of the old one that were never answered go back to the
        // queue (NOTNOW is "offered again"): the device dropped the session before saying.
        for s in session.sent.drain(..) {
            out.results.push(OperationResult {
                operation_id: s.operation,
                status: ResultStatus::NotNow,
                response: Some(json!({"note": "the session ended before the device answered"}).to_string()),
            });
        }
        session = Session { id: m.session_id.clone(), server: m.target.clone(), ..Default::default() };
    }
    session.client_msg = m.msg_id;
    session.more = !m.is_final;
    session.owed = vec![Owed { cmd_ref: 0, cmd: "SyncHdr".into(), code: 200 }];

    let mut statuses: BTreeMap<(u32, u32), u16> = BTreeMap::new();
    let mut results: BTreeMap<(u32, u32), Vec<Item>> = BTreeMap::new();
    for c in &m.commands {
        match c.name.as_str() {
            "Status" => {
                let (Some(msg), Some(cmd)) = (c.msg_ref, c.cmd_ref) else {
                    return Err(PluginError::invalid(format!("<Status> {} without MsgRef and CmdRef", c.cmd_id)));
                };
                let code =
                    c.data.as_deref().and_then(|d| d.parse::<u16>().ok()).ok_or_else(|| {
                        PluginError::invalid(format!("<Status> {} has no numeric <Data> code", c.cmd_id))
                    })?;
                statuses.insert((msg, cmd), code);
                continue; // a Status is never answered with a Status
            }
            "Results" => {
                let key = (c.msg_ref.unwrap_or(session.server_msg), c.cmd_ref.unwrap_or_default());
                results.entry(key).or_default().extend(c.items.iter().cloned());
                take_results(&c.items, &mut out);
            }
            "Alert" => alert(c, &mut out),
            "Replace" | "Add" => {
                for i in &c.items {
                    if let Some(key) = i.source.as_deref().and_then(|s| s.strip_prefix("./DevInfo/")) {
                        out.info.push((key.to_string(), i.data.clone().unwrap_or_default()));
                    }
                }
                take_results(&c.items, &mut out);
            }
            _ => {
                // The client has no business sending Get/Exec/Delete to the server.
                session.owed.push(Owed { cmd_ref: c.cmd_id, cmd: c.name.clone(), code: 406 });
                continue;
            }
        }
        session.owed.push(Owed { cmd_ref: c.cmd_id, cmd: c.name.clone(), code: 200 });
    }

    // Answers to what Drover sent: a Status per command, Results for Gets.
    let mut still = Vec::new();
    for s in session.sent.drain(..) {
        let key = (s.msg, s.cmd);
        let Some(&code) = statuses.get(&key) else {
            still.push(s);
            continue;
        };
        let items: Vec<serde_json::Value> = results
            .get(&key)
            .map(|items| {
                items
                    .iter()
                    .map(
                        |i| json!({"uri": i.source.as_ref().or(i.target.as_ref()), "format": i.format, "data": i.data}),
                    )
                    .collect()
            })
            .unwrap_or_default();
        let status = match code {
            202 => ResultStatus::InProgress,
            200..=299 => ResultStatus::Completed,
            _ => ResultStatus::Error,
        };
        let mut response = json!({"status": code, "meaning": operations::status_text(code), "cmd": s.name});
        if !items.is_empty() {
            response["results"] = serde_json::Value::Array(items);
        }
        out.results.push(OperationResult { operation_id: s.operation, status, response: Some(response.to_string()) });
    }
    session.sent = still;
    out.session = Some(session.save());
    Ok(out)
}

/// Values in Results (or a Replace) that mean something beyond the operation: device
/// details update the record, battery charge is telemetry, the WNS channel URI is the
/// device's push token.
fn take_results(items: &[Item], out: &mut DeviceMessage) {
    for i in items {
        let (Some(uri), Some(data)) = (i.source.as_deref().or(i.target.as_deref()), i.data.as_deref()) else {
            continue;
        };
        if let Some(key) = uri.strip_prefix("./DevDetail/") {
            out.info.push((key.rsplit('/').next().unwrap_or(key).to_string(), data.to_string()));
        } else if uri.ends_with("/Battery/EstimatedChargeRemaining")
            && let Ok(v) = data.trim().parse::<f64>()
            && (0.0..=100.0).contains(&v)
        {
            out.telemetry.push(TelemetryPoint {
                name: "battery".into(),
                timestamp_ms: None,
                value: TelemetryValue::Number(v),
            });
        } else if uri.ends_with("/Push/ChannelURI") && data.starts_with("https://") {
            out.check_in = Some(CheckIn::TokenUpdate(PushToken {
                transport: "wns".into(),
                token: data.trim().to_string(),
                extra: vec![],
            }));
        }
    }
}

/// Alerts: 1200/1201 open a session, 1222 asks for the next message, 1224 is a client
/// event, 1226 a generic alert (an unenrollment request is a check-out).
fn alert(c: &Command, out: &mut DeviceMessage) {
    match c.data.as_deref() {
        Some("1226") => {
            for i in &c.items {
                let t = i.meta_type.as_deref().unwrap_or_default();
                if t.contains("unenrollment") {
                    out.check_in = Some(CheckIn::CheckOut);
                } else if !t.is_empty() {
                    out.info.push((format!("alert.{t}"), i.data.clone().unwrap_or_default()));
                }
            }
        }
        Some("1224") => {
            for i in &c.items {
                if let Some(t) = i.meta_type.as_deref() {
                    let key = t.rsplit('/').next().unwrap_or(t);
                    out.info.push((key.to_string(), i.data.clone().unwrap_or_default()));
                }
            }
        }
        _ => {}
    }
}

/// Drover's answer in the session: Status for everything the device sent, then one
/// command per queued operation, then Final.
pub fn encode(device: &Device, operations: &[Operation]) -> Result<Encoded, PluginError> {
    let mut session = Session::load(&device.session)?;
    if session.id.is_empty() {
        // No session to answer in (the device has not opened one): nothing can be sent.
        // Not an error: an error here would end the oldest queued operation.
        let output = Outbound::Http(HttpResponse { status: 200, content_type: None, headers: vec![], body: vec![] });
        return Ok(Encoded { output, delivered: vec![], session: None });
    }
    let msg = session.server_msg + 1;
    let mut commands = Vec::new();
    let mut cmd_id = 0;
    for o in session.owed.drain(..) {
        cmd_id += 1;
        commands.push(Command {
            name: "Status".into(),
            cmd_id,
            msg_ref: Some(session.client_msg),
            cmd_ref: Some(o.cmd_ref),
            cmd: Some(o.cmd),
            data: Some(o.code.to_string()),
            items: vec![],
        });
    }
    let mut delivered = Vec::new();
    if session.more {
        // The device's package is not complete: ask for its next message (Alert 1222,
        // "next message"); commands wait until it has said everything.
        cmd_id += 1;
        commands.push(Command {
            name: "Alert".into(),
            cmd_id,
            data: Some("1222".into()),
            items: vec![Item {
                target: Some(device.id.clone()),
                source: Some(session.server.clone()),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    for op in operations.iter().filter(|_| !session.more) {
        let mut c = operations::command(&op.code, op.payload.as_deref())
            .map_err(|e| PluginError::invalid(format!("operation {}: {e}", op.id)))?;
        cmd_id += 1;
        c.cmd_id = cmd_id;
        session.sent.push(Sent { msg, cmd: cmd_id, operation: op.id, name: c.name.clone() });
        commands.push(c);
        delivered.push(op.id);
    }
    let message = Message {
        session_id: session.id.clone(),
        msg_id: msg,
        target: device.id.clone(),
        source: session.server.clone(),
        commands,
        is_final: true,
    };
    session.server_msg = msg;
    Ok(Encoded {
        output: Outbound::Http(HttpResponse {
            status: 200,
            content_type: Some(syncml::CONTENT_TYPE.into()),
            headers: vec![],
            body: syncml::write(&message),
        }),
        delivered,
        session: Some(session.save()),
    })
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_device_type_enrolling!(Windows);

#[cfg(test)]
mod tests;
