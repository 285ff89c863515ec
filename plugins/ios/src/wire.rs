//! Apple MDM messages as property lists: what a device sends to the check-in and server
//! URLs, the command plists Drover answers with, and the conversion of result plists to
//! JSON. Pure functions over bytes, so the component, the device simulator and the
//! native-vs-Wasm benchmark share them.
//!
//! Reference: Apple's "Device Management" documentation (check-in message types,
//! `Status` of command reports, command payloads and their `RequestType`s).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use plist::{Dictionary, Value};
use serde_json::{Map, Value as Json};

/// Content type of check-in messages (PUT to the CheckInURL).
pub const CHECKIN_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm-checkin";
/// Content type of command reports (PUT to the ServerURL).
pub const REPORT_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm";
/// What Drover answers commands with.
pub const COMMAND_CONTENT_TYPE: &str = "application/xml";

/// A check-in message's `MessageType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckInKind {
    Authenticate,
    TokenUpdate,
    CheckOut,
    /// The user channel asking to authenticate; Drover manages the device channel only.
    UserAuthenticate,
    Other(String),
}

/// `Status` of a command report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Nothing to report; the device asks for its next command.
    Idle,
    Acknowledged,
    Error,
    CommandFormatError,
    /// The device cannot do the command now (locked, busy); it stays queued.
    NotNow,
}

impl Status {
    fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "Idle" => Status::Idle,
            "Acknowledged" => Status::Acknowledged,
            "Error" => Status::Error,
            "CommandFormatError" => Status::CommandFormatError,
            "NotNow" => Status::NotNow,
            _ => return None,
        })
    }
}

/// A parsed device message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    CheckIn { kind: CheckInKind, id: String, fields: Dictionary },
    Report { id: String, status: Status, command_uuid: Option<String>, fields: Dictionary },
}

impl Message {
    /// The device's identity: `UDID`, or `EnrollmentID` for a User Enrollment.
    pub fn device_id(&self) -> &str {
        match self {
            Message::CheckIn { id, .. } | Message::Report { id, .. } => id,
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::Dictionary(_) => "a dictionary",
        Value::Boolean(_) => "a boolean",
        Value::Data(_) => "data",
        Value::Date(_) => "a date",
        Value::Real(_) => "a real",
        Value::Integer(_) => "an integer",
        Value::String(_) => "a string",
        Value::Uid(_) => "a UID",
        _ => "an unknown value",
    }
}

/// Parse a property list (XML or binary) whose top level must be a dictionary.
pub fn parse_dict(body: &[u8]) -> Result<Dictionary, String> {
    let value = Value::from_reader(std::io::Cursor::new(body)).map_err(|e| format!("not a property list: {e}"))?;
    match value {
        Value::Dictionary(d) => Ok(d),
        other => Err(format!("the property list is {}, not a dictionary", type_name(&other))),
    }
}

fn string<'a>(d: &'a Dictionary, key: &str) -> Result<Option<&'a str>, String> {
    match d.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("`{key}` is {}, not a string", type_name(other))),
    }
}

fn identity(d: &Dictionary) -> Result<String, String> {
    let id = match (string(d, "UDID")?, string(d, "EnrollmentID")?) {
        (Some(u), _) => u,
        (None, Some(e)) => e,
        (None, None) => return Err("no `UDID` (or `EnrollmentID` for a User Enrollment)".into()),
    };
    // UDIDs are hex with dashes (00008030-001A2D3E0C38802E, or 40 hex digits on older
    // devices); enrollment ids are UUID-like. Anything else must not become a URL segment.
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("`UDID` `{id}` is not a device identifier (letters, digits and dashes, at most 64)"));
    }
    Ok(id.to_string())
}

