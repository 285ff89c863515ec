//! Windows operation codes and the SyncML command each becomes. Named codes cover the
//! common actions (wipe, lock, reboot, inventory, battery, camera policy); the raw codes
//! `Get`, `Replace`, `Add`, `Delete` and `Exec` reach any CSP node by its OMA-URI.

use crate::syncml::{Command, Item};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Command,
    Profile,
    Policy,
}

pub struct Code {
    pub code: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    pub schema: Option<&'static str>,
}

pub const CODES: &[Code] = &[
    Code {
        code: "RemoteWipe",
        kind: Kind::Command,
        description: "Reset the device (RemoteWipe CSP doWipe; `protected`: doWipeProtected, which survives a power loss)",
        schema: Some(r#"{"type":"object","additionalProperties":false,"properties":{"protected":{"type":"boolean"}}}"#),
    },
    Code { code: "RemoteLock", kind: Kind::Command, description: "Lock the screen now (RemoteLock CSP)", schema: None },
    Code { code: "Reboot", kind: Kind::Command, description: "Restart now (Reboot CSP RebootNow)", schema: None },
    Code {
        code: "DevDetail",
        kind: Kind::Command,
        description: "Read device details (OS, firmware and hardware versions, OEM, name); they update the device record",
        schema: None,
    },
    Code {
        code: "DeviceStatus",
        kind: Kind::Command,
        description: "Read battery status, charge and runtime (DeviceStatus CSP); charge is reported as telemetry `battery`",
        schema: None,
    },
    Code {
        code: "CAMERA",
        kind: Kind::Profile,
        description: "Policy feature: allow or block the camera (Policy CSP Camera/AllowCamera)",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["enabled"],"properties":{"enabled":{"type":"boolean"}}}"#,
        ),
    },
    Code {
        code: "PASSCODE_POLICY",
        kind: Kind::Profile,
        description: "Policy feature: require a device password of at least `minLength` characters (Policy CSP DeviceLock)",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["minLength"],"properties":{"minLength":{"type":"integer","minimum":4,"maximum":16}}}"#,
        ),
    },
    Code {
        code: "CameraPolicy",
        kind: Kind::Policy,
        description: "Allow or block the camera (Policy CSP Camera/AllowCamera)",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["allowed"],"properties":{"allowed":{"type":"boolean"}}}"#,
        ),
    },
    Code {
        code: "PushChannel",
        kind: Kind::Command,
        description: "Read the device's WNS channel URI (DMClient CSP) so Drover can wake it",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"properties":{"provider":{"type":"string","minLength":1}}}"#,
        ),
    },
    Code {
        code: "POLICY_BUNDLE",
        kind: Kind::Policy,
        description: "Set several Policy CSP nodes in one Replace: `settings` of {uri, format, data}",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["settings"],"properties":{"settings":{"type":"array","minItems":1,"items":{"type":"object","required":["uri","data"],"properties":{"uri":{"type":"string"},"format":{"type":"string"},"data":{"type":"string"}}}}}}"#,
        ),
    },
    Code {
        code: "Get",
        kind: Kind::Command,
        description: "Read OMA-DM nodes: `uris`",
        schema: Some(
            r#"{"type":"object","additionalProperties":false,"required":["uris"],"properties":{"uris":{"type":"array","minItems":1,"items":{"type":"string"}}}}"#,
        ),
    },
    Code {
        code: "Replace",
        kind: Kind::Profile,
        description: "Set an OMA-DM node: `uri`, `data`, optional `format` (chr, int, bool, b64, xml …) and `type`",
        schema: Some(NODE_SCHEMA),
    },
    Code {
        code: "Add",
        kind: Kind::Profile,
        description: "Create an OMA-DM node: `uri`, optional `data`, `format`, `type`",
        schema: Some(NODE_SCHEMA),
    },
    Code {
        code: "Delete",
        kind: Kind::Command,
        description: "Delete an OMA-DM node: `uri`",
        schema: Some(NODE_SCHEMA),
    },
    Code {
        code: "Exec",
        kind: Kind::Command,
        description: "Execute an OMA-DM node: `uri`, optional `data`",
        schema: Some(NODE_SCHEMA),
    },
];

const NODE_SCHEMA: &str = r#"{"type":"object","additionalProperties":false,"required":["uri"],"properties":{"uri":{"type":"string"},"data":{"type":"string"},"format":{"type":"string"},"type":{"type":"string"}}}"#;

