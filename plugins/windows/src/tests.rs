//! The SyncML codec and session logic natively, against the recorded messages.

use super::*;
use drover_sdk::device_type::drover::plugin::types::{ErrorCode, HttpMethod, HttpRequest};

const DEV: &str = "7F3A2B1C9D8E4F60A1B2C3D4E5F60718";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn http() -> Channel {
    Channel::Http(HttpRequest {
        method: HttpMethod::Post,
        path: "ManagementServer/MDM.svc".into(),
        query: String::new(),
        content_type: Some(syncml::CONTENT_TYPE.into()),
        headers: vec![],
    })
}

fn op(id: u64, code: &str, payload: Option<&str>) -> Operation {
    Operation { id, code: code.into(), kind: OperationKind::Command, payload: payload.map(str::to_string) }
}

/// Run one exchange: decode `body` with `session`, then encode `ops`; returns the new
/// session, the decoded message and Drover's answer parsed back.
fn exchange(session: Vec<u8>, body: &[u8], ops: Vec<Operation>) -> (Vec<u8>, DeviceMessage, Message, Vec<u64>) {
    let device = Device { id: DEV.into(), metadata: vec![], session };
    let m = Windows::decode(device.clone(), http(), body.to_vec()).unwrap();
    let device = Device { session: m.session.clone().unwrap(), ..device };
    let e = Windows::encode(device, ops, ChannelKind::Http).unwrap();
    let Outbound::Http(r) = e.output else { panic!() };
    assert_eq!(r.content_type.as_deref(), Some(syncml::CONTENT_TYPE));
    (e.session.unwrap(), m, syncml::parse(&r.body).unwrap(), e.delivered)
}

#[test]
fn enrollment_reads_dev_info() {
    let e = Windows::enroll(http(), fixture("session-open.xml")).unwrap();
    assert_eq!(e.device_id, DEV);
    assert!(e.metadata.contains(&("Man".into(), "Dell Inc.".into())));
    assert!(e.metadata.contains(&("Mod".into(), "Latitude 7440".into())));
    let e = Windows::enroll(http(), fixture("unenroll.xml")).unwrap_err();
    assert!(e.message.contains("no ./DevInfo values"), "{}", e.message);
}

#[test]
fn a_session_spans_messages_and_maps_statuses_to_operations() {
    let ops = vec![
        op(101, "DevDetail", None),
        op(102, "DeviceStatus", None),
        op(103, "PushChannel", None),
        op(104, "Reboot", None),
    ];
    let (session, first, answer, delivered) = exchange(vec![], &fixture("session-open.xml"), ops);
    assert!(first.results.is_empty());
    assert!(first.info.contains(&("LoginStatus".into(), "user".into())));
    assert_eq!(delivered, vec![101, 102, 103, 104]);
    // Drover's message 1: Status for the header and the three client commands, then the four commands.
    assert_eq!(answer.session_id, "1A");
    assert_eq!(answer.msg_id, 1);
    assert_eq!(answer.target, DEV);
    assert_eq!(answer.source, "https://mdm.example.com/agent/v1/windows/ManagementServer/MDM.svc");
    let names: Vec<&str> = answer.commands.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Status", "Status", "Status", "Status", "Get", "Get", "Get", "Exec"]);
    let hdr = &answer.commands[0];
    assert_eq!(
        (hdr.msg_ref, hdr.cmd_ref, hdr.cmd.as_deref(), hdr.data.as_deref()),
        (Some(1), Some(0), Some("SyncHdr"), Some("200"))
    );
    assert_eq!(answer.commands[3].cmd_ref, Some(4), "the Replace with DevInfo");
    assert_eq!(answer.commands[4].cmd_id, 5);
    assert_eq!(answer.commands[7].items[0].target.as_deref(), Some("./Device/Vendor/MSFT/Reboot/RebootNow"));
    assert!(answer.is_final);

    // The device's message 2 answers them (the recorded fixture uses exactly these CmdIDs).
    let (session, second, answer, delivered) = exchange(session, &fixture("results.xml"), vec![]);
    assert!(delivered.is_empty());
    let by_id = |id: u64| second.results.iter().find(|r| r.operation_id == id).unwrap();
    assert_eq!(by_id(101).status, ResultStatus::Completed);
    let info: serde_json::Value = serde_json::from_str(by_id(101).response.as_deref().unwrap()).unwrap();
    assert_eq!(info["results"][0], json!({"uri": "./DevDetail/SwV", "format": "chr", "data": "10.0.22631.4460"}));
    assert_eq!(by_id(104).status, ResultStatus::Error);
    let reboot: serde_json::Value = serde_json::from_str(by_id(104).response.as_deref().unwrap()).unwrap();
    assert_eq!(reboot, json!({"status": 405, "meaning": "command not allowed", "cmd": "Exec"}));
    assert!(second.info.contains(&("SwV".into(), "10.0.22631.4460".into())));
    assert!(matches!(second.telemetry[0].value, TelemetryValue::Number(v) if v == 76.0));
    let Some(CheckIn::TokenUpdate(t)) = &second.check_in else { panic!("{:?}", second.check_in) };
    assert_eq!(
        (t.transport.as_str(), t.token.as_str()),
        ("wns", "https://db5p.notify.windows.com/?token=AwYAAABvX2bZ")
    );
    // Drover's message 2: Status for the header and the three Results, nothing else.
    assert_eq!(answer.msg_id, 2);
    assert!(answer.commands.iter().all(|c| c.name == "Status" && c.msg_ref == Some(2)));
    assert_eq!(answer.commands.len(), 4);
    let s: Session = serde_json::from_slice(&session).unwrap();
    assert!(s.sent.is_empty() && s.owed.is_empty());
}

