//! The Android operation catalogue: codes, kinds, payload shapes and their validation.
//!
//! Payload shapes follow the WSO2 Android agent (`payLoad` field names as the agent reads
//! them). Each payload is checked with a typed serde struct that denies unknown fields,
//! so an admin's typo (`messageTitel`) is named instead of silently dropped; the JSON
//! Schema published through `describe` says the same thing for tools and the console.

use serde::Deserialize;
use serde_json::Value;

/// Kind of an operation in this catalogue (mirrors the WIT `operation-kind`, kept
/// separate so the codec compiles and benchmarks without the bindings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Command,
    Profile,
    Policy,
}

/// One entry of the catalogue.
pub struct Code {
    pub code: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    /// JSON Schema of the payload; `None`: the code takes no payload.
    pub schema: Option<&'static str>,
}

pub const CODES: &[Code] = &[
    Code {
        code: "DEVICE_INFO",
        kind: Kind::Command,
        description: "Report hardware, OS and battery details",
        schema: None,
    },
    Code { code: "DEVICE_LOCATION", kind: Kind::Command, description: "Report the current location", schema: None },
    Code { code: "APPLICATION_LIST", kind: Kind::Command, description: "Report installed applications", schema: None },
    Code {
        code: "DEVICE_LOCK",
        kind: Kind::Command,
        description: "Lock the screen, optionally with a message; hard lock needs an admin to unlock",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"properties":{"message":{"type":"string","maxLength":512},"hardLockEnabled":{"type":"boolean"}}}"#,
        ),
    },
    Code { code: "DEVICE_UNLOCK", kind: Kind::Command, description: "Release a hard lock", schema: None },
    Code { code: "DEVICE_RING", kind: Kind::Command, description: "Ring the device at full volume", schema: None },
    Code { code: "DEVICE_MUTE", kind: Kind::Command, description: "Mute the device", schema: None },
    Code { code: "REBOOT", kind: Kind::Command, description: "Reboot (device-owner agents only)", schema: None },
    Code {
        code: "WIPE_DATA",
        kind: Kind::Command,
        description: "Factory reset; the PIN the user set at enrollment confirms it",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["pin"],"properties":{"pin":{"type":"string","pattern":"^[0-9]{4,16}$"}}}"#,
        ),
    },
    Code {
        code: "ENTERPRISE_WIPE",
        kind: Kind::Command,
        description: "Remove the work profile and its data only",
        schema: None,
    },
    Code {
        code: "NOTIFICATION",
        kind: Kind::Command,
        description: "Show a notification to the user",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["messageTitle","messageText"],"properties":{"messageTitle":{"type":"string","minLength":1,"maxLength":256},"messageText":{"type":"string","minLength":1,"maxLength":4096}}}"#,
        ),
    },
    Code {
        code: "CAMERA",
        kind: Kind::Profile,
        description: "Allow or disable the camera",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["enabled"],"properties":{"enabled":{"type":"boolean"}}}"#,
        ),
    },
    Code {
        code: "WIFI",
        kind: Kind::Profile,
        description: "Configure a Wi-Fi network",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["ssid"],"properties":{"ssid":{"type":"string","minLength":1,"maxLength":32},"password":{"type":"string","maxLength":63},"type":{"enum":["none","wep","wpa","wpa2","eap"]}}}"#,
        ),
    },
    Code {
        code: "INSTALL_APPLICATION",
        kind: Kind::Command,
        description: "Install an application from a store or an enterprise URL",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["appIdentifier","type"],"properties":{"appIdentifier":{"type":"string","minLength":1},"type":{"enum":["enterprise","public","webapp"]},"url":{"type":"string","pattern":"^https?://"}}}"#,
        ),
    },
    Code {
        code: "UNINSTALL_APPLICATION",
        kind: Kind::Command,
        description: "Uninstall an application by package name",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["appIdentifier"],"properties":{"appIdentifier":{"type":"string","minLength":1}}}"#,
        ),
    },
    Code {
        code: "POLICY_BUNDLE",
        kind: Kind::Policy,
        description: "Apply a set of profile operations as one policy and report compliance",
        schema: Some(
            r#"{"type":"array","minItems":1,"items":{"type":"object","required":["code"],"properties":{"code":{"type":"string"},"payLoad":{}}}}"#,
        ),
    },
    Code {
        code: "POLICY_MONITOR",
        kind: Kind::Policy,
        description: "Check the applied policy on the device and report each feature's compliance",
        schema: None,
    },
];

