//! Transport `webhook`: wake devices through any HTTP endpoint.
//!
//! For fleets whose wake-up path is not a phone platform's push service: a gateway, a
//! LoRaWAN network server, an SMS shortcode service. Drover POSTs JSON:
//!
//! ```json
//! {"event": "wake-up", "device_type": "esp8266", "device_id": "board-7",
//!  "token": "…", "extra": {"k": "v"}, "payload": null}
//! ```
//!
//! Admin settings: `url` (https or http URL of the endpoint, required) and `secret`
//! (optional; sent as `Authorization: Bearer <secret>` so the endpoint can tell Drover's
//! calls from others). The endpoint answers 2xx when it accepted the wake-up, 410 when
//! it no longer knows the device's token, 429 or 5xx to be retried later.

use drover_sdk::transport::Guest;
use drover_sdk::transport::drover::plugin::transport_types::{
    ProviderOutcome, ProviderRequest, PushMessage, TransportInfo,
};
use drover_sdk::transport::drover::plugin::types::{Header, HttpMethod, PluginError};
use serde_json::{Map, Value, json};

pub struct Webhook;

impl Guest for Webhook {
    fn describe() -> TransportInfo {
        TransportInfo {
            name: "webhook".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Generic webhook: JSON wake-ups to an admin-chosen endpoint".into(),
            hosts: vec!["*".into()],
        }
    }

    fn build_request(message: PushMessage) -> Result<ProviderRequest, PluginError> {
        use drover_sdk::transport::drover::plugin::config::get;
        build(&message, get("url").as_deref(), get("secret").as_deref())
    }

    fn classify(status: u16, headers: Vec<Header>, _body: Vec<u8>) -> ProviderOutcome {
        classify(status, &headers)
    }
}

pub fn build(message: &PushMessage, url: Option<&str>, secret: Option<&str>) -> Result<ProviderRequest, PluginError> {
    let url = url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| PluginError::invalid("plugin setting `url` is not set: set the endpoint to POST wake-ups to"))?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(PluginError::invalid(format!("plugin setting `url` is `{url}`: expected an http(s) URL")));
    }
    let extra: Map<String, Value> =
        message.token.extra.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let body = json!({
        "event": "wake-up",
        "device_type": message.device_type,
        "device_id": message.device_id,
        "token": message.token.token,
        "extra": extra,
        "payload": message.payload.as_deref().map(|p| serde_json::from_str::<Value>(p).unwrap_or(Value::String(p.into()))),
    });
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        headers.push(("authorization".into(), format!("Bearer {s}")));
    }
    Ok(ProviderRequest {
        method: HttpMethod::Post,
        url: url.to_string(),
        headers,
        body: serde_json::to_vec(&body).expect("JSON"),
    })
}

pub fn classify(status: u16, headers: &[Header]) -> ProviderOutcome {
    let retry_after =
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")).and_then(|(_, v)| v.trim().parse().ok());
    match status {
        200..=299 => ProviderOutcome::Delivered,
        410 => ProviderOutcome::InvalidToken(format!("HTTP {status}: the endpoint no longer knows this device")),
        408 | 429 | 500..=599 => ProviderOutcome::Retry(retry_after),
        _ => ProviderOutcome::Failed(format!("HTTP {status}")),
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_transport!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;
    use drover_sdk::transport::drover::plugin::types::PushToken;

    #[test]
    fn builds_json_wake_ups() {
        let m = PushMessage {
            device_type: "esp8266".into(),
            device_id: "board-7".into(),
            token: PushToken {
                transport: "webhook".into(),
                token: "t-1".into(),
                extra: vec![("gw".into(), "lora-3".into())],
            },
            payload: Some("{\"why\":\"firmware\"}".into()),
        };
        let r = build(&m, Some("https://hooks.example.com/wake"), Some("s3")).unwrap();
        assert_eq!(r.url, "https://hooks.example.com/wake");
        assert!(r.headers.contains(&("authorization".into(), "Bearer s3".into())));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["extra"]["gw"], "lora-3");
        assert_eq!(v["payload"]["why"], "firmware");
        assert!(build(&m, None, None).unwrap_err().message.contains("`url`"));
        assert!(build(&m, Some("ftp://x"), None).is_err());
    }

    #[test]
    fn classifies_answers() {
        assert!(matches!(classify(204, &[]), ProviderOutcome::Delivered));
        assert!(matches!(classify(410, &[]), ProviderOutcome::InvalidToken(_)));
        assert!(matches!(classify(503, &[("retry-after".into(), "3".into())]), ProviderOutcome::Retry(Some(3))));
        assert!(matches!(classify(403, &[]), ProviderOutcome::Failed(_)));
    }
}
