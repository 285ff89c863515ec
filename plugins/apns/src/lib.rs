//! Transport `apns`: Apple Push Notification service, for Apple MDM.
//!
//! An MDM wake-up carries no message: the payload is `{"mdm": "<PushMagic>"}`, where
//! PushMagic is the string the device sent in its TokenUpdate check-in; the device then
//! connects to the server URL of its MDM payload. The push token travels as a push
//! token (`transport = "apns"`) whose `extra` holds `PushMagic` and `Topic` (the
//! `com.apple.mgmt.External.…` topic of the MDM push certificate).
//!
//! Admin settings: `environment` (`production`, the default, or `sandbox`), `topic` (used
//! when the device's token carries none), `auth_token` (a provider JWT; only for
//! token-based authentication, which Apple does not accept for MDM topics: those need
//! the MDM push certificate as the TLS client identity, which the host presents from the
//! admin's `client_identity` setting; this plugin never sees it).
//!
//! Reference: "Sending notification requests to APNs" and "Handling notification
//! responses from APNs" (developer.apple.com), and the MDM protocol's push section.

use drover_sdk::transport::Guest;
use drover_sdk::transport::drover::plugin::transport_types::{
    ProviderOutcome, ProviderRequest, PushMessage, TransportInfo,
};
use drover_sdk::transport::drover::plugin::types::{Header, HttpMethod, PluginError};
use serde_json::{Value, json};

pub struct Apns;

pub struct Settings {
    pub environment: Option<String>,
    pub topic: Option<String>,
    pub auth_token: Option<String>,
}

pub const PRODUCTION: &str = "api.push.apple.com";
pub const SANDBOX: &str = "api.sandbox.push.apple.com";

impl Guest for Apns {
    fn describe() -> TransportInfo {
        TransportInfo {
            name: "apns".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Apple Push Notification service: MDM wake-ups".into(),
            hosts: vec![PRODUCTION.into(), SANDBOX.into()],
        }
    }

    fn build_request(message: PushMessage) -> Result<ProviderRequest, PluginError> {
        use drover_sdk::transport::drover::plugin::config::get;
        build(
            &message,
            &Settings { environment: get("environment"), topic: get("topic"), auth_token: get("auth_token") },
        )
    }

    fn classify(status: u16, headers: Vec<Header>, body: Vec<u8>) -> ProviderOutcome {
        classify(status, &headers, &body)
    }
}

fn extra<'a>(message: &'a PushMessage, key: &str) -> Option<&'a str> {
    message.token.extra.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
}

/// The device token as APNs wants it in the path: hex. TokenUpdate carries it as base64
/// of the raw bytes; a token already in hex is taken as it is.
pub fn token_hex(token: &str) -> Result<String, String> {
    let t = token.trim();
    if !t.is_empty() && t.len().is_multiple_of(2) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(t.to_ascii_lowercase());
    }
    let raw = base64_decode(t).ok_or_else(|| format!("device token `{t}` is neither hex nor base64"))?;
    if raw.is_empty() {
        return Err("device token is empty".into());
    }
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Standard base64 with optional padding (the plist `<data>` form, whitespace allowed).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT.decode(compact).ok()
}

pub fn build(message: &PushMessage, settings: &Settings) -> Result<ProviderRequest, PluginError> {
    let host = match settings.environment.as_deref().unwrap_or("production") {
        "production" | "" => PRODUCTION,
        "sandbox" | "development" => SANDBOX,
        other => {
            return Err(PluginError::invalid(format!(
                "plugin setting `environment` is `{other}`: use production or sandbox"
            )));
        }
    };
    let magic = extra(message, "PushMagic")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| PluginError::invalid("the device's push token has no PushMagic (from its TokenUpdate)"))?;
    let topic = extra(message, "Topic").or(settings.topic.as_deref()).filter(|t| !t.is_empty()).ok_or_else(|| {
        PluginError::invalid("no APNs topic: the token has no Topic and plugin setting `topic` is not set")
    })?;
    let token = token_hex(&message.token.token).map_err(PluginError::invalid)?;
    let mut headers = vec![
        ("apns-push-type".to_string(), "mdm".to_string()),
        ("apns-topic".into(), topic.to_string()),
        ("apns-priority".into(), "10".into()),
        ("content-type".into(), "application/json".into()),
    ];
    if let Some(jwt) = settings.auth_token.as_deref().filter(|t| !t.is_empty()) {
        headers.push(("authorization".into(), format!("bearer {jwt}")));
    }
    Ok(ProviderRequest {
        method: HttpMethod::Post,
        url: format!("https://{host}/3/device/{token}"),
        headers,
        body: serde_json::to_vec(&json!({"mdm": magic})).expect("JSON"),
    })
}

