//! The LwM2M codecs natively, against the specification's own examples and the fixtures.

use super::*;
use drover_sdk::device_type::drover::plugin::types::ErrorCode;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn device() -> Device {
    Device { id: "urn:dev:os:0023C7-000001".into(), metadata: vec![], session: vec![] }
}

fn response(path: &str, code: u16, format: Option<u16>, op: u64) -> CoapMessage {
    CoapMessage { method: None, code, path: path.into(), query: vec![], content_format: format, operation_id: Some(op) }
}

#[test]
fn tlv_device_object_from_the_specification() {
    let values = codec::decode("3/0", Some(codec::TLV), &fixture("device-read.tlv")).unwrap();
    assert_eq!(values["3/0/0"], "Open Mobile Alliance");
    assert_eq!(values["3/0/1"], "Lightweight M2M Client");
    assert_eq!(values["3/0/3"], "1.0");
    assert_eq!(values["3/0/6/0"], 1);
    assert_eq!(values["3/0/6/1"], 5);
    assert_eq!(values["3/0/7/0"], 3800);
    assert_eq!(values["3/0/7/1"], 5000);
    assert_eq!(values["3/0/8/1"], 900);
    assert_eq!(values["3/0/9"], 100);
    assert_eq!(values["3/0/11/0"], 0);
    assert_eq!(values["3/0/13"], 1367491215);
    assert_eq!(values["3/0/14"], "+02:00");
    assert_eq!(values["3/0/16"], "U");
    assert_eq!(values.len(), 16);
    // The same instance, read with the object as the request path.
    let whole = [&[0x08u8, 0x00, 121][..], &fixture("device-read.tlv")].concat();
    assert_eq!(codec::decode("3", Some(codec::TLV), &whole).unwrap(), values);
}

#[test]
fn senml_and_text_give_the_same_values() {
    let tlv = codec::decode("3/0", Some(codec::TLV), &fixture("device-read.tlv")).unwrap();
    let senml = codec::decode("3/0", Some(codec::SENML_JSON), &fixture("device-read.senml.json")).unwrap();
    for (k, v) in &senml {
        assert_eq!(tlv.get(k), Some(v), "{k}");
    }
    let text = codec::decode("3/0/9", Some(codec::TEXT), &fixture("battery.txt")).unwrap();
    assert_eq!(text["3/0/9"], 87);
}

#[test]
fn a_device_read_becomes_result_metadata_and_telemetry() {
    let m =
        Lwm2m::decode(device(), Channel::Coap(response("3/0", 205, Some(codec::TLV), 41)), fixture("device-read.tlv"))
            .unwrap();
    assert_eq!((m.results[0].operation_id, m.results[0].status), (41, ResultStatus::Completed));
    let r: Value = serde_json::from_str(m.results[0].response.as_deref().unwrap()).unwrap();
    assert_eq!(r["code"], "2.05");
    assert_eq!(r["values"]["3/0/0 Manufacturer"], "Open Mobile Alliance");
    assert!(m.info.contains(&("FirmwareVersion".into(), "1.0".into())));
    let battery = m.telemetry.iter().find(|t| t.name == "battery").unwrap();
    assert!(matches!(battery.value, TelemetryValue::Number(n) if n == 100.0));
}

#[test]
fn errors_are_results_and_malformed_payloads_are_refused() {
    let m = Lwm2m::decode(device(), Channel::Coap(response("3/0/99", 404, None, 7)), vec![]).unwrap();
    assert_eq!(m.results[0].status, ResultStatus::Error);
    assert!(m.results[0].response.as_deref().unwrap().contains("4.04"));
    let refuse = |path: &str, format: u16, file: &str| {
        Lwm2m::decode(device(), Channel::Coap(response(path, 205, Some(format), 7)), fixture(file)).unwrap_err()
    };
    let e = refuse("3/0", codec::TLV, "truncated.tlv");
    assert_eq!(e.code, ErrorCode::Malformed);
    assert!(e.message.contains("TLV truncated"), "{}", e.message);
    assert!(refuse("3/0", codec::SENML_JSON, "no-value.senml.json").message.contains("has no value"));
    assert!(refuse("3/0/9", codec::TEXT, "battery-not-a-number.txt").message.contains("not an integer"));
    assert!(refuse("3/0", 60, "battery.txt").message.contains("content format 60"));
}