/// Parse what a device sent to the check-in or server URL. The two are told apart by
/// content, not path: Apple allows one URL for both, and a check-in carries
/// `MessageType` where a report carries `Status`.
pub fn parse(body: &[u8]) -> Result<Message, String> {
    let fields = parse_dict(body)?;
    if let Some(t) = string(&fields, "MessageType")? {
        let kind = match t {
            "Authenticate" => CheckInKind::Authenticate,
            "TokenUpdate" => CheckInKind::TokenUpdate,
            "CheckOut" => CheckInKind::CheckOut,
            "UserAuthenticate" => CheckInKind::UserAuthenticate,
            other => CheckInKind::Other(other.to_string()),
        };
        let id = identity(&fields)?;
        return Ok(Message::CheckIn { kind, id, fields });
    }
    let Some(status) = string(&fields, "Status")? else {
        return Err("neither `MessageType` (a check-in) nor `Status` (a command report)".into());
    };
    let status = Status::parse(status)
        .ok_or_else(|| format!("`Status` is `{status}`: Acknowledged, Error, CommandFormatError, Idle or NotNow"))?;
    let id = identity(&fields)?;
    let command_uuid = string(&fields, "CommandUUID")?.map(str::to_string);
    if status != Status::Idle && command_uuid.is_none() {
        return Err("a report with `Status` other than Idle needs `CommandUUID`".into());
    }
    Ok(Message::Report { id, status, command_uuid, fields })
}

/// CommandUUIDs Drover issues: UUID-shaped, the operation id in the last 12 hex digits.
const UUID_PREFIX: &str = "D7A0E1B0-0000-4000-8000-";

pub fn command_uuid(operation: u64) -> String {
    format!("{UUID_PREFIX}{operation:012X}")
}

/// The operation a CommandUUID stands for, if Drover issued it.
pub fn operation_id(uuid: &str) -> Option<u64> {
    let prefix = uuid.get(..UUID_PREFIX.len())?;
    let digits = uuid.get(UUID_PREFIX.len()..)?;
    if !prefix.eq_ignore_ascii_case(UUID_PREFIX) || digits.len() != 12 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// A plist value as JSON: data as base64 text, dates as RFC 3339 text.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Dictionary(d) => Json::Object(d.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Value::Boolean(b) => Json::Bool(*b),
        Value::Data(d) => Json::String(B64.encode(d)),
        Value::Date(d) => Json::String(d.to_xml_format()),
        Value::Real(r) => serde_json::Number::from_f64(*r).map_or(Json::Null, Json::Number),
        Value::Integer(i) => {
            i.as_signed().map(Json::from).or_else(|| i.as_unsigned().map(Json::from)).unwrap_or(Json::Null)
        }
        Value::String(s) => Json::String(s.clone()),
        Value::Uid(u) => Json::from(u.get()),
        _ => Json::Null,
    }
}

/// The part of a report that answers the command: everything but the envelope.
pub fn response_json(fields: &Dictionary) -> Json {
    const ENVELOPE: &[&str] = &["UDID", "EnrollmentID", "EnrollmentUserID", "Status", "CommandUUID", "UserID"];
    Json::Object(
        fields.iter().filter(|(k, _)| !ENVELOPE.contains(&k.as_str())).map(|(k, v)| (k.clone(), to_json(v))).collect(),
    )
}

/// A JSON payload value as a plist value. JSON has no data or dates: keys listed in
/// `data_keys` hold base64 text that becomes `<data>`.
fn from_json(key: &str, v: &Json, data_keys: &[&str]) -> Result<Value, String> {
    Ok(match v {
        Json::Null => return Err(format!("`{key}` is null: leave it out instead")),
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Integer(i.into()),
            (None, Some(u)) => Value::Integer(u.into()),
            _ => Value::Real(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) if data_keys.contains(&key) => {
            Value::Data(B64.decode(s.trim()).map_err(|e| format!("`{key}` is not base64: {e}"))?)
        }
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(|v| from_json(key, v, data_keys)).collect::<Result<_, _>>()?),
        Json::Object(o) => Value::Dictionary(
            o.iter().map(|(k, v)| Ok((k.clone(), from_json(k, v, data_keys)?))).collect::<Result<_, String>>()?,
        ),
    })
}

/// What a key of a command payload may hold.
#[derive(Clone, Copy)]
enum Field {
    Text,
    Bool,
    Texts,
    /// base64 text in JSON, `<data>` on the wire.
    Data,
    /// A JSON object of settings (a policy's `restrictions` or `passcode`).
    Settings,
}