pub fn classify(status: u16, headers: &[Header], body: &[u8]) -> ProviderOutcome {
    if status == 200 {
        return ProviderOutcome::Delivered;
    }
    let reason = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_default();
    let why = format!("HTTP {status} {reason}");
    let retry_after =
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")).and_then(|(_, v)| v.trim().parse().ok());
    match (status, reason.as_str()) {
        (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => ProviderOutcome::InvalidToken(why),
        (429, _) | (500..=599, _) => ProviderOutcome::Retry(retry_after),
        // The provider token expired: a refreshed one is set, the host retries meanwhile.
        (403, "ExpiredProviderToken") => ProviderOutcome::Retry(retry_after),
        _ => ProviderOutcome::Failed(why),
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_transport!(Apns);

#[cfg(test)]
mod tests {
    use super::*;
    use drover_sdk::transport::drover::plugin::types::PushToken;

    fn message(token: &str) -> PushMessage {
        PushMessage {
            device_type: "ios".into(),
            device_id: "00008030-001A2D3E0C38802E".into(),
            token: PushToken {
                transport: "apns".into(),
                token: token.into(),
                extra: vec![
                    ("PushMagic".into(), "4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90".into()),
                    ("Topic".into(), "com.apple.mgmt.External.2b6d1f0e".into()),
                ],
            },
            payload: None,
        }
    }

    #[test]
    fn builds_an_mdm_push() {
        // TokenUpdate's <data> form: base64 of the raw 32-byte token.
        let r = build(
            &message("3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs="),
            &Settings { environment: None, topic: None, auth_token: None },
        )
        .unwrap();
        assert_eq!(
            r.url,
            "https://api.push.apple.com/3/device/deadbeef000102030405060708090a0b0c0d0e0f101112131415161718191a1b"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&r.body).unwrap(),
            json!({"mdm": "4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90"})
        );
        assert!(r.headers.contains(&("apns-topic".into(), "com.apple.mgmt.External.2b6d1f0e".into())));
        assert!(r.headers.contains(&("apns-push-type".into(), "mdm".into())));
        let sandbox = Settings { environment: Some("sandbox".into()), topic: None, auth_token: None };
        assert!(
            build(&message("ABCD"), &sandbox)
                .unwrap()
                .url
                .starts_with("https://api.sandbox.push.apple.com/3/device/abcd")
        );
    }

    #[test]
    fn refuses_what_it_cannot_send() {
        let s = Settings { environment: Some("staging".into()), topic: None, auth_token: None };
        assert!(build(&message("ABCD"), &s).unwrap_err().message.contains("environment"));
        let s = Settings { environment: None, topic: None, auth_token: None };
        assert!(build(&message("not a token!"), &s).unwrap_err().message.contains("neither hex nor base64"));
    }

    #[test]
    fn classifies_answers() {
        assert!(matches!(classify(200, &[], b""), ProviderOutcome::Delivered));
        assert!(
            matches!(classify(410, &[], br#"{"reason":"Unregistered","timestamp":1700000000000}"#), ProviderOutcome::InvalidToken(m) if m.contains("Unregistered"))
        );
        assert!(matches!(classify(400, &[], br#"{"reason":"BadDeviceToken"}"#), ProviderOutcome::InvalidToken(_)));
        assert!(matches!(classify(429, &[], br#"{"reason":"TooManyRequests"}"#), ProviderOutcome::Retry(None)));
        assert!(matches!(classify(400, &[], br#"{"reason":"BadTopic"}"#), ProviderOutcome::Failed(_)));
    }
}
