//! Transport `wns`: Windows Push Notification Services.
//!
//! The device's push token is its channel URI (`https://{region}.notify.windows.com/?token=…`),
//! which the Windows MDM client reports over OMA-DM. A wake-up is a *raw* notification
//! POSTed to that URI; the client starts a DM session. Admin setting: `access_token`,
//! the bearer token WNS issues for the app's package SID and secret.
//!
//! Reference: "Push notification service request and response headers" (learn.microsoft.com,
//! Windows App Development).

use drover_sdk::transport::Guest;
use drover_sdk::transport::drover::plugin::transport_types::{
    ProviderOutcome, ProviderRequest, PushMessage, TransportInfo,
};
use drover_sdk::transport::drover::plugin::types::{Header, HttpMethod, PluginError};

pub struct Wns;

pub const HOSTS: &str = "*.notify.windows.com";

impl Guest for Wns {
    fn describe() -> TransportInfo {
        TransportInfo {
            name: "wns".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Windows Push Notification Services: raw notifications".into(),
            hosts: vec![HOSTS.into()],
        }
    }

    fn build_request(message: PushMessage) -> Result<ProviderRequest, PluginError> {
        build(&message, drover_sdk::transport::drover::plugin::config::get("access_token").as_deref())
    }

    fn classify(status: u16, headers: Vec<Header>, _body: Vec<u8>) -> ProviderOutcome {
        classify(status, &headers)
    }
}

/// The channel URI's host, if it is an https URI of WNS.
fn channel_host(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("https://")?;
    let host = rest.split(['/', '?', ':']).next()?;
    (host.ends_with(".notify.windows.com") && host.len() > ".notify.windows.com".len()).then_some(host)
}

pub fn build(message: &PushMessage, access_token: Option<&str>) -> Result<ProviderRequest, PluginError> {
    let uri = message.token.token.trim();
    if channel_host(uri).is_none() {
        return Err(PluginError::invalid(format!("channel URI `{uri}` is not an https URI on notify.windows.com")));
    }
    let token = access_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        PluginError::invalid("plugin setting `access_token` is not set: set the WNS access token of the package SID")
    })?;
    let body = message.payload.clone().unwrap_or_else(|| "wake-up".into()).into_bytes();
    Ok(ProviderRequest {
        method: HttpMethod::Post,
        url: uri.to_string(),
        headers: vec![
            ("authorization".into(), format!("Bearer {token}")),
            ("content-type".into(), "application/octet-stream".into()),
            ("x-wns-type".into(), "wns/raw".into()),
            // Wake-ups are only worth delivering now: a cached one would start a session later
            // for operations that may be gone by then.
            ("x-wns-cache-policy".into(), "no-cache".into()),
            ("x-wns-requestforstatus".into(), "true".into()),
        ],
        body,
    })
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

pub fn classify(status: u16, headers: &[Header]) -> ProviderOutcome {
    let why = match header(headers, "x-wns-error-description") {
        Some(d) => format!("HTTP {status}: {d}"),
        None => format!("HTTP {status}"),
    };
    let retry_after = header(headers, "retry-after").and_then(|v| v.trim().parse().ok());
    match status {
        200 => match header(headers, "x-wns-status") {
            // `channelthrottled`: WNS accepted the request but will not deliver it now.
            Some(s) if s.eq_ignore_ascii_case("channelthrottled") => ProviderOutcome::Retry(retry_after),
            _ => ProviderOutcome::Delivered,
        },
        // The channel URI is unknown or expired: the device must report a new one.
        404 | 410 => ProviderOutcome::InvalidToken(why),
        // 401: the access token expired; 406: throttled.
        401 | 406 | 429 | 500..=599 => ProviderOutcome::Retry(retry_after),
        _ => ProviderOutcome::Failed(why),
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_transport!(Wns);

#[cfg(test)]
mod tests {
    use super::*;
    use drover_sdk::transport::drover::plugin::types::PushToken;

    fn message(uri: &str) -> PushMessage {
        PushMessage {
            device_type: "windows".into(),
            device_id: "8A3F1C2E".into(),
            token: PushToken { transport: "wns".into(), token: uri.into(), extra: vec![] },
            payload: None,
        }
    }

    #[test]
    fn builds_a_raw_push() {
        let uri = "https://db5p.notify.windows.com/?token=AwYAAABvX2";
        let r = build(&message(uri), Some("EgAaAQMAAAAEgAAAC")).unwrap();
        assert_eq!(r.url, uri);
        assert!(r.headers.contains(&("x-wns-type".into(), "wns/raw".into())));
        assert!(r.headers.contains(&("authorization".into(), "Bearer EgAaAQMAAAAEgAAAC".into())));
        assert_eq!(r.body, b"wake-up");
    }

    #[test]
    fn refuses_foreign_uris_and_missing_settings() {
        assert!(build(&message("https://evil.example/?x=notify.windows.com"), Some("t")).is_err());
        assert!(build(&message("http://db5p.notify.windows.com/?token=x"), Some("t")).is_err());
        let e = build(&message("https://db5p.notify.windows.com/?token=x"), None).unwrap_err();
        assert!(e.message.contains("access_token"));
    }

    #[test]
    fn classifies_answers() {
        assert!(matches!(classify(200, &[("X-WNS-Status".into(), "received".into())]), ProviderOutcome::Delivered));
        assert!(matches!(
            classify(200, &[("X-WNS-Status".into(), "channelthrottled".into())]),
            ProviderOutcome::Retry(None)
        ));
        assert!(matches!(classify(410, &[]), ProviderOutcome::InvalidToken(_)));
        assert!(matches!(classify(406, &[("Retry-After".into(), "60".into())]), ProviderOutcome::Retry(Some(60))));
        assert!(matches!(classify(400, &[]), ProviderOutcome::Failed(_)));
    }
}