/// One operation code: Apple's RequestType (or Drover's name for a composite), its kind,
/// its payload keys (name, type, required) and what it does.
pub struct Code {
    pub code: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    fields: &'static [(&'static str, Field, bool)],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Command,
    Profile,
    Policy,
}

/// Drover's name for a policy bundle: a profile generated from JSON settings.
pub const POLICY_BUNDLE: &str = "POLICY_BUNDLE";

/// The profile features a policy is made of (Drover's policies send a bundle as a list of
/// them): each is one payload of the generated profile, its settings the payload's keys.
/// `(code, key in the bundle object, description)`.
pub const FEATURES: &[(&str, &str, &str)] = &[
    (
        "RESTRICTIONS",
        "restrictions",
        "Restrictions (com.apple.applicationaccess keys, e.g. allowCamera), as a profile of their own",
    ),
    (
        "PASSCODE_POLICY",
        "passcode",
        "Passcode rules (com.apple.mobiledevice.passwordpolicy keys, e.g. minLength), as a profile of their own",
    ),
];

/// The identifier of the profile a policy's feature list becomes: one profile per device
/// for Drover's policies, replaced when the policy changes.
const POLICY_IDENTIFIER: &str = "org.drover.policy";

/// A bundle given as a feature list `[{"code", "payload"}]` (Drover's policies), as the
/// bundle object the profile is built from; `None` when `payload` is not a list.
fn features_bundle(payload: &str) -> Option<Result<String, String>> {
    let Ok(Json::Array(entries)) = serde_json::from_str::<Json>(payload) else { return None };
    let mut bundle = Map::new();
    bundle.insert("identifier".into(), Json::String(POLICY_IDENTIFIER.into()));
    bundle.insert("name".into(), Json::String("Drover policy".into()));
    for (i, e) in entries.iter().enumerate() {
        let code = e.get("code").and_then(Json::as_str).unwrap_or_default();
        let Some((_, key, _)) = FEATURES.iter().find(|(c, _, _)| *c == code) else {
            let known: Vec<&str> = FEATURES.iter().map(|f| f.0).collect();
            return Some(Err(format!(
                "{POLICY_BUNDLE} entry {i}: `{code}` is not a profile feature (known: {})",
                known.join(", ")
            )));
        };
        match e.get("payload") {
            Some(Json::Object(settings)) => {
                bundle.insert((*key).into(), Json::Object(settings.clone()));
            }
            _ => {
                return Some(Err(format!(
                    "{POLICY_BUNDLE} entry {i} ({code}): `payload` must be an object of settings"
                )));
            }
        }
    }
    Some(Ok(Json::Object(bundle).to_string()))
}

pub const CODES: &[Code] = &[
    Code {
        code: "DeviceInformation",
        kind: Kind::Command,
        description: "Read device attributes (OS version, model, battery, storage …); they update the device record",
        fields: &[("Queries", Field::Texts, false)],
    },
    Code {
        code: "DeviceLock",
        kind: Kind::Command,
        description: "Lock the screen, optionally with a message and phone number (macOS: a 6-digit PIN)",
        fields: &[("Message", Field::Text, false), ("PhoneNumber", Field::Text, false), ("PIN", Field::Text, false)],
    },
    Code {
        code: "EraseDevice",
        kind: Kind::Command,
        description: "Erase all content and settings",
        fields: &[
            ("PIN", Field::Text, false),
            ("PreserveDataPlan", Field::Bool, false),
            ("DisallowProximitySetup", Field::Bool, false),
        ],
    },
    Code {
        code: "InstallProfile",
        kind: Kind::Profile,
        description: "Install a configuration profile (.mobileconfig, signed or not, as base64 in `Payload`)",
        fields: &[("Payload", Field::Data, true)],
    },
    Code {
        code: "RemoveProfile",
        kind: Kind::Command,
        description: "Remove an installed profile by its PayloadIdentifier",
        fields: &[("Identifier", Field::Text, true)],
    },
    Code {
        code: "ProfileList",
        kind: Kind::Command,
        description: "List installed configuration profiles",
        fields: &[("ManagedOnly", Field::Bool, false)],
    },
    Code {
        code: "InstalledApplicationList",
        kind: Kind::Command,
        description: "List installed applications",
        fields: &[("Identifiers", Field::Texts, false), ("ManagedAppsOnly", Field::Bool, false)],
    },
    Code {
        code: "Restrictions",
        kind: Kind::Command,
        description: "Read the restrictions in force",
        fields: &[("ProfileRestrictions", Field::Bool, false)],
    },
    Code {
        code: "SecurityInfo",
        kind: Kind::Command,
        description: "Read passcode, encryption and firewall state",
        fields: &[],
    },
    Code { code: "CertificateList", kind: Kind::Command, description: "List installed certificates", fields: &[] },
    Code {
        code: "RestartDevice",
        kind: Kind::Command,
        description: "Restart the device (supervised)",
        fields: &[("NotifyUser", Field::Bool, false)],
    },
    Code { code: "ShutDownDevice", kind: Kind::Command, description: "Shut the device down (supervised)", fields: &[] },
    Code {
        code: POLICY_BUNDLE,
        kind: Kind::Policy,
        description: "A policy as one configuration profile: `restrictions` (com.apple.applicationaccess keys) and `passcode` (com.apple.mobiledevice.passwordpolicy keys), installed with InstallProfile",
        fields: &[
            ("identifier", Field::Text, true),
            ("name", Field::Text, false),
            ("restrictions", Field::Settings, false),
            ("passcode", Field::Settings, false),
        ],
    },
];