#[test]
fn a_firmware_update_is_written_observed_executed_once_and_finished() {
    let reqs = requests(9, "FIRMWARE_UPDATE", Some(r#"{"uri":"coap://fw.example.com/esp/2.1.0.bin"}"#)).unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].method, reqs[0].path.as_str()), (CoapMethod::Put, "5/0/1"));
    assert_eq!(reqs[0].payload, b"coap://fw.example.com/esp/2.1.0.bin");
    assert_eq!((reqs[1].path.as_str(), reqs[1].observe), ("5/0", Some(true)));

    let notify = |file: &str, session: Vec<u8>| {
        let d = Device { session, ..device() };
        Lwm2m::decode(d, Channel::Coap(response("5/0", 205, Some(codec::TLV), 9)), fixture(file)).unwrap()
    };
    let downloaded = notify("firmware-downloaded.tlv", vec![]);
    assert_eq!(downloaded.results[0].status, ResultStatus::InProgress);
    let Reply::Immediate(Outbound::Coap(exec)) = &downloaded.reply else { panic!("{:?}", downloaded.reply) };
    assert_eq!((exec[0].method, exec[0].path.as_str(), exec[0].operation_id), (CoapMethod::Post, "5/0/2", 9));
    // The same state notified again: Update is not executed twice.
    let again = notify("firmware-downloaded.tlv", downloaded.session.clone().unwrap());
    assert!(matches!(again.reply, Reply::None));
    let done = notify("firmware-done.tlv", vec![]);
    assert_eq!(done.results[0].status, ResultStatus::Completed);
    let failed = notify("firmware-failed.tlv", vec![]);
    assert_eq!(failed.results[0].status, ResultStatus::Error);
    assert!(failed.results[0].response.as_deref().unwrap().contains("integrity check failure"));
}

#[test]
fn operations_become_requests() {
    let r = requests(1, "Write", Some(r#"{"path":"/3/0/14","value":"+05:30"}"#)).unwrap();
    assert_eq!((r[0].method, r[0].content_format, r[0].payload.as_slice()), (CoapMethod::Put, Some(0), &b"+05:30"[..]));
    let r = requests(1, "Write", Some(r#"{"path":"1/0/1","value":300,"format":"tlv"}"#)).unwrap();
    assert_eq!(r[0].payload, [0xC2, 0x01, 0x01, 0x2C]);
    let back = codec::decode("1/0/1", Some(codec::TLV), &r[0].payload).unwrap();
    assert_eq!(back["1/0/1"], 300);
    let r = requests(1, "Read", Some(r#"{"path":"3/0","format":"senml"}"#)).unwrap();
    assert_eq!(r[0].accept, Some(codec::SENML_JSON));
    assert_eq!(requests(1, "Reboot", None).unwrap()[0].path, "3/0/4");
    let e = Lwm2m::validate("Write".into(), Some(r#"{"path":"3/0/4","value":1}"#.into())).unwrap_err();
    assert!(e.message.contains("executable"), "{}", e.message);
    let e = Lwm2m::validate("Read".into(), Some(r#"{"path":"3/x"}"#.into())).unwrap_err();
    assert!(e.message.contains("not object/instance/resource numbers"), "{}", e.message);
    let e = Lwm2m::validate("FIRMWARE_UPDATE".into(), Some(r#"{"uri":"ftp://x"}"#.into())).unwrap_err();
    assert!(e.message.contains("not a coap(s) or http(s) URI"), "{}", e.message);
    // A rollout's standard payload: its `url` is the Package URI; both forms at once is refused.
    let standard = r#"{"url":"http://mdm.example/download/abc","sha256":"00","size":5,"version":"2.0"}"#;
    let reqs = requests(4, "FIRMWARE_ROLLBACK", Some(standard)).unwrap();
    assert_eq!(
        (reqs[0].path.as_str(), reqs[0].payload.as_slice()),
        ("5/0/1", b"http://mdm.example/download/abc".as_slice())
    );
    let both = r#"{"uri":"coap://a/b","url":"http://c/d"}"#;
    assert!(Lwm2m::validate("FIRMWARE_UPDATE".into(), Some(both.into())).unwrap_err().message.contains("one of them"));
    assert_eq!(Lwm2m::validate("Blink".into(), None).unwrap_err().code, ErrorCode::UnknownOperation);
}

#[test]
fn registration_is_validated() {
    let reg = |query: Vec<&str>, body: &[u8]| {
        let m = CoapMessage {
            method: Some(CoapMethod::Post),
            code: 0,
            path: "rd".into(),
            query: query.into_iter().map(str::to_string).collect(),
            content_format: Some(codec::LINK_FORMAT),
            operation_id: None,
        };
        Lwm2m::enroll(Channel::Coap(m), body.to_vec())
    };
    let e = reg(vec!["ep=urn:dev:os:0023C7-000001", "lt=300", "lwm2m=1.1", "b=U"], &fixture("register.link")).unwrap();
    assert_eq!(e.device_id, "urn:dev:os:0023C7-000001");
    assert!(e.metadata.contains(&("objects".into(), "1/0,3/0,5/0,3303/0".into())));
    assert!(e.metadata.contains(&("binding".into(), "U".into())));
    assert!(reg(vec!["lt=300"], b"</3/0>").unwrap_err().message.contains("without `ep`"));
    assert!(reg(vec!["ep=a b"], b"</3/0>").unwrap_err().message.contains("endpoint name"));
    assert!(reg(vec!["ep=x"], b"3/0").unwrap_err().message.contains("is not a link"));
}

#[test]
fn deeply_nested_tlv_is_refused() {
    // Object instance inside object instance inside …: 200 levels.
    let mut payload = vec![0xC1, 0x09, 0x64];
    for _ in 0..200 {
        let mut outer = vec![0x10, 0x00];
        outer.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        outer.extend_from_slice(&payload);
        payload = outer;
    }
    let e = codec::decode("3", Some(codec::TLV), &payload).unwrap_err();
    assert!(e.contains("nested deeper"), "{e}");
}