/// Find a code in the catalogue.
pub fn lookup(code: &str) -> Option<&'static Code> {
    CODES.iter().find(|c| c.code == code)
}

/// Why a payload was refused. `UnknownCode` is separate so the host can answer
/// "unknown operation" rather than "invalid payload".
#[derive(Debug, PartialEq, Eq)]
pub enum PayloadError {
    UnknownCode(String),
    Malformed(String),
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // fields are read by serde's checks only
struct Lock {
    message: Option<String>,
    #[serde(rename = "hardLockEnabled")]
    hard_lock_enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wipe {
    pin: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Notification {
    #[serde(rename = "messageTitle")]
    title: String,
    #[serde(rename = "messageText")]
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Camera {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wifi {
    ssid: String,
    password: Option<String>,
    #[serde(rename = "type")]
    security: Option<WifiSecurity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WifiSecurity {
    None,
    Wep,
    Wpa,
    Wpa2,
    Eap,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallApp {
    #[serde(rename = "appIdentifier")]
    app_identifier: String,
    #[serde(rename = "type")]
    #[allow(dead_code)]
    app_type: AppType,
    url: Option<String>,
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum AppType {
    Enterprise,
    Public,
    Webapp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UninstallApp {
    #[serde(rename = "appIdentifier")]
    app_identifier: String,
}

#[derive(Deserialize)]
struct BundleEntry {
    code: String,
    #[serde(rename = "payLoad", alias = "payload", default)]
    payload: Value,
}

/// A bundle whose entries name their payload `payload` (as Drover's policies do),
/// rewritten with the agent's `payLoad`; `None` when there is nothing to rewrite.
pub fn agent_bundle(payload: &str) -> Option<String> {
    let mut entries: Vec<serde_json::Map<String, Value>> = serde_json::from_str(payload).ok()?;
    let mut changed = false;
    for e in &mut entries {
        if let Some(p) = e.remove("payload") {
            e.insert("payLoad".into(), p);
            changed = true;
        }
    }
    changed.then(|| Value::from(entries.into_iter().map(Value::Object).collect::<Vec<_>>()).to_string())
}

fn parse<T: serde::de::DeserializeOwned>(code: &str, v: &Value) -> Result<T, PayloadError> {
    T::deserialize(v).map_err(|e| PayloadError::Invalid(format!("{code} payload: {e}")))
}

fn invalid(code: &str, what: &str) -> PayloadError {
    PayloadError::Invalid(format!("{code} payload: {what}"))
}

/// Check `payload` (JSON text, if any) for `code`.
pub fn validate(code: &str, payload: Option<&str>) -> Result<(), PayloadError> {
    let entry = lookup(code).ok_or_else(|| PayloadError::UnknownCode(code.to_string()))?;
    let value = match payload {
        None => Value::Null,
        Some(text) => serde_json::from_str::<Value>(text)
            .map_err(|e| PayloadError::Malformed(format!("{code} payload is not JSON: {e}")))?,
    };
    validate_value(entry, &value)
}

fn validate_value(entry: &Code, value: &Value) -> Result<(), PayloadError> {
    let code = entry.code;
    if entry.schema.is_none() {
        // An empty object is what many admin tools send for "no payload"; accept it.
        return match value {
            Value::Null => Ok(()),
            Value::Object(m) if m.is_empty() => Ok(()),
            _ => Err(invalid(code, "this operation takes no payload")),
        };
    }
    // A code whose payload fields are all optional (DEVICE_LOCK) takes no payload as `{}`.
    let all_optional = entry.schema.is_some_and(|s| !s.contains("\"required\""));
    let empty = Value::Object(Default::default());
    let value = match value {
        Value::Null if all_optional => &empty,
        Value::Null => return Err(invalid(code, "a payload is required")),
        v => v,
    };
    match code {
        "DEVICE_LOCK" => {
            let l: Lock = parse(code, value)?;
            if l.message.as_ref().is_some_and(|m| m.chars().count() > 512) {
                return Err(invalid(code, "`message` is longer than 512 characters"));
            }
        }
        "WIPE_DATA" => {
            let w: Wipe = parse(code, value)?;
            let ok = (4..=16).contains(&w.pin.len()) && w.pin.bytes().all(|b| b.is_ascii_digit());
            if !ok {
                return Err(invalid(code, "`pin` must be 4 to 16 digits"));
            }
        }
        "NOTIFICATION" => {
            let n: Notification = parse(code, value)?;
            if n.title.trim().is_empty() || n.title.chars().count() > 256 {
                return Err(invalid(code, "`messageTitle` must be 1 to 256 characters"));
            }
            if n.text.trim().is_empty() || n.text.chars().count() > 4096 {
                return Err(invalid(code, "`messageText` must be 1 to 4096 characters"));
            }
        }
        "CAMERA" => {
            let _: Camera = parse(code, value)?;
        }
        "WIFI" => {
            let w: Wifi = parse(code, value)?;
            if w.ssid.is_empty() || w.ssid.len() > 32 {
                return Err(invalid(code, "`ssid` must be 1 to 32 bytes"));
            }
            let secured = !matches!(w.security, None | Some(WifiSecurity::None));
            match (&w.password, secured) {
                (Some(p), _) if p.len() > 63 => {
                    return Err(invalid(code, "`password` is longer than 63 characters"));
                }
                (None, true) => {
                    return Err(invalid(code, "`password` is required for a secured network"));
                }
                (Some(p), true)
                    if matches!(w.security, Some(WifiSecurity::Wpa | WifiSecurity::Wpa2)) && p.len() < 8 =>
                {
                    return Err(invalid(code, "a WPA `password` needs at least 8 characters"));
                }
                _ => {}
            }
        }
        "INSTALL_APPLICATION" => {
            let a: InstallApp = parse(code, value)?;
            if a.app_identifier.trim().is_empty() {
                return Err(invalid(code, "`appIdentifier` is empty"));
            }
            if a.app_type != AppType::Public {
                match &a.url {
                    Some(u) if u.starts_with("https://") || u.starts_with("http://") => {}
                    Some(_) => return Err(invalid(code, "`url` must be an http(s) URL")),
                    None => return Err(invalid(code, "`url` is required for enterprise and web apps")),
                }
            }
        }
        "UNINSTALL_APPLICATION" => {
            let a: UninstallApp = parse(code, value)?;
            if a.app_identifier.trim().is_empty() {
                return Err(invalid(code, "`appIdentifier` is empty"));
            }
        }
        "POLICY_BUNDLE" => {
            let entries: Vec<BundleEntry> = parse(code, value)?;
            if entries.is_empty() {
                return Err(invalid(code, "the bundle is empty"));
            }
            for (i, e) in entries.iter().enumerate() {
                let inner = lookup(&e.code)
                    .ok_or_else(|| invalid(code, &format!("entry {i}: unknown operation code `{}`", e.code)))?;
                if inner.kind != Kind::Profile {
                    return Err(invalid(code, &format!("entry {i}: `{}` is not a profile operation", e.code)));
                }
                // WSO2 admin tools send nested payloads as JSON strings; accept both forms.
                let nested = match &e.payload {
                    Value::String(s) => serde_json::from_str(s)
                        .map_err(|err| invalid(code, &format!("entry {i}: payLoad string is not JSON: {err}")))?,
                    v => v.clone(),
                };
                validate_value(inner, &nested).map_err(|err| match err {
                    PayloadError::Invalid(m) | PayloadError::Malformed(m) => invalid(code, &format!("entry {i}: {m}")),
                    other => other,
                })?;
            }
        }
        _ => unreachable!("every code with a schema is validated above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_with_a_schema_has_a_validator_and_valid_json_schema() {
        for c in CODES {
            if let Some(s) = c.schema {
                serde_json::from_str::<Value>(s).unwrap_or_else(|e| panic!("{}: {e}", c.code));
                // Must not hit the unreachable!() arm.
                let _ = validate(c.code, Some("{}"));
            }
        }
    }

    #[test]
    fn payloads_are_checked_by_field() {
        assert_eq!(validate("DEVICE_RING", None), Ok(()));
        assert_eq!(validate("DEVICE_LOCK", None), Ok(()));
        assert!(matches!(validate("CAMERA", None), Err(PayloadError::Invalid(m)) if m.contains("required")));
        assert_eq!(validate("DEVICE_RING", Some("{}")), Ok(()));
        assert!(
            matches!(validate("DEVICE_RING", Some(r#"{"x":1}"#)), Err(PayloadError::Invalid(m)) if m.contains("takes no payload"))
        );
        assert!(matches!(validate("FLY", None), Err(PayloadError::UnknownCode(c)) if c == "FLY"));
        assert!(matches!(validate("NOTIFICATION", Some("{")), Err(PayloadError::Malformed(_))));
        assert!(
            matches!(validate("NOTIFICATION", Some(r#"{"messageTitel":"a","messageText":"b"}"#)), Err(PayloadError::Invalid(m)) if m.contains("messageTitel"))
        );
        assert_eq!(validate("NOTIFICATION", Some(r#"{"messageTitle":"Hi","messageText":"Please update"}"#)), Ok(()));
        assert!(
            matches!(validate("WIPE_DATA", Some(r#"{"pin":"12a4"}"#)), Err(PayloadError::Invalid(m)) if m.contains("pin"))
        );
        assert!(
            matches!(validate("WIFI", Some(r#"{"ssid":"corp","type":"wpa2","password":"short"}"#)), Err(PayloadError::Invalid(m)) if m.contains("8 characters"))
        );
        assert_eq!(validate("WIFI", Some(r#"{"ssid":"corp","type":"wpa2","password":"longenough"}"#)), Ok(()));
        assert!(
            matches!(validate("INSTALL_APPLICATION", Some(r#"{"appIdentifier":"com.x","type":"enterprise"}"#)), Err(PayloadError::Invalid(m)) if m.contains("url"))
        );
    }

    #[test]
    fn policy_bundles_check_each_entry() {
        let ok = r#"[{"code":"CAMERA","payLoad":{"enabled":false}},{"code":"WIFI","payLoad":"{\"ssid\":\"guest\"}"}]"#;
        assert_eq!(validate("POLICY_BUNDLE", Some(ok)), Ok(()));
        // Drover's policies name the field `payload`; the agent gets `payLoad`.
        let drover = r#"[{"code":"CAMERA","payload":{"enabled":false}}]"#;
        assert_eq!(validate("POLICY_BUNDLE", Some(drover)), Ok(()));
        assert_eq!(agent_bundle(drover).as_deref(), Some(r#"[{"code":"CAMERA","payLoad":{"enabled":false}}]"#));
        assert_eq!(agent_bundle(ok), None);
        let bad = r#"[{"code":"CAMERA","payLoad":{"enabled":false}},{"code":"DEVICE_RING"}]"#;
        assert!(
            matches!(validate("POLICY_BUNDLE", Some(bad)), Err(PayloadError::Invalid(m)) if m.contains("entry 1") && m.contains("not a profile"))
        );
        assert!(matches!(validate("POLICY_BUNDLE", Some("[]")), Err(PayloadError::Invalid(m)) if m.contains("empty")));
    }
}