pub fn lookup(code: &str) -> Option<&'static Code> {
    CODES.iter().find(|c| c.code == code)
}

impl Code {
    /// The JSON Schema of the payload, for `describe`; `None` for codes without one.
    pub fn schema(&self) -> Option<String> {
        if self.fields.is_empty() {
            return None;
        }
        let mut properties = Map::new();
        for (name, field, _) in self.fields {
            let schema = match field {
                Field::Text => serde_json::json!({"type": "string"}),
                Field::Bool => serde_json::json!({"type": "boolean"}),
                Field::Texts => serde_json::json!({"type": "array", "items": {"type": "string"}}),
                Field::Data => serde_json::json!({"type": "string", "contentEncoding": "base64"}),
                Field::Settings => serde_json::json!({"type": "object"}),
            };
            properties.insert((*name).into(), schema);
        }
        let required: Vec<&str> = self.fields.iter().filter(|f| f.2).map(|f| f.0).collect();
        Some(
            serde_json::json!({"type": "object", "additionalProperties": false, "required": required, "properties": properties})
                .to_string(),
        )
    }

    /// Check a payload against this code's fields; returns it as a JSON object.
    fn check(&self, payload: Option<&str>) -> Result<Map<String, Json>, String> {
        let object = match payload {
            None => Map::new(),
            Some(text) => match serde_json::from_str::<Json>(text) {
                Ok(Json::Object(o)) => o,
                Ok(Json::Null) => Map::new(),
                Ok(_) => return Err(format!("{} payload must be a JSON object", self.code)),
                Err(e) => return Err(format!("{} payload is not JSON: {e}", self.code)),
            },
        };
        for (key, value) in &object {
            let Some((_, field, _)) = self.fields.iter().find(|f| f.0 == key) else {
                let known: Vec<&str> = self.fields.iter().map(|f| f.0).collect();
                return Err(if known.is_empty() {
                    format!("{} takes no payload, but it has `{key}`", self.code)
                } else {
                    format!("{} payload: unknown key `{key}` (known: {})", self.code, known.join(", "))
                });
            };
            let ok = match field {
                Field::Text => value.is_string(),
                Field::Bool => value.is_boolean(),
                Field::Texts => value.as_array().is_some_and(|a| a.iter().all(Json::is_string)),
                Field::Data => value.is_string(),
                Field::Settings => value.is_object(),
            };
            if !ok {
                let want = match field {
                    Field::Text => "a string",
                    Field::Bool => "a boolean",
                    Field::Texts => "an array of strings",
                    Field::Data => "base64 text",
                    Field::Settings => "an object",
                };
                return Err(format!("{} payload: `{key}` must be {want}", self.code));
            }
        }
        for (name, _, required) in self.fields {
            if *required && !object.contains_key(*name) {
                return Err(format!("{} payload: `{name}` is required", self.code));
            }
        }
        Ok(object)
    }
}

