//! Apple MDM end to end with the first-party ios plugin: a simulated iPhone speaking the
//! protocol's plists over real HTTP enrolls with an enrollment token (Authenticate),
//! reports its APNs token (TokenUpdate), is woken through the apns transport (a loopback
//! server standing in for APNs receives `{"mdm": PushMagic}`), then fetches every listed
//! command one per request until the empty answer, and answers them. Every command Drover
//! sends is read back with Python's plistlib, a parser that is not ours. Also: NotNow
//! re-offers later, Error keeps the ErrorChain, malformed plists change nothing, CheckOut
//! removes the device.

use drover_tests::provider::Provider;
use drover_tests::{TestServer, e2e, unique};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FIXTURE_UDID: &str = "00008120-001A2D3E0C38802E";
const PUSH_MAGIC: &str = "4E5B8F1A-0C1D-4B4F-9C3A-6B1F5D2E7A90";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../plugins/ios/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A plist dictionary as XML, built with the `plist` crate (not the plugin's code).
fn xml(d: plist::Dictionary) -> Vec<u8> {
    let mut out = Vec::new();
    plist::Value::Dictionary(d).to_writer_xml(&mut out).unwrap();
    out
}

/// Read a plist with Python's plistlib and return it as JSON (data as base64).
fn plistlib(body: &[u8]) -> Value {
    use std::io::Write;
    let script = "import base64, json, plistlib, sys\n\
        def j(v):\n\
        \x20   if isinstance(v, bytes): return base64.b64encode(v).decode()\n\
        \x20   if isinstance(v, dict): return {k: j(x) for k, x in v.items()}\n\
        \x20   if isinstance(v, list): return [j(x) for x in v]\n\
        \x20   return v\n\
        print(json.dumps(j(plistlib.loads(sys.stdin.buffer.read()))))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "plistlib refused Drover's plist: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A simulated Apple device: its UDID and Drover credential.
struct Iphone<'a> {
    server: &'a TestServer,
    udid: String,
    credential: String,
}

impl<'a> Iphone<'a> {
    /// Enroll with an enrollment token: the Authenticate check-in, PUT as devices do.
    async fn enroll(server: &'a TestServer) -> Iphone<'a> {
        let r = server
            .admin(Method::POST, "/api/v1/enrollment-tokens")
            .json(&json!({"device_type": "ios", "uses": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
        // A UDID of the modern form: 8 hex, dash, 16 hex.
        let n = unique("x").bytes().fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64));
        let udid = format!("00008120-{n:016X}");
        let r = server
            .http
            .put(server.url(&format!("/agent/v1/ios/enroll?token={token}")))
            .header("content-type", "application/x-apple-aspen-mdm-checkin")
            .body(fixture("authenticate.plist").replace(FIXTURE_UDID, &udid))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["device_id"], udid.as_str());
        Iphone { server, udid, credential: v["access_token"].as_str().unwrap().to_string() }
    }

    async fn put(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let r = self
            .server
            .http
            .put(self.server.url(&format!("/agent/v1/ios/{path}")))
            .bearer_auth(&self.credential)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.bytes().await.unwrap().to_vec())
    }

    /// A check-in message from the fixtures, as this device.
    async fn check_in(&self, fixture_name: &str) -> (StatusCode, Vec<u8>) {
        let body = fixture(fixture_name).replace(FIXTURE_UDID, &self.udid).into_bytes();
        self.put("checkin", "application/x-apple-aspen-mdm-checkin", body).await
    }

    /// A command report to the server URL; the answer is the next command, or `None`
    /// when the body is empty (nothing left).
    async fn report(&self, status: &str, uuid: Option<&str>, extra: plist::Dictionary) -> Option<Value> {
        let mut d = extra;
        d.insert("UDID".into(), self.udid.clone().into());
        d.insert("Status".into(), status.into());
        if let Some(u) = uuid {
            d.insert("CommandUUID".into(), u.into());
        }
        let (s, body) = self.put("server", "application/x-apple-aspen-mdm", xml(d)).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        (!body.is_empty()).then(|| plistlib(&body))
    }

    async fn raw(&self, body: Vec<u8>) -> (StatusCode, String) {
        let (s, b) = self.put("server", "application/x-apple-aspen-mdm", body).await;
        (s, String::from_utf8_lossy(&b).into_owned())
    }
}

/// An operation's recorded response (JSON text in the API) as JSON.
fn response(op: &Value) -> Value {
    serde_json::from_str(op["response"].as_str().expect("a response")).unwrap()
}

fn dict(pairs: Vec<(&str, plist::Value)>) -> plist::Dictionary {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// What a device answers to each command (the keys Apple documents for it).
fn answer(request_type: &str) -> plist::Dictionary {
    use plist::Value as P;
    match request_type {
        "DeviceInformation" => dict(vec![(
            "QueryResponses",
            P::Dictionary(dict(vec![
                ("OSVersion", "17.5".into()),
                ("BuildVersion", "21F79".into()),
                ("BatteryLevel", P::Real(0.81)),
                ("AvailableDeviceCapacity", P::Real(87.4)),
                ("IsSupervised", true.into()),
            ])),
        )]),
        "ProfileList" => dict(vec![(
            "ProfileList",
            P::Array(vec![P::Dictionary(dict(vec![
                ("PayloadIdentifier", "com.example.baseline".into()),
                ("PayloadDisplayName", "Baseline".into()),
                ("IsManaged", true.into()),
            ]))]),
        )]),
        "InstalledApplicationList" => dict(vec![(
            "InstalledApplicationList",
            P::Array(vec![P::Dictionary(dict(vec![
                ("Identifier", "com.apple.mobilesafari".into()),
                ("Name", "Safari".into()),
                ("ShortVersion", "17.5".into()),
            ]))]),
        )]),
        "Restrictions" => dict(vec![(
            "GlobalRestrictions",
            P::Dictionary(dict(vec![(
                "restrictedBool",
                P::Dictionary(dict(vec![("allowCamera", P::Dictionary(dict(vec![("value", false.into())])))])),
            )])),
        )]),
        _ => plist::Dictionary::new(),
    }
}

fn mobileconfig() -> String {
    use base64::Engine;
    let profile = dict(vec![
        ("PayloadType", "Configuration".into()),
        ("PayloadIdentifier", "com.example.wifi".into()),
        ("PayloadUUID", "0C1D4B4F-9C3A-4E5B-8F1A-6B1F5D2E7A90".into()),
        ("PayloadVersion", 1.into()),
        ("PayloadContent", plist::Value::Array(vec![])),
    ]);
    base64::engine::general_purpose::STANDARD.encode(xml(profile))
}

/// Every listed operation: woken through APNs, one command per request, all answered.
async fn every_operation(server: &TestServer) {
    let apns = Provider::start(vec![]).await;
    let r = server
        .admin(Method::PUT, "/api/v1/plugins/apns/settings")
        .json(&json!({"granted_hosts": ["api.push.apple.com"], "redirects": {"api.push.apple.com": apns.base}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let phone = Iphone::enroll(server).await;
    let (s, body) = phone.check_in("token-update.plist").await;
    assert_eq!((s, body.len()), (StatusCode::OK, 0), "a check-in is answered with an empty 200");
    let device = server.device("ios", &phone.udid).await;
    assert_eq!(device["push_transport"], "apns");
    assert_eq!(device["metadata"]["OSVersion"], "17.4.1");
    assert_eq!(device["ownership"], "COPE");

    let ops = [
        (
            "DeviceInformation",
            Some(json!({"Queries": ["OSVersion", "BuildVersion", "BatteryLevel"]})),
            "DeviceInformation",
        ),
        ("DeviceLock", Some(json!({"Message": "Return to IT", "PhoneNumber": "+94 11 555 0100"})), "DeviceLock"),
        ("InstallProfile", Some(json!({"Payload": mobileconfig()})), "InstallProfile"),
        ("RemoveProfile", Some(json!({"Identifier": "com.example.wifi"})), "RemoveProfile"),
        ("ProfileList", None, "ProfileList"),
        ("InstalledApplicationList", Some(json!({"ManagedAppsOnly": false})), "InstalledApplicationList"),
        ("Restrictions", None, "Restrictions"),
        (
            "POLICY_BUNDLE",
            Some(json!({"identifier": "com.example.baseline", "name": "Baseline",
                         "restrictions": {"allowCamera": false}, "passcode": {"minLength": 6}})),
            "InstallProfile",
        ),
        ("EraseDevice", Some(json!({"PreserveDataPlan": true})), "EraseDevice"),
    ];
    let mut ids = Vec::new();
    for (code, payload, _) in &ops {
        ids.push(server.add_operation("ios", &phone.udid, code, payload.clone()).await);
    }

    // The wake-up: APNs gets the MDM push for this device's token.
    let push = &apns.wait_for(1).await[0];
    assert_eq!(push.uri, "/3/device/deadbeef000102030405060708090a0b0c0d0e0f101112131415161718191a1b");
    assert_eq!(push.header("apns-push-type"), Some("mdm"));
    assert_eq!(push.json(), json!({"mdm": PUSH_MAGIC}));

    // The device calls in: Idle, then one command per answer, in order, until nothing is left.
    let mut next = phone.report("Idle", None, plist::Dictionary::new()).await;
    for (i, (code, _, request_type)) in ops.iter().enumerate() {
        let command = next.unwrap_or_else(|| panic!("command {i} ({code}) was not offered"));
        assert_eq!(command["Command"]["RequestType"], *request_type, "{command}");
        let uuid = command["CommandUUID"].as_str().unwrap().to_string();
        assert_eq!(server.operation(ids[i]).await["state"], "IN_PROGRESS", "{code} is handed out");
        if i + 1 < ids.len() {
            assert_eq!(server.operation(ids[i + 1]).await["state"], "PENDING", "one command per request");
        }
        match *code {
            "DeviceLock" => assert_eq!(command["Command"]["Message"], "Return to IT"),
            "InstallProfile" => assert_eq!(command["Command"]["Payload"], mobileconfig()),
            "POLICY_BUNDLE" => {
                use base64::Engine;
                let profile =
                    base64::engine::general_purpose::STANDARD.decode(command["Command"]["Payload"].as_str().unwrap());
                let profile = plistlib(&profile.unwrap());
                assert_eq!(profile["PayloadType"], "Configuration");
                assert_eq!(profile["PayloadContent"][0]["PayloadType"], "com.apple.applicationaccess");
                assert_eq!(profile["PayloadContent"][0]["allowCamera"], false);
                assert_eq!(profile["PayloadContent"][1]["minLength"], 6);
            }
            _ => {}
        }
        next = phone.report("Acknowledged", Some(&uuid), answer(request_type)).await;
    }
    assert!(next.is_none(), "after the last command, the empty answer: {next:?}");

    for (id, (code, _, _)) in ids.iter().zip(&ops) {
        let op = server.operation(*id).await;
        assert_eq!(op["state"], "COMPLETED", "{code}: {op}");
    }
    let info = server.operation(ids[0]).await;
    assert_eq!(response(&info)["QueryResponses"]["BuildVersion"], "21F79", "{info}");
    let apps = server.operation(ids[5]).await;
    assert_eq!(response(&apps)["InstalledApplicationList"][0]["Identifier"], "com.apple.mobilesafari");
    let device = server.device("ios", &phone.udid).await;
    assert_eq!(device["metadata"]["OSVersion"], "17.5", "DeviceInformation updates the record");
    let battery = device["telemetry"].as_array().unwrap().iter().find(|t| t["name"] == "battery").cloned();
    assert_eq!(battery.map(|b| b["value"].clone()), Some(json!(81)), "{device}");
}
e2e!(every_operation, super::every_operation);

/// NotNow keeps a command queued and offers it again later; Error records the chain;
/// malformed and foreign reports change nothing; CheckOut removes the device.
async fn not_now_errors_and_check_out(server: &TestServer) {
    let phone = Iphone::enroll(server).await;
    let lock = server.add_operation("ios", &phone.udid, "DeviceLock", None).await;
    let list = server.add_operation("ios", &phone.udid, "ProfileList", None).await;

    let first = phone.report("Idle", None, plist::Dictionary::new()).await.unwrap();
    assert_eq!(first["Command"]["RequestType"], "DeviceLock");
    let lock_uuid = first["CommandUUID"].as_str().unwrap().to_string();
    // "Not now": the device is not asked the same again in this exchange.
    let second = phone.report("NotNow", Some(&lock_uuid), plist::Dictionary::new()).await.unwrap();
    assert_eq!(second["Command"]["RequestType"], "ProfileList");
    assert_eq!(server.operation(lock).await["state"], "NOTNOW");
    // After an answer that is not NotNow, the command is offered again.
    let list_uuid = second["CommandUUID"].as_str().unwrap().to_string();
    let third = phone.report("Acknowledged", Some(&list_uuid), answer("ProfileList")).await.unwrap();
    assert_eq!(third["Command"]["RequestType"], "DeviceLock");
    assert_eq!(server.operation(list).await["state"], "COMPLETED");

    // Malformed reports are refused with the reason and leave the command as it was.
    let truncated = fixture("idle.plist").replace(FIXTURE_UDID, &phone.udid).as_bytes()[..230].to_vec();
    let (s, body) = phone.raw(truncated).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("not a property list"), "{body}");
    let unknown = fixture("unknown-status.plist")
        .replace(FIXTURE_UDID, &phone.udid)
        .replace("D7A0E1B0-0000-4000-8000-000000000069", &lock_uuid);
    let (s, body) = phone.raw(unknown.into_bytes()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("`Status` is `Done`"), "{body}");
    // A device reports only as itself.
    let (s, body) = phone.raw(fixture("error.plist").into_bytes()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains(FIXTURE_UDID), "{body}");
    assert_eq!(server.operation(lock).await["state"], "IN_PROGRESS", "nothing changed");

    // Error: the ErrorChain is the response.
    let error = fixture("error.plist")
        .replace(FIXTURE_UDID, &phone.udid)
        .replace("D7A0E1B0-0000-4000-8000-00000000006B", &lock_uuid);
    let (s, body) = phone.raw(error.into_bytes()).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, ""), "nothing left");
    let op = server.operation(lock).await;
    assert_eq!(op["state"], "ERROR");
    assert_eq!(response(&op)["ErrorChain"][0]["ErrorDomain"], "MCProfileErrorDomain", "{op}");

    // CheckOut: the device leaves; what was queued for it is cancelled; it cannot call in.
    let erase = server.add_operation("ios", &phone.udid, "EraseDevice", None).await;
    let (s, _) = phone.check_in("checkout.plist").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(server.operation(erase).await["state"], "CANCELLED");
    let device = server.device("ios", &phone.udid).await;
    assert_eq!(device["status"], "removed");
    let (s, _) = phone.raw(fixture("idle.plist").replace(FIXTURE_UDID, &phone.udid).into_bytes()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
e2e!(not_now_errors_and_check_out, super::not_now_errors_and_check_out);

/// Unauthenticated input cannot suspend the iOS plugin (issue 21, item 3): twenty
/// enrollments whose plist nests thousands of levels deep (which traps a recursive
/// parser) are refused before the plugin parses them, and a real iPhone enrolls after.
async fn deep_plists_are_refused_before_the_plugin(server: &TestServer) {
    // Deep enough to trap the plugin's parser, within the 64 KiB an enrollment may send.
    let nest = 3000;
    let deep = fixture("authenticate.plist").replace(
        "<key>UDID</key>",
        &format!("<key>Deep</key>{}{}<key>UDID</key>", "<array>".repeat(nest), "</array>".repeat(nest)),
    );
    for _ in 0..20 {
        let r = server
            .http
            .put(server.url("/agent/v1/ios/enroll"))
            .header("content-type", "application/x-apple-aspen-mdm-checkin")
            .body(deep.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "body_refused", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("deeper than 64"), "{body}");
    }
    // An entity declaration (the start of a "billion laughs") is refused too.
    let bomb = fixture("authenticate.plist").replace(
        "<plist version=\"1.0\">",
        "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;\">]><plist version=\"1.0\">",
    );
    let r = server.http.put(server.url("/agent/v1/ios/enroll")).body(bomb).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("ENTITY"));

    let p: Value = server.admin(Method::GET, "/api/v1/plugins/ios").send().await.unwrap().json().await.unwrap();
    assert_eq!(p["plugin"]["state"], "active", "{p}");
    assert_eq!(p["plugin"]["stats"]["faults"], 0, "{p}");
    // Refused bodies do not hold the sender either: a real enrollment from it succeeds.
    Iphone::enroll(server).await;
}
e2e!(deep_plists_are_refused_before_the_plugin, super::deep_plists_are_refused_before_the_plugin);

/// A policy reaches an iPhone as one configuration profile (`org.drover.policy`) through
/// InstallProfile, read back with plistlib; Acknowledged makes each feature compliant, an
/// Error (Apple's ErrorChain) each one non-compliant with the device's words.
async fn policy_as_a_profile(server: &TestServer) {
    let phone = Iphone::enroll(server).await;
    let spec = |min_length: i64| {
        json!({"priority": 1, "action": "warn", "profiles": {"ios": [
            {"code": "RESTRICTIONS", "payload": {"allowCamera": false}},
            {"code": "PASSCODE_POLICY", "payload": {"minLength": min_length}}]}})
    };
    let mut body = spec(6);
    body["name"] = json!("ios-baseline");
    let r = server.admin(Method::POST, "/api/v1/policies").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());

    let offered = |command: &Value| {
        use base64::Engine;
        assert_eq!(command["Command"]["RequestType"], "InstallProfile", "{command}");
        let profile =
            base64::engine::general_purpose::STANDARD.decode(command["Command"]["Payload"].as_str().unwrap()).unwrap();
        plistlib(&profile)
    };
    let command = phone.report("Idle", None, plist::Dictionary::new()).await.expect("the policy is offered");
    let profile = offered(&command);
    assert_eq!(profile["PayloadIdentifier"], "org.drover.policy");
    assert_eq!(profile["PayloadContent"][0]["PayloadType"], "com.apple.applicationaccess");
    assert_eq!(profile["PayloadContent"][0]["allowCamera"], false);
    assert_eq!(profile["PayloadContent"][1]["PayloadType"], "com.apple.mobiledevice.passwordpolicy");
    assert_eq!(profile["PayloadContent"][1]["minLength"], 6);
    let uuid = command["CommandUUID"].as_str().unwrap().to_string();
    assert!(phone.report("Acknowledged", Some(&uuid), plist::Dictionary::new()).await.is_none());
    let c = server.compliance_when("ios", &phone.udid, |c| c["state"] == "compliant").await;
    let features: Vec<&str> = c["checks"].as_array().unwrap().iter().filter_map(|k| k["feature"].as_str()).collect();
    assert_eq!(features, ["RESTRICTIONS", "PASSCODE_POLICY"], "{c}");

    // An edit replaces the profile (same identifier); the device refuses it.
    let r = server.admin(Method::PUT, "/api/v1/policies/ios-baseline").json(&spec(8)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let command = phone.report("Idle", None, plist::Dictionary::new()).await.expect("the new profile is offered");
    let profile = offered(&command);
    assert_eq!(profile["PayloadIdentifier"], "org.drover.policy");
    assert_eq!(profile["PayloadContent"][1]["minLength"], 8);
    use plist::Value as P;
    let chain = dict(vec![(
        "ErrorChain",
        P::Array(vec![P::Dictionary(dict(vec![
            ("ErrorCode", P::Integer(4001.into())),
            ("ErrorDomain", "MCProfileErrorDomain".into()),
            ("LocalizedDescription", "The passcode policy could not be installed".into()),
        ]))]),
    )]);
    let uuid = command["CommandUUID"].as_str().unwrap().to_string();
    phone.report("Error", Some(&uuid), chain).await;
    let c = server.compliance_when("ios", &phone.udid, |c| c["state"] == "non_compliant").await;
    for k in c["checks"].as_array().unwrap() {
        assert_eq!(k["compliant"], false, "{c}");
        assert!(k["reason"].as_str().unwrap().contains("could not be installed"), "{c}");
    }
    let r = server.admin(Method::GET, "/api/v1/events?type=device.compliance_changed").send().await.unwrap();
    let log: Value = r.json().await.unwrap();
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["data"]["id"] == phone.udid.as_str() && e["data"]["state"] == "non_compliant"),
        "warn: an event says so: {log}"
    );
}
e2e!(policy_as_a_profile, super::policy_as_a_profile);
