//! The codec natively, against the recorded messages in `fixtures/`.

use super::*;
use drover_sdk::device_type::drover::plugin::types::{ErrorCode, HttpMethod, HttpRequest};

const UDID: &str = "00008120-001A2D3E0C38802E";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn device() -> Device {
    Device { id: UDID.into(), metadata: vec![], session: vec![] }
}

fn http(path: &str) -> Channel {
    Channel::Http(HttpRequest {
        method: HttpMethod::Put,
        path: path.into(),
        query: String::new(),
        content_type: Some(wire::REPORT_CONTENT_TYPE.into()),
        headers: vec![],
    })
}

fn decoded(name: &str) -> DeviceMessage {
    Ios::decode(device(), http("server"), fixture(name)).unwrap()
}

fn refused(name: &str) -> PluginError {
    Ios::decode(device(), http("server"), fixture(name)).unwrap_err()
}

#[test]
fn authenticate_enrolls_the_device_by_udid() {
    let e = Ios::enroll(http("enroll"), fixture("authenticate.plist")).unwrap();
    assert_eq!(e.device_id, UDID);
    assert_eq!(e.name.as_deref(), Some("Nadia's iPhone"));
    assert_eq!(e.ownership, Ownership::Cope);
    let get = |k: &str| e.metadata.iter().find(|(mk, _)| mk == k).map(|(_, v)| v.as_str());
    assert_eq!(get("OSVersion"), Some("17.4.1"));
    assert_eq!(get("SerialNumber"), Some("F2LXK0QJPLJM"));
    assert_eq!(get("Topic"), Some("com.apple.mgmt.External.2b6d1f0e-8c3a-4b9e-a5d7-3f1e2c4b6a80"));
    assert_eq!(get("MessageType"), None, "envelope keys are not metadata");
    // Only Authenticate enrolls.
    let e = Ios::enroll(http("enroll"), fixture("token-update.plist")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
}

#[test]
fn token_update_gives_the_apns_token_in_hex_with_push_magic() {
    let m = decoded("token-update.plist");
    let Some(CheckIn::TokenUpdate(t)) = m.check_in else { panic!("{:?}", m.check_in) };
    assert_eq!(t.transport, "apns");
    assert_eq!(t.token, "deadbeef000102030405060708090a0b0c0d0e0f101112131415161718191a1b");
    assert!(t.extra.contains(&("PushMagic".into(), "4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90".into())));
    assert!(matches!(m.reply, Reply::Immediate(Outbound::Http(HttpResponse { status: 200, .. }))));
}

#[test]
fn reports_map_to_results() {
    assert!(decoded("idle.plist").results.is_empty());
    assert!(matches!(decoded("idle.plist").reply, Reply::PendingOperations));

    let m = decoded("ack-device-information.plist");
    assert_eq!(m.results.len(), 1);
    assert_eq!(m.results[0].operation_id, 105);
    assert_eq!(m.results[0].status, ResultStatus::Completed);
    let response: serde_json::Value = serde_json::from_str(m.results[0].response.as_deref().unwrap()).unwrap();
    assert_eq!(response["QueryResponses"]["OSVersion"], "17.4.1");
    assert_eq!(response.get("UDID"), None, "the envelope is not the response");
    assert!(m.info.contains(&("IsSupervised".into(), "true".into())));
    assert_eq!(m.telemetry.len(), 2);
    assert!(matches!(m.telemetry[0].value, TelemetryValue::Number(n) if n == 64.0));

    let m = decoded("error.plist");
    assert_eq!((m.results[0].operation_id, m.results[0].status), (107, ResultStatus::Error));
    let response: serde_json::Value = serde_json::from_str(m.results[0].response.as_deref().unwrap()).unwrap();
    assert_eq!(response["ErrorChain"][1]["ErrorCode"], 2003);

    let m = decoded("notnow.plist");
    assert_eq!((m.results[0].operation_id, m.results[0].status), (108, ResultStatus::NotNow));
    let m = decoded("format-error.plist");
    assert_eq!((m.results[0].operation_id, m.results[0].status), (109, ResultStatus::Error));
}

#[test]
fn malformed_messages_are_refused_naming_the_problem() {
    let e = refused("truncated.plist");
    assert_eq!(e.code, ErrorCode::Malformed);
    assert!(e.message.contains("not a property list"), "{}", e.message);
    let e = refused("unknown-status.plist");
    assert!(e.message.contains("`Status` is `Done`"), "{}", e.message);
    let e = refused("array.plist");
    assert!(e.message.contains("an array, not a dictionary"), "{}", e.message);
    let e = Ios::decode(device(), http("server"), b"{\"Status\": \"Idle\"}".to_vec()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Malformed);
}

#[test]
fn a_device_reports_only_as_itself() {
    let other = Device { id: "00008030-000A1B2C3D4E5F60".into(), metadata: vec![], session: vec![] };
    let e = Ios::decode(other, http("server"), fixture("idle.plist")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    assert!(e.message.contains(UDID), "{}", e.message);
}

#[test]
fn command_uuids_carry_the_operation_id() {
    for id in [0, 1, 105, 0xFFFF_FFFF_FFFF] {
        assert_eq!(wire::operation_id(&wire::command_uuid(id)), Some(id));
    }
    assert_eq!(wire::operation_id(&wire::command_uuid(105).to_lowercase()), Some(105));
    assert_eq!(wire::operation_id("0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"), None);
}

fn op(id: u64, code: &str, payload: Option<&str>) -> Operation {
    let kind = match wire::lookup(code).map(|c| c.kind) {
        Some(wire::Kind::Profile) => OperationKind::Profile,
        Some(wire::Kind::Policy) => OperationKind::Policy,
        _ => OperationKind::Command,
    };
    Operation { id, code: code.into(), kind, payload: payload.map(str::to_string) }
}

fn encoded_command(o: Operation) -> plist::Dictionary {
    let e = Ios::encode(device(), vec![o.clone(), op(o.id + 1, "ProfileList", None)], ChannelKind::Http).unwrap();
    assert_eq!(e.delivered, vec![o.id], "one command per answer");
    let Outbound::Http(r) = e.output else { panic!() };
    assert_eq!(r.content_type.as_deref(), Some("application/xml"));
    wire::parse_dict(&r.body).unwrap()
}

#[test]
fn commands_are_plists_with_request_type_and_uuid() {
    let d =
        encoded_command(op(105, "DeviceLock", Some(r#"{"Message":"Return to IT","PhoneNumber":"+94 11 555 0100"}"#)));
    assert_eq!(d["CommandUUID"].as_string(), Some(wire::command_uuid(105).as_str()));
    let c = d["Command"].as_dictionary().unwrap();
    assert_eq!(c["RequestType"].as_string(), Some("DeviceLock"));
    assert_eq!(c["Message"].as_string(), Some("Return to IT"));

    let d = encoded_command(op(7, "DeviceInformation", Some(r#"{"Queries":["OSVersion","BatteryLevel"]}"#)));
    let q = d["Command"].as_dictionary().unwrap()["Queries"].as_array().unwrap();
    assert_eq!(q.len(), 2);

    // Nothing queued: the empty answer that ends the exchange.
    let e = Ios::encode(device(), vec![], ChannelKind::Http).unwrap();
    assert!(e.delivered.is_empty());
    assert!(matches!(e.output, Outbound::Http(HttpResponse { status: 200, ref body, .. }) if body.is_empty()));
}

#[test]
fn install_profile_carries_the_profile_as_data() {
    let profile = wire::to_xml({
        let mut p = plist::Dictionary::new();
        p.insert("PayloadType".into(), "Configuration".into());
        p.insert("PayloadIdentifier".into(), "com.example.wifi".into());
        p.insert("PayloadContent".into(), plist::Value::Array(vec![]));
        p
    });
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&profile);
    let payload = serde_json::json!({"Payload": b64}).to_string();
    let d = encoded_command(op(3, "InstallProfile", Some(&payload)));
    assert_eq!(d["Command"].as_dictionary().unwrap()["Payload"].as_data(), Some(profile.as_slice()));

    let e = Ios::validate("InstallProfile".into(), Some(r#"{"Payload":"!!!"}"#.into())).unwrap_err();
    assert!(e.message.contains("not base64"), "{}", e.message);
    let not_configuration = base64::engine::general_purpose::STANDARD.encode(wire::to_xml({
        let mut p = plist::Dictionary::new();
        p.insert("PayloadType".into(), "com.apple.wifi.managed".into());
        p
    }));
    let e =
        Ios::validate("InstallProfile".into(), Some(format!(r#"{{"Payload":"{not_configuration}"}}"#))).unwrap_err();
    assert!(e.message.contains("not Configuration"), "{}", e.message);
}

#[test]
fn a_policy_bundle_becomes_one_profile() {
    let policy = r#"{"identifier":"com.example.baseline","name":"Baseline",
        "restrictions":{"allowCamera":false,"allowScreenShot":false},
        "passcode":{"minLength":6,"requireAlphanumeric":true}}"#;
    let d = encoded_command(op(9, "POLICY_BUNDLE", Some(policy)));
    let c = d["Command"].as_dictionary().unwrap();
    assert_eq!(c["RequestType"].as_string(), Some("InstallProfile"));
    let profile = wire::parse_dict(c["Payload"].as_data().unwrap()).unwrap();
    assert_eq!(profile["PayloadIdentifier"].as_string(), Some("com.example.baseline"));
    let content = profile["PayloadContent"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    let restrictions = content[0].as_dictionary().unwrap();
    assert_eq!(restrictions["PayloadType"].as_string(), Some("com.apple.applicationaccess"));
    assert_eq!(restrictions["allowCamera"].as_boolean(), Some(false));
    let passcode = content[1].as_dictionary().unwrap();
    assert_eq!(passcode["minLength"].as_signed_integer(), Some(6));
    // The same policy is the same profile (UUIDs are derived, not random).
    let again = encoded_command(op(10, "POLICY_BUNDLE", Some(policy)));
    assert_eq!(again["Command"].as_dictionary().unwrap()["Payload"], c["Payload"]);
}

#[test]
fn validate_names_what_is_wrong() {
    let e = Ios::validate("Reboot".into(), None).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownOperation);
    let e = Ios::validate("DeviceLock".into(), Some(r#"{"PIN":"12"}"#.into())).unwrap_err();
    assert!(e.message.contains("`PIN` must be 6 digits"), "{}", e.message);
    let e = Ios::validate("RemoveProfile".into(), None).unwrap_err();
    assert!(e.message.contains("`Identifier` is required"), "{}", e.message);
    let e = Ios::validate("ProfileList".into(), Some(r#"{"Managed":true}"#.into())).unwrap_err();
    assert!(e.message.contains("unknown key `Managed`"), "{}", e.message);
    let e = Ios::validate("POLICY_BUNDLE".into(), Some(r#"{"identifier":"x.y"}"#.into())).unwrap_err();
    assert!(e.message.contains("give `restrictions`, `passcode` or both"), "{}", e.message);
    for c in wire::CODES {
        let schema = c.schema();
        if let Some(s) = schema {
            serde_json::from_str::<serde_json::Value>(&s).unwrap();
        }
    }
}

/// Drover's policies send a bundle as a list of profile features: one profile, with one
/// payload per feature, under the policy identifier; a feature alone is a profile too.
#[test]
fn a_policy_feature_list_becomes_one_profile() {
    let list = r#"[{"code":"RESTRICTIONS","payload":{"allowCamera":false}},{"code":"PASSCODE_POLICY","payload":{"minLength":6}}]"#;
    assert!(Ios::validate("POLICY_BUNDLE".into(), Some(list.into())).is_ok());
    let d = encoded_command(op(11, "POLICY_BUNDLE", Some(list)));
    let command = d["Command"].as_dictionary().unwrap();
    assert_eq!(command["RequestType"].as_string(), Some("InstallProfile"));
    let profile = plist::Value::from_reader(std::io::Cursor::new(command["Payload"].as_data().unwrap())).unwrap();
    let profile = profile.as_dictionary().unwrap();
    assert_eq!(profile["PayloadIdentifier"].as_string(), Some("org.drover.policy"));
    let payloads = profile["PayloadContent"].as_array().unwrap();
    assert_eq!(payloads.len(), 2);
    assert_eq!(payloads[0].as_dictionary().unwrap()["allowCamera"].as_boolean(), Some(false));
    assert_eq!(payloads[1].as_dictionary().unwrap()["minLength"].as_signed_integer(), Some(6));
    // A feature alone, as an operation of its own.
    assert!(Ios::validate("RESTRICTIONS".into(), Some(r#"{"allowCamera":false}"#.into())).is_ok());
    // Refused with a message naming the entry.
    let e = Ios::validate("POLICY_BUNDLE".into(), Some(r#"[{"code":"WIFI","payload":{}}]"#.into())).unwrap_err();
    assert!(e.message.contains("entry 0") && e.message.contains("RESTRICTIONS"), "{}", e.message);
    let e = Ios::validate("POLICY_BUNDLE".into(), Some(r#"[{"code":"RESTRICTIONS","payload":{"x":[1]}}]"#.into()))
        .unwrap_err();
    assert!(e.message.contains("restrictions.x"), "{}", e.message);
}

#[test]
fn the_enrollment_profile_asks_scep_for_the_identity_the_mdm_payload_uses() {
    let query = "token=drv_enroll_abc123";
    let answer = crate::profile::answer(
        "https://mdm.example.com/agent/v1/ios",
        query,
        Some("com.apple.mgmt.External.1"),
        Some("Acme"),
    )
    .unwrap();
    assert_eq!(answer.content_type.as_deref(), Some(crate::profile::CONTENT_TYPE));
    let profile = plist::Value::from_reader_xml(&answer.body[..]).unwrap().into_dictionary().unwrap();
    assert_eq!(profile["PayloadType"].as_string(), Some("Configuration"));
    assert_eq!(profile["PayloadOrganization"].as_string(), Some("Acme"));
    let payloads = profile["PayloadContent"].as_array().unwrap();
    let by_type = |t: &str| {
        payloads.iter().map(|p| p.as_dictionary().unwrap()).find(|p| p["PayloadType"].as_string() == Some(t)).unwrap()
    };
    let (scep, mdm) = (by_type("com.apple.security.scep"), by_type("com.apple.mdm"));
    let content = scep["PayloadContent"].as_dictionary().unwrap();
    assert_eq!(content["URL"].as_string(), Some("https://mdm.example.com/agent/v1/ios/scep/pending"));
    assert_eq!(content["Challenge"].as_string(), Some("drv_enroll_abc123"));
    assert_eq!(content["Keysize"].as_signed_integer(), Some(2048));
    assert_eq!(mdm["IdentityCertificateUUID"], scep["PayloadUUID"]);
    assert_eq!(mdm["ServerURL"].as_string(), Some("https://mdm.example.com/agent/v1/ios/mdm"));
    assert_eq!(mdm["CheckInURL"], mdm["ServerURL"]);
    assert_eq!(mdm["Topic"].as_string(), Some("com.apple.mgmt.External.1"));
    assert_eq!(mdm["AccessRights"].as_signed_integer(), Some(8191));
    // Every payload has its own UUID, and the same link gives the same profile.
    let uuids: std::collections::HashSet<_> =
        [&profile, scep, mdm].iter().map(|p| p["PayloadUUID"].as_string().unwrap().to_string()).collect();
    assert_eq!(uuids.len(), 3);
    let again = crate::profile::answer(
        "https://mdm.example.com/agent/v1/ios",
        query,
        Some("com.apple.mgmt.External.1"),
        Some("Acme"),
    )
    .unwrap();
    assert_eq!(again.body, answer.body);
}

#[test]
fn no_profile_without_a_token_or_a_topic() {
    let url = "https://mdm.example.com/agent/v1/ios";
    let e = crate::profile::answer(url, "", Some("t"), None).unwrap_err();
    assert!(e.message.contains("enroll/profile?token="), "{}", e.message);
    let e = crate::profile::answer(url, "token=a<b", Some("t"), None).unwrap_err();
    assert!(e.message.contains("not an enrollment token"), "{}", e.message);
    let e = crate::profile::answer(url, "token=drv_enroll_x", None, None).unwrap_err();
    assert!(e.message.contains("`topic` setting"), "{}", e.message);
}