/// Check an operation as an admin adds it: known code, payload of the right shape, and
/// the deeper rules (a 6-digit PIN, a profile that parses).
pub fn validate(code: &str, payload: Option<&str>) -> Result<(), String> {
    command(0, code, payload).map(|_| ())
}

/// The command plist for one operation: `{CommandUUID, Command: {RequestType, …}}`.
pub fn command(operation: u64, code: &str, payload: Option<&str>) -> Result<Dictionary, String> {
    // A feature alone is a bundle of one: a profile with that payload.
    if let Some((feature, _, _)) = FEATURES.iter().find(|(c, _, _)| *c == code) {
        let entry = serde_json::json!([{
            "code": feature,
            "payload": payload.map(serde_json::from_str::<Json>).transpose().map_err(|e| format!("{code} payload is not JSON: {e}"))?,
        }]);
        return command(operation, POLICY_BUNDLE, Some(&entry.to_string()));
    }
    let listed = match (code, payload) {
        (POLICY_BUNDLE, Some(p)) => features_bundle(p).transpose()?,
        _ => None,
    };
    let payload = listed.as_deref().or(payload);
    let c = lookup(code).ok_or_else(|| format!("unknown operation code `{code}`"))?;
    let object = c.check(payload)?;
    let mut command = Dictionary::new();
    if c.code == POLICY_BUNDLE {
        let profile = policy_profile(&object)?;
        command.insert("RequestType".into(), Value::String("InstallProfile".into()));
        command.insert("Payload".into(), Value::Data(profile));
    } else {
        command.insert("RequestType".into(), Value::String(c.code.into()));
        for (k, v) in &object {
            command.insert(k.clone(), from_json(k, v, &["Payload"])?);
        }
        if let Some(Value::String(pin)) = command.get("PIN")
            && (pin.len() != 6 || !pin.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!("{code} payload: `PIN` must be 6 digits"));
        }
        if let Some(Value::Data(profile)) = command.get("Payload") {
            check_profile(profile).map_err(|e| format!("InstallProfile payload: {e}"))?;
        }
    }
    let mut message = Dictionary::new();
    message.insert("Command".into(), Value::Dictionary(command));
    message.insert("CommandUUID".into(), Value::String(command_uuid(operation)));
    Ok(message)
}

/// XML plist bytes of a dictionary.
pub fn to_xml(d: Dictionary) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    Value::Dictionary(d).to_writer_xml(&mut out).expect("writing a plist to memory cannot fail");
    out
}

/// A profile must be a signed profile (CMS, DER: starts with a SEQUENCE) or a plist
/// dictionary of PayloadType `Configuration` with a PayloadIdentifier.
fn check_profile(bytes: &[u8]) -> Result<(), String> {
    if bytes.first() == Some(&0x30) {
        return Ok(());
    }
    let d = parse_dict(bytes).map_err(|e| format!("`Payload` is neither a signed profile nor a plist ({e})"))?;
    match string(&d, "PayloadType")? {
        Some("Configuration") => {}
        Some(other) => return Err(format!("`PayloadType` is `{other}`, not Configuration")),
        None => return Err("the profile has no `PayloadType`".into()),
    }
    if string(&d, "PayloadIdentifier")?.is_none_or(str::is_empty) {
        return Err("the profile has no `PayloadIdentifier`".into());
    }
    Ok(())
}

/// Namespace of the name-based UUIDs of generated profiles.
const PROFILE_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b1f_5d2e_7a90_4e5b_8f1a_0c1d_4b4f_9c3a);