#[test]
fn commands_left_unanswered_when_a_new_session_starts_are_offered_again() {
    let (session, _, _, _) = exchange(vec![], &fixture("session-open.xml"), vec![op(7, "RemoteLock", None)]);
    let next = String::from_utf8(fixture("session-open.xml")).unwrap().replace("<SessionID>1A<", "<SessionID>1B<");
    let (_, m, _, _) = exchange(session, next.as_bytes(), vec![]);
    assert_eq!(m.results.len(), 1);
    assert_eq!((m.results[0].operation_id, m.results[0].status), (7, ResultStatus::NotNow));
}

#[test]
fn payloads_become_the_right_commands() {
    let c = operations::command("CameraPolicy", Some(r#"{"allowed":false}"#)).unwrap();
    assert_eq!(c.name, "Replace");
    assert_eq!(c.items[0].target.as_deref(), Some("./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera"));
    assert_eq!((c.items[0].format.as_deref(), c.items[0].data.as_deref()), (Some("int"), Some("0")));
    let c = operations::command("RemoteWipe", Some(r#"{"protected":true}"#)).unwrap();
    assert_eq!(c.items[0].target.as_deref(), Some("./Device/Vendor/MSFT/RemoteWipe/doWipeProtected"));
    let c = operations::command(
        "POLICY_BUNDLE",
        Some(r#"{"settings":[{"uri":"./Device/Vendor/MSFT/Policy/Config/Experience/AllowCortana","format":"int","data":"0"},{"uri":"./Device/Vendor/MSFT/Policy/Config/Bluetooth/AllowDiscoverableMode","format":"int","data":"0"}]}"#),
    )
    .unwrap();
    assert_eq!(c.items.len(), 2);
    // Data with markup is escaped on the wire and read back as sent.
    let c = operations::command(
        "Replace",
        Some(r#"{"uri":"./Vendor/MSFT/Test/Blob","format":"xml","data":"<a b=\"1\">&</a>"}"#),
    )
    .unwrap();
    let m = Message {
        session_id: "1".into(),
        msg_id: 1,
        target: DEV.into(),
        source: "https://x".into(),
        commands: vec![Command { cmd_id: 1, ..c }],
        is_final: true,
    };
    let back = syncml::parse(&syncml::write(&m)).unwrap();
    assert_eq!(back, m);
}

#[test]
fn validate_names_what_is_wrong() {
    let e = Windows::validate("Wipe".into(), None).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownOperation);
    let e = Windows::validate("Get".into(), Some(r#"{"uris":["/DevDetail/SwV"]}"#.into())).unwrap_err();
    assert!(e.message.contains("is not an OMA-URI"), "{}", e.message);
    let e = Windows::validate("Replace".into(), Some(r#"{"uri":"./A/../B","data":"1"}"#.into())).unwrap_err();
    assert!(e.message.contains("`..` segment"), "{}", e.message);
    let e = Windows::validate("Replace".into(), Some(r#"{"uri":"./A/B","data":"1","format":"integer"}"#.into()))
        .unwrap_err();
    assert!(e.message.contains("`format` `integer`"), "{}", e.message);
    let e = Windows::validate("CameraPolicy".into(), None).unwrap_err();
    assert!(e.message.contains("missing field `allowed`"), "{}", e.message);
    for c in operations::CODES {
        if let Some(s) = c.schema {
            serde_json::from_str::<serde_json::Value>(s).unwrap();
        }
    }
}

#[test]
fn malformed_messages_are_refused_naming_the_problem() {
    let device = Device { id: DEV.into(), metadata: vec![], session: vec![] };
    let refuse = |name: &str| Windows::decode(device.clone(), http(), fixture(name)).unwrap_err();
    let e = refuse("truncated.xml");
    assert_eq!(e.code, ErrorCode::Malformed);
    assert!(e.message.contains("not well-formed XML"), "{}", e.message);
    assert!(refuse("wrong-protocol.xml").message.contains("DM/1.1"));
    assert!(refuse("status-not-a-code.xml").message.contains("no numeric <Data> code"));
    let other = Device { id: "0000".into(), metadata: vec![], session: vec![] };
    let e = Windows::decode(other, http(), fixture("session-open.xml")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    let e =
        Windows::decode(device, http(), b"<SyncML xmlns='SYNCML:SYNCML1.2'><SyncBody/></SyncML>".to_vec()).unwrap_err();
    assert!(e.message.contains("no <SyncHdr>"), "{}", e.message);
}

#[test]
fn a_check_out_is_the_unenrollment_alert() {
    let device = Device { id: DEV.into(), metadata: vec![], session: vec![] };
    let m = Windows::decode(device, http(), fixture("unenroll.xml")).unwrap();
    assert!(matches!(m.check_in, Some(CheckIn::CheckOut)));
}

#[test]
fn a_package_without_final_is_asked_for_its_next_message() {
    let open = String::from_utf8(fixture("session-open.xml")).unwrap().replace("<Final/>", "");
    let (session, _, answer, delivered) = exchange(vec![], open.as_bytes(), vec![op(5, "Reboot", None)]);
    assert!(delivered.is_empty(), "no commands before the device's package is complete");
    let alert = answer.commands.iter().find(|c| c.name == "Alert").expect("Alert 1222");
    assert_eq!(alert.data.as_deref(), Some("1222"));
    // The rest of the package, with Final: now the command goes out.
    let rest = String::from_utf8(fixture("session-open.xml")).unwrap().replace("<MsgID>1</MsgID>", "<MsgID>2</MsgID>");
    let (_, _, answer, delivered) = exchange(session, rest.as_bytes(), vec![op(5, "Reboot", None)]);
    assert_eq!(delivered, vec![5]);
    assert!(answer.commands.iter().any(|c| c.name == "Exec"));
    assert!(!answer.commands.iter().any(|c| c.name == "Alert"));
}

/// Drover's policies send a bundle as a list of profile features: their Policy CSP
/// settings in one Replace; each feature is also an operation of its own.
#[test]
fn a_policy_feature_list_becomes_one_replace() {
    let list =
        r#"[{"code":"CAMERA","payload":{"enabled":false}},{"code":"PASSCODE_POLICY","payload":{"minLength":8}}]"#;
    let c = operations::command("POLICY_BUNDLE", Some(list)).unwrap();
    assert_eq!(c.name, "Replace");
    let targets: Vec<(&str, &str)> =
        c.items.iter().map(|i| (i.target.as_deref().unwrap(), i.data.as_deref().unwrap())).collect();
    assert_eq!(
        targets,
        [
            ("./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera", "0"),
            ("./Device/Vendor/MSFT/Policy/Config/DeviceLock/DevicePasswordEnabled", "0"),
            ("./Device/Vendor/MSFT/Policy/Config/DeviceLock/MinDevicePasswordLength", "8"),
        ]
    );
    assert!(operations::command("CAMERA", Some(r#"{"enabled":true}"#)).is_ok());
    let e = operations::command("POLICY_BUNDLE", Some(r#"[{"code":"Reboot"}]"#)).unwrap_err();
    assert!(e.contains("entry 0") && e.contains("CAMERA"), "{e}");
    let e = operations::command("POLICY_BUNDLE", Some(r#"[{"code":"PASSCODE_POLICY","payload":{"minLength":2}}]"#))
        .unwrap_err();
    assert!(e.contains("entry 0") && e.contains("not 4 to 16"), "{e}");
    // The object form still works.
    let c = operations::command(
        "POLICY_BUNDLE",
        Some(r#"{"settings":[{"uri":"./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera","format":"int","data":"1"}]}"#),
    )
    .unwrap();
    assert_eq!(c.items.len(), 1);
}

mod mde2_exchange {
    //! MS-MDE2 natively: each service against a recorded request, and the faults.
    use super::fixture;
    use crate::mde2::{self, MANAGEMENT_PATH};
    use base64::Engine;
    use drover_sdk::device_type::drover::plugin::types::HttpMethod;
    use drover_sdk::device_type_enrolling::exports::drover::plugin::enrollment_exchange::{
        EnrollContext, Issued, Refusal, Step,
    };

    const AGENT: &str = "https://mdm.example.com/agent/v1/windows";

    fn context() -> EnrollContext {
        EnrollContext { agent_url: AGENT.into() }
    }

    fn reply(path: &str, body: &[u8]) -> (u16, String) {
        match mde2::step(&context(), path, HttpMethod::Post, body).unwrap() {
            Step::Reply(r) => (r.status, String::from_utf8(r.body).unwrap()),
            Step::Admit(_) => panic!("{path} admitted a device"),
        }
    }

    /// The text of the first element named `name` (any namespace).
    fn text(xml: &str, name: &str) -> Option<String> {
        let doc = roxmltree::Document::parse(xml).unwrap();
        doc.descendants().find(|n| n.tag_name().name() == name).and_then(|n| n.text()).map(|t| t.trim().to_string())
    }

    #[test]
    fn discovery_answers_get_then_names_the_services_under_the_public_url() {
        let Step::Reply(r) = mde2::step(&context(), "enroll/discovery", HttpMethod::Get, &[]).unwrap() else {
            panic!()
        };
        assert_eq!(r.status, 200);
        let (status, body) = reply("enroll/discovery", &fixture("mde2-discover.xml"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(text(&body, "AuthPolicy").as_deref(), Some("OnPremise"));
        assert_eq!(text(&body, "EnrollmentVersion").as_deref(), Some("4.0"));
        assert_eq!(text(&body, "EnrollmentPolicyServiceUrl").unwrap(), format!("{AGENT}/enroll/policy"));
        assert_eq!(text(&body, "EnrollmentServiceUrl").unwrap(), format!("{AGENT}/enroll/enrollment"));
        assert_eq!(text(&body, "RelatesTo").as_deref(), Some("urn:uuid:748132ec-a575-4329-b01b-6171a9cf8478"));
    }

    #[test]
    fn a_device_offering_only_federated_auth_is_told_so() {
        let only_federated =
            String::from_utf8(fixture("mde2-discover.xml")).unwrap().replace("<AuthPolicy>OnPremise</AuthPolicy>", "");
        let (status, body) = reply("enroll/discovery", only_federated.as_bytes());
        assert_eq!(status, 500);
        assert_eq!(text(&body, "Value").as_deref(), Some("s:Sender"));
        assert!(body.contains("a:NotSupported"), "{body}");
        assert!(text(&body, "Text").unwrap().contains("OnPremise"), "{body}");
    }

    #[test]
    fn policy_asks_for_rsa_2048_with_sha256() {
        let (status, body) = reply("enroll/policy", &fixture("mde2-get-policies.xml"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(text(&body, "minimalKeyLength").as_deref(), Some("2048"));
        assert_eq!(text(&body, "value").as_deref(), Some("2.16.840.1.101.3.4.2.1"));
        assert_eq!(text(&body, "RelatesTo").as_deref(), Some("urn:uuid:72048B64-0F19-448F-8C2E-B4C661860AA0"));
    }

    #[test]
    fn enrollment_admits_the_device_id_with_its_password_and_csr() {
        let Step::Admit(a) =
            mde2::step(&context(), "enroll/enrollment", HttpMethod::Post, &fixture("mde2-enrollment.xml")).unwrap()
        else {
            panic!("not an admission")
        };
        assert_eq!(a.enrollment.device_id, "7BA748C8703E4DF2A74A92984117346A");
        assert_eq!(a.enrollment.name.as_deref(), Some("LAB-PC-07"));
        assert_eq!(a.enrollment.owner.as_deref(), Some("nadia@example.com"));
        assert_eq!(a.token.as_deref(), Some("drv_enroll_example"));
        let meta: std::collections::BTreeMap<_, _> = a.enrollment.metadata.into_iter().collect();
        assert_eq!(meta["os_version"], "10.0.22631.2861");
        assert_eq!(meta["mac"], "00-15-5D-01-23-45,00-15-5D-01-23-46");
        assert_eq!(meta["enrollment_type"], "Full");
        // The CSR is the DER the device base64-encoded (a SEQUENCE).
        let csr = a.csr.unwrap();
        assert_eq!(csr[0], 0x30);
        assert!(csr.len() > 500, "an RSA 2048 request");
    }

    #[test]
    fn bad_enrollment_requests_get_the_protocols_fault_not_an_admission() {
        let good = String::from_utf8(fixture("mde2-enrollment.xml")).unwrap();
        let cases = [
            (good.replace("Name=\"DeviceID\"", "Name=\"Other\""), "a:InvalidEnrollmentData"),
            (good.replace("enrollment#PKCS10", "enrollment#PKCS7"), "a:NotSupported"),
            (
                good.replace(
                    "<wsse:BinarySecurityToken ValueType",
                    "<wsse:BinarySecurityToken>!</wsse:BinarySecurityToken><x ValueType",
                ),
                "a:MessageFormat",
            ),
            ("<not-soap/>".to_string(), "a:MessageFormat"),
            (good[..good.len() / 2].to_string(), "a:MessageFormat"),
        ];
        for (body, subcode) in cases {
            let (status, answer) = reply("enroll/enrollment", body.as_bytes());
            assert_eq!(status, 500, "{answer}");
            assert!(answer.contains(subcode), "{subcode} expected: {answer}");
        }
    }

    #[test]
    fn the_answer_provisions_the_certificates_and_the_management_url() {
        let (cert, ca) = (b"device certificate DER".to_vec(), b"CA certificate DER".to_vec());
        let issued = Issued {
            device_id: "7BA748C8703E4DF2A74A92984117346A".into(),
            certificate: Some(cert.clone()),
            ca_certificate: ca.clone(),
            access_token: None,
            expires_in_secs: 86_400,
        };
        let r = mde2::enrolled(&context(), &fixture("mde2-enrollment.xml"), Ok(issued));
        assert_eq!(r.status, 200);
        let body = String::from_utf8(r.body).unwrap();
        assert_eq!(text(&body, "RelatesTo").as_deref(), Some("urn:uuid:0d5a1441-5891-453b-becf-a2e5f6ea3749"));
        let b64 = base64::engine::general_purpose::STANDARD;
        let doc = String::from_utf8(b64.decode(text(&body, "BinarySecurityToken").unwrap()).unwrap()).unwrap();
        let doc = roxmltree::Document::parse(&doc).unwrap();
        let encoded: Vec<Vec<u8>> = doc
            .descendants()
            .filter(|n| n.attribute("name") == Some("EncodedCertificate"))
            .map(|n| b64.decode(n.attribute("value").unwrap()).unwrap())
            .collect();
        assert_eq!(encoded, vec![ca, cert], "the root first, then the device's");
        let parm = |name: &str| {
            doc.descendants().find(|n| n.attribute("name") == Some(name)).and_then(|n| n.attribute("value"))
        };
        assert_eq!(parm("ADDR").unwrap(), format!("{AGENT}/{MANAGEMENT_PATH}"));
        assert_eq!(
            parm("SSLCLIENTCERTSEARCHCRITERIA").unwrap(),
            "Subject=CN%3d7BA748C8703E4DF2A74A92984117346A%2cOU%3dwindows&Stores=My%5CUser"
        );
        // The thumbprint names the certificate's characteristic: SHA-1, upper-case hex.
        use sha1::Digest;
        let thumb: String = sha1::Sha1::digest(b"CA certificate DER").iter().map(|b| format!("{b:02X}")).collect();
        assert!(doc.descendants().any(|n| n.attribute("type") == Some(thumb.as_str())));
    }

    #[test]
    fn a_refusal_is_a_fault_naming_why() {
        let refusal =
            Refusal { status: 401, code: "unauthorized".into(), message: "the enrollment token is unknown".into() };
        let r = mde2::enrolled(&context(), &fixture("mde2-enrollment.xml"), Err(refusal));
        let body = String::from_utf8(r.body).unwrap();
        assert_eq!(r.status, 500);
        assert!(body.contains("a:Authentication"), "{body}");
        assert_eq!(text(&body, "Text").as_deref(), Some("the enrollment token is unknown"));
    }
}
