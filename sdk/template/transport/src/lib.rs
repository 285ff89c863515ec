//! {{name}}: a Drover transport. Given a device's push token, build the provider request
//! that wakes it; given the provider's answer, say what it means. The host sends the
//! request (only to hosts the manifest declares and an admin granted) and retries.

use drover_sdk::transport::Guest;
use drover_sdk::transport::drover::plugin::transport_types::{
    ProviderOutcome, ProviderRequest, PushMessage, TransportInfo,
};
use drover_sdk::transport::drover::plugin::types::{Header, HttpMethod, PluginError};

pub struct Plugin;

impl Guest for Plugin {
    fn describe() -> TransportInfo {
        TransportInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Wake devices through your provider".into(),
            hosts: vec!["push.example.com".into()],
        }
    }

    fn build_request(message: PushMessage) -> Result<ProviderRequest, PluginError> {
        use drover_sdk::transport::drover::plugin::config::get;
        build(&message, get("api_key").as_deref())
    }

    fn classify(status: u16, headers: Vec<Header>, _body: Vec<u8>) -> ProviderOutcome {
        classify(status, &headers)
    }
}

/// The request, from the message and the admin's `api_key` setting. Kept apart from the
/// `Guest` impl so native tests can call it without a host.
pub fn build(message: &PushMessage, api_key: Option<&str>) -> Result<ProviderRequest, PluginError> {
    let key = api_key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| PluginError::invalid("plugin setting `api_key` is not set"))?;
    let body = serde_json::json!({"to": message.token.token, "device": message.device_id, "data": message.payload});
    Ok(ProviderRequest {
        method: HttpMethod::Post,
        url: "https://push.example.com/v1/wake".into(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), format!("Bearer {key}")),
        ],
        body: serde_json::to_vec(&body).unwrap_or_default(),
    })
}

pub fn classify(status: u16, headers: &[Header]) -> ProviderOutcome {
    let retry_after =
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")).and_then(|(_, v)| v.trim().parse().ok());
    match status {
        200..=299 => ProviderOutcome::Delivered,
        404 | 410 => ProviderOutcome::InvalidToken(format!("HTTP {status}: the provider does not know this token")),
        408 | 429 | 500..=599 => ProviderOutcome::Retry(retry_after),
        _ => ProviderOutcome::Failed(format!("HTTP {status}")),
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_transport!(Plugin);

// Native tests: `cargo test` runs the plugin's logic on your machine, no server needed.
#[cfg(test)]
mod tests {
    use super::*;
    use drover_sdk::transport::drover::plugin::types::PushToken;

    fn message() -> PushMessage {
        PushMessage {
            device_type: "acme".into(),
            device_id: "unit-1".into(),
            token: PushToken { transport: "{{name}}".into(), token: "tok-1".into(), extra: vec![] },
            payload: None,
        }
    }

    #[test]
    fn builds_the_provider_request() {
        let r = build(&message(), Some("k")).unwrap();
        assert_eq!(r.url, "https://push.example.com/v1/wake");
        assert!(r.headers.contains(&("authorization".to_string(), "Bearer k".to_string())));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["to"], "tok-1");
        assert!(build(&message(), None).is_err());
    }

    #[test]
    fn classifies_answers() {
        assert!(matches!(classify(200, &[]), ProviderOutcome::Delivered));
        assert!(matches!(classify(410, &[]), ProviderOutcome::InvalidToken(_)));
        assert!(matches!(classify(429, &[("Retry-After".into(), "30".into())]), ProviderOutcome::Retry(Some(30))));
        assert!(matches!(classify(400, &[]), ProviderOutcome::Failed(_)));
    }
}