/// Build the .mobileconfig of a policy bundle. UUIDs are derived from the identifier and
/// content: the same policy is the same profile, a changed one replaces it.
fn policy_profile(policy: &Map<String, Json>) -> Result<Vec<u8>, String> {
    let identifier = policy["identifier"].as_str().unwrap_or_default();
    if identifier.is_empty() || identifier.contains(char::is_whitespace) {
        return Err(format!("{POLICY_BUNDLE} payload: `identifier` must be a reverse-DNS name without spaces"));
    }
    let name = policy.get("name").and_then(Json::as_str).unwrap_or(identifier);
    let content = Json::Object(policy.clone()).to_string();
    let uuid = |part: &str| {
        uuid::Uuid::new_v5(&PROFILE_NAMESPACE, format!("{part}\n{content}").as_bytes())
            .hyphenated()
            .to_string()
            .to_uppercase()
    };
    let mut payloads = Vec::new();
    for (key, payload_type, what) in [
        ("restrictions", "com.apple.applicationaccess", "Restrictions"),
        ("passcode", "com.apple.mobiledevice.passwordpolicy", "Passcode"),
    ] {
        let Some(Json::Object(settings)) = policy.get(key) else { continue };
        if settings.is_empty() {
            continue;
        }
        let mut p = Dictionary::new();
        for (k, v) in settings {
            if !(v.is_boolean() || v.is_i64() || v.is_string()) {
                return Err(format!("{POLICY_BUNDLE} payload: `{key}.{k}` must be a boolean, an integer or a string"));
            }
            p.insert(k.clone(), from_json(k, v, &[])?);
        }
        p.insert("PayloadType".into(), Value::String(payload_type.into()));
        p.insert("PayloadIdentifier".into(), Value::String(format!("{identifier}.{key}")));
        p.insert("PayloadUUID".into(), Value::String(uuid(key)));
        p.insert("PayloadVersion".into(), Value::Integer(1.into()));
        p.insert("PayloadDisplayName".into(), Value::String(what.into()));
        payloads.push(Value::Dictionary(p));
    }
    if payloads.is_empty() {
        return Err(format!("{POLICY_BUNDLE} payload: give `restrictions`, `passcode` or both"));
    }
    let mut profile = Dictionary::new();
    profile.insert("PayloadContent".into(), Value::Array(payloads));
    profile.insert("PayloadDisplayName".into(), Value::String(name.into()));
    profile.insert("PayloadIdentifier".into(), Value::String(identifier.into()));
    profile.insert("PayloadType".into(), Value::String("Configuration".into()));
    profile.insert("PayloadUUID".into(), Value::String(uuid("profile")));
    profile.insert("PayloadVersion".into(), Value::Integer(1.into()));
    profile.insert("PayloadScope".into(), Value::String("System".into()));
    profile.insert("PayloadRemovalDisallowed".into(), Value::Boolean(true));
    Ok(to_xml(profile))
}

/// Values of a check-in or a DeviceInformation answer that become device metadata.
pub const METADATA_KEYS: &[&str] = &[
    "OSVersion",
    "BuildVersion",
    "ProductName",
    "SerialNumber",
    "IMEI",
    "MEID",
    "DeviceName",
    "Model",
    "ModelName",
    "Topic",
];

/// Metadata pairs from a dictionary: plain values as text, containers left out.
pub fn metadata(d: &Dictionary, only: Option<&[&str]>) -> Vec<(String, String)> {
    d.iter()
        .filter(|(k, _)| only.is_none_or(|keys| keys.contains(&k.as_str())))
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Boolean(b) => b.to_string(),
                Value::Integer(i) => i.to_string(),
                Value::Real(r) => r.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect()
}

/// The push token of a TokenUpdate: `Token` (data) in hex, with `PushMagic` and `Topic`.
pub fn push_token(d: &Dictionary) -> Result<(String, Vec<(String, String)>), String> {
    let token = match d.get("Token") {
        Some(Value::Data(t)) if !t.is_empty() => t.iter().map(|b| format!("{b:02x}")).collect(),
        Some(Value::Data(_)) => return Err("`Token` is empty".into()),
        Some(other) => return Err(format!("`Token` is {}, not data", type_name(other))),
        None => return Err("TokenUpdate without `Token`".into()),
    };
    let magic = string(d, "PushMagic")?.ok_or("TokenUpdate without `PushMagic`")?;
    let topic = string(d, "Topic")?.ok_or("TokenUpdate without `Topic`")?;
    Ok((token, vec![("PushMagic".into(), magic.into()), ("Topic".into(), topic.into())]))
}
