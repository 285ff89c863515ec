//! Transport `fcm`: Firebase Cloud Messaging, HTTP v1 API.
//!
//! A wake-up is a high-priority *data* message (no notification is shown; the agent's
//! messaging service receives it and calls in). Admin settings (plugin config):
//! `project_id` (the Firebase project) and `access_token` (an OAuth 2.0 token for the
//! `firebase.messaging` scope). The host keeps `access_token` fresh when an admin gives it
//! the project's service account key (`oauth` in the plugin settings, host/src/oauth.rs);
//! otherwise it is whatever an admin or a sidecar last set.
//!
//! Reference: <https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send>
//! and the error codes at
//! <https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode>.

use drover_sdk::transport::Guest;
use drover_sdk::transport::drover::plugin::transport_types::{
    ProviderOutcome, ProviderRequest, PushMessage, TransportInfo,
};
use drover_sdk::transport::drover::plugin::types::{Header, HttpMethod, PluginError};
use serde_json::{Value, json};

pub struct Fcm;

/// What an admin configured.
pub struct Settings {
    pub project_id: Option<String>,
    pub access_token: Option<String>,
}

pub const HOST: &str = "fcm.googleapis.com";

impl Guest for Fcm {
    fn describe() -> TransportInfo {
        TransportInfo {
            name: "fcm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Firebase Cloud Messaging (HTTP v1): high-priority data messages".into(),
            hosts: vec![HOST.into()],
        }
    }

    fn build_request(message: PushMessage) -> Result<ProviderRequest, PluginError> {
        use drover_sdk::transport::drover::plugin::config::get;
        build(&message, &Settings { project_id: get("project_id"), access_token: get("access_token") })
    }

    fn classify(status: u16, headers: Vec<Header>, body: Vec<u8>) -> ProviderOutcome {
        classify(status, &headers, &body)
    }
}

/// The `messages:send` request for one device.
pub fn build(message: &PushMessage, settings: &Settings) -> Result<ProviderRequest, PluginError> {
    let project = settings.project_id.as_deref().filter(|p| !p.is_empty()).ok_or_else(|| {
        PluginError::invalid("plugin setting `project_id` is not set: set it to the Firebase project id")
    })?;
    if !project.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(PluginError::invalid(format!("plugin setting `project_id` is `{project}`: not a project id")));
    }
    let token = settings.access_token.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
        PluginError::invalid("plugin setting `access_token` is not set: set an OAuth 2.0 token for firebase.messaging")
    })?;
    if message.token.token.is_empty() {
        return Err(PluginError::invalid("the device has an empty FCM registration token"));
    }
    // FCM data values must be strings.
    let mut data = json!({
        "drover": "wake-up",
        "device_type": message.device_type,
        "device_id": message.device_id,
    });
    if let Some(p) = &message.payload {
        data["payload"] = Value::String(p.clone());
    }
    let body = json!({
        "message": {
            "token": message.token.token,
            "data": data,
            // High priority: delivered at once, even in Doze, which is what a wake-up is for.
            "android": {"priority": "high"},
        }
    });
    Ok(ProviderRequest {
        method: HttpMethod::Post,
        url: format!("https://{HOST}/v1/projects/{project}/messages:send"),
        headers: vec![
            ("authorization".into(), format!("Bearer {token}")),
            ("content-type".into(), "application/json; charset=utf-8".into()),
        ],
        body: serde_json::to_vec(&body).expect("JSON"),
    })
}

/// FCM answers errors as `{"error": {"code", "message", "status", "details": [{"errorCode"}]}}`.
fn error_code(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    let code = e["details"]
        .as_array()
        .and_then(|d| d.iter().find_map(|d| d["errorCode"].as_str()))
        .or_else(|| e["status"].as_str())
        .unwrap_or("")
        .to_string();
    (code, e["message"].as_str().unwrap_or("").to_string())
}

pub fn retry_after(headers: &[Header]) -> Option<u32> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")).and_then(|(_, v)| v.trim().parse().ok())
}

pub fn classify(status: u16, headers: &[Header], body: &[u8]) -> ProviderOutcome {
    if (200..300).contains(&status) {
        return ProviderOutcome::Delivered;
    }
    let (code, message) = error_code(body);
    let why =
        if message.is_empty() { format!("HTTP {status} {code}") } else { format!("HTTP {status} {code}: {message}") };
    match (status, code.as_str()) {
        (404, _) | (_, "UNREGISTERED") => ProviderOutcome::InvalidToken(why),
        // A malformed or foreign token; other INVALID_ARGUMENTs are our request's fault.
        (400, "INVALID_ARGUMENT") if message.to_ascii_lowercase().contains("token") => {
            ProviderOutcome::InvalidToken(why)
        }
        (403, "SENDER_ID_MISMATCH") => ProviderOutcome::InvalidToken(why),
        (429, _) | (500..=599, _) => ProviderOutcome::Retry(retry_after(headers)),
        // 401: the access token expired; an admin (or its refresher) sets a new one, and
        // the host's backoff retries meanwhile.
        (401, _) => ProviderOutcome::Retry(retry_after(headers)),
        _ => ProviderOutcome::Failed(why),
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_transport!(Fcm);

#[cfg(test)]
mod tests {
    use super::*;
    use drover_sdk::transport::drover::plugin::types::PushToken;

    fn message() -> PushMessage {
        PushMessage {
            device_type: "android".into(),
            device_id: "354956090214718".into(),
            token: PushToken { transport: "fcm".into(), token: "dK3x:APA91b".into(), extra: vec![] },
            payload: None,
        }
    }

    fn settings() -> Settings {
        Settings { project_id: Some("drover-test".into()), access_token: Some("ya29.tok".into()) }
    }

    #[test]
    fn builds_the_v1_request() {
        let r = build(&message(), &settings()).unwrap();
        assert_eq!(r.url, "https://fcm.googleapis.com/v1/projects/drover-test/messages:send");
        assert!(r.headers.contains(&("authorization".into(), "Bearer ya29.tok".into())));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["message"]["token"], "dK3x:APA91b");
        assert_eq!(body["message"]["android"]["priority"], "high");
        assert_eq!(body["message"]["data"]["device_id"], "354956090214718");
    }

    #[test]
    fn names_missing_settings() {
        let e = build(&message(), &Settings { project_id: None, access_token: Some("t".into()) }).unwrap_err();
        assert!(e.message.contains("project_id"));
        let e = build(&message(), &Settings { project_id: Some("p".into()), access_token: None }).unwrap_err();
        assert!(e.message.contains("access_token"));
    }

    #[test]
    fn classifies_answers() {
        assert!(matches!(classify(200, &[], b"{\"name\":\"projects/p/messages/1\"}"), ProviderOutcome::Delivered));
        let unregistered = br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert!(
            matches!(classify(404, &[], unregistered), ProviderOutcome::InvalidToken(m) if m.contains("UNREGISTERED"))
        );
        let busy = [("Retry-After".to_string(), "7".to_string())];
        assert!(matches!(classify(503, &busy, b""), ProviderOutcome::Retry(Some(7))));
        assert!(matches!(classify(500, &[], b"oops"), ProviderOutcome::Retry(None)));
        assert!(matches!(
            classify(400, &[], br#"{"error":{"status":"INVALID_ARGUMENT","message":"bad payload"}}"#),
            ProviderOutcome::Failed(_)
        ));
    }
}
