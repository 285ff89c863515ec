//! A device's push token (the transport that wakes it, the provider's token, and what
//! else the provider needs), as plugins report it and as the device row stores it.

use crate::plugins::types::PushToken;
use crate::store::DeviceRow;

/// The stored form of a push token.
pub fn to_json(t: &PushToken) -> String {
    serde_json::json!({"transport": t.transport, "token": t.token, "extra": t.extra}).to_string()
}

/// A device's push token, if it has one (and it is readable).
pub fn of(device: &DeviceRow) -> Option<PushToken> {
    let v: serde_json::Value = serde_json::from_str(device.push_token.as_deref()?).ok()?;
    let extra = v["extra"]
        .as_array()
        .map(|a| {
            a.iter().filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_str()?.to_string()))).collect()
        })
        .unwrap_or_default();
    Some(PushToken { transport: v["transport"].as_str()?.to_string(), token: v["token"].as_str()?.to_string(), extra })
}

/// The transport named by a stored token, e.g. `fcm` (what the API shows).
pub fn transport(stored: Option<&str>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(stored?).ok()?;
    v["transport"].as_str().map(str::to_string)
}
