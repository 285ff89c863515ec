//! Windows (OMA-DM 1.2) end to end with the first-party windows plugin: a simulated
//! Windows MDM client POSTs SyncML over real HTTP. It enrolls with its session-opening
//! message, reports its WNS channel URI through a Get Drover sends, is woken through the
//! wns transport (a loopback server standing in for WNS), then runs a session spanning
//! several messages: every listed operation arrives as a SyncML command, is answered with
//! Status (and Results), and ends COMPLETED, IN_PROGRESS (202) or ERROR by its code.
//! Every answer Drover sends is checked with xmllint and read with Python's ElementTree,
//! parsers that are not ours. Malformed XML changes nothing; the unenrollment alert
//! removes the device.

use drover_tests::provider::Provider;
use drover_tests::{TestServer, e2e, unique};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FIXTURE_DEV: &str = "7F3A2B1C9D8E4F60A1B2C3D4E5F60718";
const SERVER_URI: &str = "https://mdm.example.com/agent/v1/windows/ManagementServer/MDM.svc";
const CHANNEL: &str = "https://db5p.notify.windows.com/?token=AwYAAABvX2bZ";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../plugins/windows/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn run(program: &str, args: &[&str], input: &[u8]) -> (bool, Vec<u8>, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs (install libxml2-utils / python3): {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Whether xmllint and python3 are missing here. Outside CI the tests that need them are
/// then skipped with a note (as the MQTT tests are without mosquitto); CI must have them
/// (`.ci/run` installs libxml2-utils).
fn parsers_missing() -> bool {
    let present = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    };
    let missing = !(present("xmllint", "--version") && present("python3", "--version"));
    if missing {
        assert!(std::env::var_os("CI").is_none(), "CI must install xmllint (libxml2-utils) and python3");
        eprintln!("NOTE: xmllint or python3 is not installed: the Windows SyncML tests were skipped");
    }
    missing
}

/// Check Drover's SyncML with xmllint, then read it with Python's ElementTree into
/// `{"session", "msg", "commands": [{"name", "cmd_id", "msg_ref", "cmd_ref", "cmd", "data", "targets", "items"}]}`.
fn independent(body: &[u8]) -> Value {
    let (ok, _, err) = run("xmllint", &["--noout", "-"], body);
    assert!(ok, "xmllint refused Drover's SyncML: {err}\n{}", String::from_utf8_lossy(body));
    let script = r#"
import json, sys, xml.etree.ElementTree as ET
ns = {"s": "SYNCML:SYNCML1.2", "m": "syncml:metinf"}
root = ET.fromstring(sys.stdin.buffer.read())
assert root.tag == "{SYNCML:SYNCML1.2}SyncML", root.tag
hdr = root.find("s:SyncHdr", ns)
def t(e, p):
    x = e.find(p, ns)
    return None if x is None else x.text
out = {"session": t(hdr, "s:SessionID"), "msg": t(hdr, "s:MsgID"), "proto": t(hdr, "s:VerProto"),
       "target": t(hdr, "s:Target/s:LocURI"), "final": root.find("s:SyncBody/s:Final", ns) is not None, "commands": []}
for c in root.find("s:SyncBody", ns):
    name = c.tag.split("}")[1]
    if name == "Final":
        continue
    out["commands"].append({"name": name, "cmd_id": t(c, "s:CmdID"), "msg_ref": t(c, "s:MsgRef"),
        "cmd_ref": t(c, "s:CmdRef"), "cmd": t(c, "s:Cmd"), "data": t(c, "s:Data"),
        "items": [{"target": t(i, "s:Target/s:LocURI"), "format": t(i, "s:Meta/m:Format"), "data": t(i, "s:Data")}
                  for i in c.findall("s:Item", ns)]})
print(json.dumps(out))
"#;
    let (ok, out, err) = run("python3", &["-c", script], body);
    assert!(ok, "ElementTree refused Drover's SyncML: {err}");
    serde_json::from_slice(&out).unwrap()
}

/// A simulated Windows MDM client.
struct Pc<'a> {
    server: &'a TestServer,
    id: String,
    credential: String,
    session: u32,
    msg: u32,
}