pub fn lookup(code: &str) -> Option<&'static Code> {
    CODES.iter().find(|c| c.code == code)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraFeature {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PasscodeFeature {
    min_length: u8,
}

/// One entry of a bundle given as a feature list (Drover's policies).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureEntry {
    code: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

fn int_setting(uri: &str, value: impl ToString) -> Item {
    Item { target: Some(uri.into()), format: Some("int".into()), data: Some(value.to_string()), ..Default::default() }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Node {
    uri: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default, rename = "type")]
    meta_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Uris {
    uris: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wipe {
    #[serde(default)]
    protected: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Camera {
    allowed: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Push {
    #[serde(default)]
    provider: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    settings: Vec<Node>,
}

/// Formats of OMA-DM node values (RepPro 1.2 `Format`).
const FORMATS: &[&str] = &["b64", "bin", "bool", "chr", "int", "node", "null", "xml", "date", "time", "float"];

/// An OMA-URI as a device accepts it: relative (`./`), no empty, `.` or `..` segments.
fn check_uri(uri: &str) -> Result<(), String> {
    let rest = uri.strip_prefix("./").ok_or_else(|| format!("`{uri}` is not an OMA-URI (they start with `./`)"))?;
    if rest.is_empty() || rest.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(format!("`{uri}` has an empty, `.` or `..` segment"));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{uri}` contains whitespace"));
    }
    Ok(())
}

fn payload<T: for<'de> Deserialize<'de>>(code: &str, payload: Option<&str>) -> Result<T, String> {
    serde_json::from_str(payload.unwrap_or("{}")).map_err(|e| format!("{code} payload: {e}"))
}

fn target(uri: &str) -> Item {
    Item { target: Some(uri.into()), ..Default::default() }
}

fn node_item(code: &str, n: Node) -> Result<Item, String> {
    check_uri(&n.uri)?;
    if let Some(f) = &n.format
        && !FORMATS.contains(&f.as_str())
    {
        return Err(format!("{code}: `format` `{f}` is not one of {}", FORMATS.join(", ")));
    }
    Ok(Item { target: Some(n.uri), source: None, format: n.format, meta_type: n.meta_type, data: n.data })
}

const DEV_DETAIL: &[&str] = &[
    "./DevDetail/SwV",
    "./DevDetail/FwV",
    "./DevDetail/HwV",
    "./DevDetail/OEM",
    "./DevDetail/DevTyp",
    "./DevDetail/Ext/Microsoft/OSPlatform",
    "./DevDetail/Ext/Microsoft/DeviceName",
    "./DevDetail/Ext/Microsoft/TotalStorage",
    "./DevDetail/Ext/Microsoft/TotalRAM",
];

const DEVICE_STATUS: &[&str] = &[
    "./Vendor/MSFT/DeviceStatus/Battery/Status",
    "./Vendor/MSFT/DeviceStatus/Battery/EstimatedChargeRemaining",
    "./Vendor/MSFT/DeviceStatus/Battery/EstimatedRuntime",
];

/// The SyncML command (name and items, without a CmdID) for an operation.
pub fn command(code: &str, p: Option<&str>) -> Result<Command, String> {
    let (name, items): (&str, Vec<Item>) = match code {
        "RemoteWipe" => {
            let w: Wipe = payload(code, p)?;
            let node = if w.protected { "doWipeProtected" } else { "doWipe" };
            ("Exec", vec![target(&format!("./Device/Vendor/MSFT/RemoteWipe/{node}"))])
        }
        "RemoteLock" => ("Exec", vec![target("./Vendor/MSFT/RemoteLock/Lock")]),
        "Reboot" => ("Exec", vec![target("./Device/Vendor/MSFT/Reboot/RebootNow")]),
        "DevDetail" => ("Get", DEV_DETAIL.iter().map(|u| target(u)).collect()),
        "DeviceStatus" => ("Get", DEVICE_STATUS.iter().map(|u| target(u)).collect()),
        "CameraPolicy" => {
            let c: Camera = payload(code, p)?;
            let item = Item {
                target: Some("./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera".into()),
                format: Some("int".into()),
                data: Some(if c.allowed { "1" } else { "0" }.into()),
                ..Default::default()
            };
            ("Replace", vec![item])
        }
        "PushChannel" => {
            let push: Push = payload(code, p)?;
            let provider = push.provider.unwrap_or_else(|| "Drover".into());
            if provider.contains('/') || provider.trim().is_empty() {
                return Err(format!("PushChannel: `provider` `{provider}` is not a provider id"));
            }
            ("Get", vec![target(&format!("./Vendor/MSFT/DMClient/Provider/{provider}/Push/ChannelURI"))])
        }
        "CAMERA" => {
            let c: CameraFeature = payload(code, p)?;
            ("Replace", vec![int_setting("./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera", u8::from(c.enabled))])
        }
        "PASSCODE_POLICY" => {
            let c: PasscodeFeature = payload(code, p)?;
            if !(4..=16).contains(&c.min_length) {
                return Err(format!("PASSCODE_POLICY: `minLength` {} is not 4 to 16", c.min_length));
            }
            // DevicePasswordEnabled: 0 means the password is required (the CSP's own sense).
            (
                "Replace",
                vec![
                    int_setting("./Device/Vendor/MSFT/Policy/Config/DeviceLock/DevicePasswordEnabled", 0),
                    int_setting("./Device/Vendor/MSFT/Policy/Config/DeviceLock/MinDevicePasswordLength", c.min_length),
                ],
            )
        }
        "POLICY_BUNDLE" if p.is_some_and(|p| p.trim_start().starts_with('[')) => {
            // A feature list: each profile feature's settings, in one Replace.
            let entries: Vec<FeatureEntry> = payload(code, p)?;
            if entries.is_empty() {
                return Err("POLICY_BUNDLE: the feature list is empty".into());
            }
            let mut items = Vec::new();
            for (i, e) in entries.into_iter().enumerate() {
                if lookup(&e.code).is_none_or(|c| c.kind != Kind::Profile) {
                    let features: Vec<&str> =
                        CODES.iter().filter(|c| c.kind == Kind::Profile).map(|c| c.code).collect();
                    return Err(format!(
                        "POLICY_BUNDLE entry {i}: `{}` is not a profile feature (known: {})",
                        e.code,
                        features.join(", ")
                    ));
                }
                let text = e.payload.map(|v| v.to_string());
                let c = command(&e.code, text.as_deref()).map_err(|m| format!("POLICY_BUNDLE entry {i}: {m}"))?;
                items.extend(c.items);
            }
            ("Replace", items)
        }
        "POLICY_BUNDLE" => {
            let b: Bundle = payload(code, p)?;
            if b.settings.is_empty() {
                return Err("POLICY_BUNDLE: `settings` is empty".into());
            }
            let items = b.settings.into_iter().map(|n| node_item(code, n)).collect::<Result<_, _>>()?;
            ("Replace", items)
        }
        "Get" => {
            let u: Uris = payload(code, p)?;
            if u.uris.is_empty() {
                return Err("Get: `uris` is empty".into());
            }
            for uri in &u.uris {
                check_uri(uri)?;
            }
            ("Get", u.uris.iter().map(|u| target(u)).collect())
        }
        "Replace" | "Add" | "Delete" | "Exec" => {
            let n: Node = payload(code, p)?;
            if code == "Replace" && n.data.is_none() {
                return Err("Replace payload: `data` is required".into());
            }
            (code, vec![node_item(code, n)?])
        }
        other => return Err(format!("unknown operation code `{other}`")),
    };
    Ok(Command { name: name.into(), items, ..Default::default() })
}

/// What a SyncML status code means (OMA-DM 1.2 and MS-MDM), for admins reading a result.
pub fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        202 => "accepted for processing",
        211 => "item not deleted (not found)",
        212 => "authentication accepted",
        214 => "operation cancelled",
        215 => "not executed (user interaction)",
        216 => "atomic roll back OK",
        400 => "bad request",
        401 => "invalid credentials",
        403 => "forbidden",
        404 => "not found",
        405 => "command not allowed",
        406 => "optional feature not supported",
        407 => "authentication required",
        413 => "request entity too large",
        415 => "unsupported media type or format",
        418 => "already exists",
        425 => "permission denied",
        500 => "command failed",
        507 => "atomic failed",
        516 => "atomic roll back failed",
        _ => "see OMA-DM 1.2 status codes",
    }
}
