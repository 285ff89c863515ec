//! The Guest implementation called natively, on the real fixtures. The same calls through
//! the compiled component are tested in the host (`host/tests/android.rs`).

use super::*;
use drover_sdk::device_type::drover::plugin::types::{ErrorCode, HttpRequest, MqttMessage};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn device() -> Device {
    Device { id: "354956090214718".into(), metadata: vec![], session: vec![] }
}

fn put(path: &str) -> Channel {
    Channel::Http(HttpRequest {
        method: HttpMethod::Put,
        path: path.into(),
        query: String::new(),
        content_type: Some(JSON.into()),
        headers: vec![],
    })
}

#[test]
fn enrolls_the_agent_request() {
    let e = Android::enroll(
        Channel::Http(HttpRequest {
            method: HttpMethod::Post,
            path: "enroll".into(),
            query: String::new(),
            content_type: None,
            headers: vec![],
        }),
        fixture("enroll.json"),
    )
    .unwrap();
    assert_eq!(e.device_id, "354956090214718");
    assert_eq!(e.ownership, Ownership::Byod);
    assert_eq!(e.owner.as_deref(), Some("nadia"));
    assert!(e.metadata.contains(&("DEVICE_MODEL".into(), "Pixel 7".into())));
}

#[test]
fn enrollment_names_the_bad_field() {
    let chan = || put("enroll");
    let body = String::from_utf8(fixture("enroll.json")).unwrap();
    let err = Android::enroll(
        Channel::Http(HttpRequest {
            method: HttpMethod::Post,
            path: "enroll".into(),
            query: String::new(),
            content_type: None,
            headers: vec![],
        }),
        body.replace("BYOD", "PERSONAL").into_bytes(),
    )
    .unwrap_err();
    assert!(err.message.contains("ownership") && err.message.contains("PERSONAL"), "{}", err.message);
    let err = Android::enroll(
        Channel::Http(HttpRequest {
            method: HttpMethod::Post,
            path: "enroll".into(),
            query: String::new(),
            content_type: None,
            headers: vec![],
        }),
        body.replace(r#""value": "14""#, r#""value": "fourteen""#).into_bytes(),
    )
    .unwrap_err();
    assert!(err.message.contains("OS_VERSION"), "{}", err.message);
    let err = Android::enroll(chan(), body.clone().into_bytes()).unwrap_err();
    assert!(err.message.contains("POST"));
    let err = Android::enroll(
        Channel::Http(HttpRequest {
            method: HttpMethod::Post,
            path: "enroll".into(),
            query: String::new(),
            content_type: None,
            headers: vec![],
        }),
        b"{\"deviceIdentifier\": 5".to_vec(),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::Malformed);
}

#[test]
fn decodes_results_of_a_poll() {
    let m =
        Android::decode(device(), put("devices/354956090214718/pending-operations"), fixture("results.json")).unwrap();
    assert_eq!(m.results.len(), 4);
    assert_eq!(m.results[0].operation_id, 101);
    assert_eq!(m.results[0].status, ResultStatus::Completed);
    // The JSON-in-a-string response is passed through as JSON.
    let info: Value = serde_json::from_str(m.results[0].response.as_deref().unwrap()).unwrap();
    assert_eq!(info[2]["value"], "87");
    assert_eq!(m.results[2].status, ResultStatus::Error);
    assert_eq!(m.results[2].response.as_deref(), Some("\"Notification permission denied by user\""));
    assert_eq!(m.results[3].status, ResultStatus::InProgress);
    assert_eq!(m.results[3].response, None);
    assert!(matches!(m.reply, Reply::PendingOperations));
}

#[test]
fn first_poll_has_no_results() {
    for body in [&b""[..], b"null", b"[]", b"  \n"] {
        let m = Android::decode(device(), put("pending-operations"), body.to_vec()).unwrap();
        assert!(m.results.is_empty());
    }
}

#[test]
fn malformed_results_name_the_problem() {
    let err = Android::decode(
        device(),
        put("pending-operations"),
        b"[{\"id\":1,\"code\":\"X\",\"status\":\"DONE\"}]".to_vec(),
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::Malformed);
    assert!(err.message.contains("result 0") && err.message.contains("DONE"), "{}", err.message);
    let err = Android::decode(device(), put("pending-operations"), b"{\"id\":1}".to_vec()).unwrap_err();
    assert!(err.message.contains("JSON array"), "{}", err.message);
}

#[test]
fn a_device_cannot_report_for_another() {
    let err = Android::decode(device(), put("devices/other/pending-operations"), b"[]".to_vec()).unwrap_err();
    assert!(err.message.contains("other"), "{}", err.message);
}

#[test]
fn encodes_pending_operations_as_the_agent_reads_them() {
    let ops = vec![
        Operation {
            id: 105,
            code: "DEVICE_LOCK".into(),
            kind: OperationKind::Command,
            payload: Some(r#"{"message":"This device is locked by IT","hardLockEnabled":false}"#.into()),
        },
        Operation {
            id: 106,
            code: "CAMERA".into(),
            kind: OperationKind::Profile,
            payload: Some(r#"{"enabled":false}"#.into()),
        },
        Operation { id: 107, code: "DEVICE_RING".into(), kind: OperationKind::Command, payload: None },
    ];
    let e = Android::encode(device(), ops, ChannelKind::Http).unwrap();
    assert_eq!(e.delivered, vec![105, 106, 107]);
    let Outbound::Http(resp) = e.output else { panic!("expected HTTP") };
    assert_eq!(resp.status, 200);
    let got: Value = serde_json::from_slice(&resp.body).unwrap();
    let want: Value = serde_json::from_slice(&fixture("pending.json")).unwrap();
    assert_eq!(got, want);
}

#[test]
fn encodes_nothing_left_as_an_empty_array() {
    let e = Android::encode(device(), vec![], ChannelKind::Mqtt).unwrap();
    let Outbound::Mqtt(p) = e.output else { panic!("expected MQTT") };
    assert_eq!(p[0].topic_suffix, "operations");
    assert_eq!(p[0].payload, b"[]");
}

#[test]
fn decodes_info_and_telemetry() {
    let m = Android::decode(device(), put("devices/354956090214718/info"), fixture("info.json")).unwrap();
    assert!(m.info.contains(&("BATTERY_LEVEL".into(), "64".into())));
    let m = Android::decode(
        device(),
        Channel::Mqtt(MqttMessage { topic_suffix: "telemetry".into() }),
        fixture("telemetry.json"),
    )
    .unwrap();
    let names: Vec<&str> = m.telemetry.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"battery") && names.contains(&"location.lat"), "{names:?}");
    assert!(m.telemetry.iter().all(|t| t.timestamp_ms == Some(1763790000000)));
    assert!(matches!(m.reply, Reply::None));
}

#[test]
fn describe_lists_the_required_codes() {
    let d = Android::describe();
    for code in [
        "DEVICE_INFO",
        "DEVICE_LOCATION",
        "DEVICE_LOCK",
        "DEVICE_RING",
        "REBOOT",
        "WIPE_DATA",
        "NOTIFICATION",
        "CAMERA",
        "WIFI",
        "INSTALL_APPLICATION",
        "POLICY_BUNDLE",
    ] {
        assert!(d.operations.iter().any(|o| o.code == code), "{code} missing");
    }
}

#[test]
fn fcm_token_is_a_push_token_not_metadata() {
    let body = String::from_utf8(fixture("enroll.json"))
        .unwrap()
        .replace(r#""properties": ["#, r#""properties": [{"name": "FCM_TOKEN", "value": "dK3x:APA91bH"},"#);
    assert!(body.contains("FCM_TOKEN"), "the fixture's property list moved");
    let e = Android::enroll(
        Channel::Http(HttpRequest {
            method: HttpMethod::Post,
            path: "enroll".into(),
            query: String::new(),
            content_type: Some(JSON.into()),
            headers: vec![],
        }),
        body.into_bytes(),
    )
    .unwrap();
    let push = e.push.expect("push token");
    assert_eq!((push.transport.as_str(), push.token.as_str()), ("fcm", "dK3x:APA91bH"));
    assert!(!e.metadata.iter().any(|(k, _)| k == FCM_TOKEN));

    let m = Android::decode(
        device(),
        put("devices/354956090214718/info"),
        br#"{"properties": [{"name": "FCM_TOKEN", "value": "new-token"}, {"name": "BATTERY_LEVEL", "value": "80"}]}"#
            .to_vec(),
    )
    .unwrap();
    assert!(matches!(m.check_in, Some(CheckIn::TokenUpdate(ref t)) if t.token == "new-token"));
    assert_eq!(m.info, vec![("BATTERY_LEVEL".to_string(), "80".to_string())]);
}

#[test]
fn policy_monitor_answer_becomes_the_standard_compliance_record() {
    let m = Android::decode(device(), put("pending-operations"), fixture("policy-monitor.json")).unwrap();
    assert_eq!(m.results.len(), 2);
    assert_eq!(m.results[0].response, None, "a bundle's plain answer is passed as it is");
    let record: Value = serde_json::from_str(m.results[1].response.as_deref().unwrap()).unwrap();
    assert_eq!(
        record,
        serde_json::json!({"compliance": [
            {"feature": "CAMERA", "compliant": false, "reason": "Camera is enabled"},
            {"feature": "PASSCODE_POLICY", "compliant": true}
        ]})
    );
    // The list as an array (not JSON text) reads the same.
    let body = br#"[{"id": 9, "code": "POLICY_MONITOR", "status": "COMPLETED",
        "payLoad": [{"featureCode": "WIFI", "compliance": true}]}]"#;
    let m = Android::decode(device(), put("pending-operations"), body.to_vec()).unwrap();
    assert!(m.results[0].response.as_deref().unwrap().contains(r#""feature":"WIFI""#));
}

#[test]
fn a_policy_monitor_answer_that_does_not_read_refuses_the_report() {
    for payload in [r#""not json""#, r#""[{\"code\":\"CAMERA\"}]""#, "null"] {
        let body = format!(r#"[{{"id": 9, "code": "POLICY_MONITOR", "status": "COMPLETED", "payLoad": {payload}}}]"#);
        let err = Android::decode(device(), put("pending-operations"), body.into_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::Malformed, "{payload}");
        assert!(err.message.contains("POLICY_MONITOR"), "{}", err.message);
    }
}