impl<'a> Pc<'a> {
    async fn enroll(server: &'a TestServer) -> Pc<'a> {
        let id =
            format!("{:032X}", unique("w").bytes().fold(0u128, |h, b| h.wrapping_mul(131).wrapping_add(b as u128)));
        let r = server
            .http
            .post(server.url("/agent/v1/windows/enroll"))
            .header("content-type", "application/vnd.syncml.dm+xml")
            .body(fixture("session-open.xml").replace(FIXTURE_DEV, &id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["device_id"], id.as_str());
        Pc { server, id, credential: v["access_token"].as_str().unwrap().to_string(), session: 0, msg: 0 }
    }

    async fn post(&self, body: String) -> (StatusCode, Vec<u8>) {
        let r = self
            .server
            .http
            .post(self.server.url("/agent/v1/windows/ManagementServer/MDM.svc"))
            .bearer_auth(&self.credential)
            .header("content-type", "application/vnd.syncml.dm+xml")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.bytes().await.unwrap().to_vec())
    }

    fn message(&self, body: &str) -> String {
        format!(
            r#"<SyncML xmlns="SYNCML:SYNCML1.2"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>{:X}</SessionID><MsgID>{}</MsgID><Target><LocURI>{SERVER_URI}</LocURI></Target><Source><LocURI>{}</LocURI></Source></SyncHdr><SyncBody>{body}<Final/></SyncBody></SyncML>"#,
            self.session, self.msg, self.id
        )
    }

    /// Send a message of the current session; Drover's answer, checked independently.
    async fn send(&mut self, body: &str) -> Value {
        self.msg += 1;
        let (s, answer) = self.post(self.message(body)).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&answer));
        let v = independent(&answer);
        assert_eq!(v["session"], format!("{:X}", self.session));
        assert_eq!(v["proto"], "DM/1.2");
        assert_eq!(v["target"], self.id.as_str());
        assert_eq!(v["final"], true);
        // The first command is always the Status for this message's header.
        let hdr = &v["commands"][0];
        assert_eq!((hdr["name"].as_str(), hdr["cmd_ref"].as_str()), (Some("Status"), Some("0")), "{v}");
        assert_eq!(hdr["msg_ref"], self.msg.to_string());
        v
    }

    /// Open a new session (1201 client-initiated, 1200 after a push).
    async fn open(&mut self, alert: &str) -> Value {
        self.session += 1;
        self.msg = 0;
        self.send(&format!("<Alert><CmdID>1</CmdID><Data>{alert}</Data></Alert>")).await
    }
}

fn commands(answer: &Value) -> Vec<Value> {
    answer["commands"].as_array().unwrap().iter().filter(|c| c["name"] != "Status").cloned().collect()
}

/// Status (and Results) the client sends for Drover's commands: `code` per command.
fn answers(
    msg_ref: &str,
    cmds: &[Value],
    code: impl Fn(&Value) -> u16,
    results: impl Fn(&str) -> Option<String>,
) -> String {
    let mut body = String::new();
    let mut id = 1;
    for c in cmds {
        id += 1;
        let cmd_ref = c["cmd_id"].as_str().unwrap();
        body.push_str(&format!(
            "<Status><CmdID>{id}</CmdID><MsgRef>{msg_ref}</MsgRef><CmdRef>{cmd_ref}</CmdRef><Cmd>{}</Cmd><Data>{}</Data></Status>",
            c["name"].as_str().unwrap(),
            code(c)
        ));
        if c["name"] == "Get" {
            id += 1;
            let items: String = c["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| {
                    let uri = i["target"].as_str().unwrap();
                    results(uri)
                        .map(|v| format!("<Item><Source><LocURI>{uri}</LocURI></Source><Data>{v}</Data></Item>"))
                })
                .collect();
            body.push_str(&format!(
                "<Results><CmdID>{id}</CmdID><MsgRef>{msg_ref}</MsgRef><CmdRef>{cmd_ref}</CmdRef>{items}</Results>"
            ));
        }
    }
    body
}

/// The device's DM tree, as far as the test's commands read it.
fn tree(uri: &str) -> Option<String> {
    Some(
        match uri {
            "./DevDetail/SwV" => "10.0.22631.4460",
            "./DevDetail/OEM" => "Dell Inc.",
            "./DevDetail/Ext/Microsoft/DeviceName" => "FIN-LT-0412",
            "./Vendor/MSFT/DeviceStatus/Battery/EstimatedChargeRemaining" => "76",
            "./Vendor/MSFT/DeviceStatus/Battery/Status" => "1",
            u if u.ends_with("/Push/ChannelURI") => CHANNEL,
            _ => return None,
        }
        .replace('&', "&amp;"),
    )
}

async fn every_operation(server: &TestServer) {
    if parsers_missing() {
        return;
    }
    let wns = Provider::start(vec![(200, vec![("x-wns-status", "received")], "")]).await;
    let r = server
        .admin(Method::PUT, "/api/v1/plugins/wns/settings")
        .json(&json!({
            "config": {"access_token": "EgAaAQMAAAAEgAAAC"},
            "granted_hosts": ["*.notify.windows.com"],
            "redirects": {"db5p.notify.windows.com": wns.base},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());

    let mut pc = Pc::enroll(server).await;
    assert_eq!(server.device("windows", &pc.id).await["metadata"]["Mod"], "Latitude 7440");

    // Session 1: the device checks in; Drover asks for its push channel.
    let channel = server.add_operation("windows", &pc.id, "PushChannel", None).await;
    let answer = pc.open("1201").await;
    let cmds = commands(&answer);
    assert_eq!(cmds.len(), 1, "{answer}");
    assert_eq!(cmds[0]["name"], "Get");
    assert_eq!(cmds[0]["items"][0]["target"], "./Vendor/MSFT/DMClient/Provider/Drover/Push/ChannelURI");
    let msg = answer["msg"].as_str().unwrap().to_string();
    let answer = pc.send(&answers(&msg, &cmds, |_| 200, tree)).await;
    assert!(commands(&answer).is_empty(), "nothing more: the session ends");
    assert_eq!(server.operation(channel).await["state"], "COMPLETED");
    assert_eq!(server.device("windows", &pc.id).await["push_transport"], "wns");

    // Every listed operation; the device is woken through WNS.
    let ops = [
        ("RemoteWipe", None, "Exec", "./Device/Vendor/MSFT/RemoteWipe/doWipe"),
        ("RemoteLock", None, "Exec", "./Vendor/MSFT/RemoteLock/Lock"),
        ("Reboot", None, "Exec", "./Device/Vendor/MSFT/Reboot/RebootNow"),
        ("DevDetail", None, "Get", "./DevDetail/SwV"),
        ("DeviceStatus", None, "Get", "./Vendor/MSFT/DeviceStatus/Battery/Status"),
        (
            "CameraPolicy",
            Some(json!({"allowed": false})),
            "Replace",
            "./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera",
        ),
        (
            "Add",
            Some(json!({"uri": "./Vendor/MSFT/Test/Node", "format": "chr", "data": "a<b&c"})),
            "Add",
            "./Vendor/MSFT/Test/Node",
        ),
        ("Delete", Some(json!({"uri": "./Vendor/MSFT/Test/Node"})), "Delete", "./Vendor/MSFT/Test/Node"),
    ];
    let mut ids = Vec::new();
    for (code, payload, _, _) in &ops {
        ids.push(server.add_operation("windows", &pc.id, code, payload.clone()).await);
    }
    let push = &wns.wait_for(1).await[0];
    assert_eq!(push.uri, "/?token=AwYAAABvX2bZ");
    assert_eq!(push.header("x-wns-type"), Some("wns/raw"));

    // Session 2, opened by the push (1200): all commands in one message, in order.
    let answer = pc.open("1200").await;
    let cmds = commands(&answer);
    assert_eq!(cmds.len(), ops.len(), "{answer}");
    for (c, (code, _, name, uri)) in cmds.iter().zip(&ops) {
        assert_eq!(c["name"], *name, "{code}");
        assert_eq!(c["items"][0]["target"], *uri, "{code}");
    }
    assert_eq!(cmds[5]["items"][0]["format"], "int");
    assert_eq!(cmds[5]["items"][0]["data"], "0");
    assert_eq!(cmds[6]["items"][0]["data"], "a<b&c", "markup in data is escaped and survives");
    for id in &ids {
        assert_eq!(server.operation(*id).await["state"], "IN_PROGRESS");
    }
    // The device answers: wipe accepted for later (202), reboot failed (500), the rest 200.
    let msg = answer["msg"].as_str().unwrap().to_string();
    let code = |c: &Value| match c["items"][0]["target"].as_str().unwrap() {
        u if u.ends_with("doWipe") => 202,
        u if u.ends_with("RebootNow") => 500,
        _ => 200,
    };
    let answer = pc.send(&answers(&msg, &cmds, code, tree)).await;
    assert!(commands(&answer).is_empty());
    // Statuses for the device's Results (two Gets) and its header, nothing else.
    assert_eq!(answer["commands"].as_array().unwrap().len(), 3, "{answer}");

    let states: Vec<String> =
        futures_states(server, &ids).await.into_iter().map(|o| o["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        states,
        ["IN_PROGRESS", "COMPLETED", "ERROR", "COMPLETED", "COMPLETED", "COMPLETED", "COMPLETED", "COMPLETED"]
    );
    let reboot = server.operation(ids[2]).await;
    let response: Value = serde_json::from_str(reboot["response"].as_str().unwrap()).unwrap();
    assert_eq!(response, json!({"status": 500, "meaning": "command failed", "cmd": "Exec"}));
    let detail = server.operation(ids[3]).await;
    let response: Value = serde_json::from_str(detail["response"].as_str().unwrap()).unwrap();
    assert_eq!(response["results"][0]["data"], "10.0.22631.4460");
    let d = server.device("windows", &pc.id).await;
    assert_eq!(d["metadata"]["SwV"], "10.0.22631.4460", "DevDetail updates the record");
    let battery = d["telemetry"].as_array().unwrap().iter().find(|t| t["name"] == "battery").cloned();
    assert_eq!(battery.map(|b| b["value"].clone()), Some(json!(76)));
}
e2e!(every_operation, super::every_operation);

async fn futures_states(server: &TestServer, ids: &[i64]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        out.push(server.operation(*id).await);
    }
    out
}

/// Malformed messages change nothing; a dropped session's commands are offered again; the
/// unenrollment alert removes the device.
async fn malformed_dropped_sessions_and_unenrollment(server: &TestServer) {
    if parsers_missing() {
        return;
    }
    let mut pc = Pc::enroll(server).await;
    let lock = server.add_operation("windows", &pc.id, "RemoteLock", None).await;
    let answer = pc.open("1201").await;
    assert_eq!(commands(&answer).len(), 1);
    assert_eq!(server.operation(lock).await["state"], "IN_PROGRESS");
    let reboot = server.add_operation("windows", &pc.id, "Reboot", None).await;

    // Malformed: refused with the reason; nothing queued or in flight changes.
    for (body, why) in [
        (fixture("truncated.xml").replace(FIXTURE_DEV, &pc.id), "not well-formed XML"),
        (fixture("wrong-protocol.xml").replace(FIXTURE_DEV, &pc.id), "DM/1.1"),
        (fixture("status-not-a-code.xml").replace(FIXTURE_DEV, &pc.id), "no numeric <Data> code"),
        (fixture("session-open.xml"), FIXTURE_DEV),
    ] {
        let (s, answer) = pc.post(body).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert_eq!(s, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer.contains(why), "{why}: {answer}");
    }
    assert_eq!(server.operation(lock).await["state"], "IN_PROGRESS");
    assert_eq!(server.operation(reboot).await["state"], "PENDING");

    // The device drops the session without answering. The lock goes back to the queue
    // (NOTNOW) and, as for any "not now", is offered from the next message on: the new
    // session's first answer carries the reboot, the one after it the lock again.
    let targets =
        |answer: &Value| -> Vec<Value> { commands(answer).iter().map(|c| c["items"][0]["target"].clone()).collect() };
    let answer = pc.open("1201").await;
    assert_eq!(targets(&answer), [json!("./Device/Vendor/MSFT/Reboot/RebootNow")]);
    assert_eq!(server.operation(lock).await["state"], "NOTNOW");
    let msg = answer["msg"].as_str().unwrap().to_string();
    let answer = pc.send(&answers(&msg, &commands(&answer), |_| 200, tree)).await;
    assert_eq!(targets(&answer), [json!("./Vendor/MSFT/RemoteLock/Lock")]);
    assert_eq!(server.operation(reboot).await["state"], "COMPLETED");
    let t = server.operation(lock).await["transitions"].as_array().unwrap().len();
    assert_eq!(t, 3, "IN_PROGRESS → NOTNOW → IN_PROGRESS");

    // The user unenrolls on the device: a generic alert; the device is removed.
    let (s, _) = pc.post(fixture("unenroll.xml").replace(FIXTURE_DEV, &pc.id)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(server.device("windows", &pc.id).await["status"], "removed");
    assert_eq!(server.operation(lock).await["state"], "CANCELLED");
    let (s, _) = pc.post(fixture("unenroll.xml").replace(FIXTURE_DEV, &pc.id)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
e2e!(malformed_dropped_sessions_and_unenrollment, super::malformed_dropped_sessions_and_unenrollment);

/// A policy reaches a Windows PC as one SyncML Replace of OMA-URI settings (checked by
/// xmllint and ElementTree); the device's Status for it decides each feature.
async fn policy_as_settings(server: &TestServer) {
    if parsers_missing() {
        return;
    }
    let mut pc = Pc::enroll(server).await;
    let spec = |min_length: i64| {
        json!({"priority": 1, "profiles": {"windows": [
            {"code": "CAMERA", "payload": {"enabled": false}},
            {"code": "PASSCODE_POLICY", "payload": {"minLength": min_length}}]}})
    };
    let mut body = spec(8);
    body["name"] = json!("win-baseline");
    let r = server.admin(Method::POST, "/api/v1/policies").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());

    let answer = pc.open("1201").await;
    let cmds = commands(&answer);
    assert_eq!(cmds.len(), 1, "{answer}");
    assert_eq!(cmds[0]["name"], "Replace");
    let items: Vec<(&str, &str)> = cmds[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["target"].as_str().unwrap(), i["data"].as_str().unwrap()))
        .collect();
    assert_eq!(
        items,
        [
            ("./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera", "0"),
            ("./Device/Vendor/MSFT/Policy/Config/DeviceLock/DevicePasswordEnabled", "0"),
            ("./Device/Vendor/MSFT/Policy/Config/DeviceLock/MinDevicePasswordLength", "8"),
        ]
    );
    let msg = answer["msg"].as_str().unwrap().to_string();
    pc.send(&answers(&msg, &cmds, |_| 200, tree)).await;
    let c = server.compliance_when("windows", &pc.id, |c| c["state"] == "compliant").await;
    assert_eq!(c["checks"].as_array().unwrap().len(), 2, "{c}");

    // An edit; the device fails the Replace (500): every feature is out, with the code.
    let r = server.admin(Method::PUT, "/api/v1/policies/win-baseline").json(&spec(12)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let answer = pc.open("1201").await;
    let cmds = commands(&answer);
    assert_eq!(cmds[0]["items"][2]["data"], "12", "{answer}");
    let msg = answer["msg"].as_str().unwrap().to_string();
    pc.send(&answers(&msg, &cmds, |_| 500, tree)).await;
    let c = server.compliance_when("windows", &pc.id, |c| c["state"] == "non_compliant").await;
    for k in c["checks"].as_array().unwrap() {
        assert_eq!(k["compliant"], false, "{c}");
        assert!(k["reason"].as_str().unwrap().contains("500"), "{c}");
    }
}
e2e!(policy_as_settings, super::policy_as_settings);
