//! A device type that misbehaves on request, to prove the host's limits. `decode`'s body
//! names the behaviour (and an enrollment whose body is `trap` traps): `spin`, `alloc`, `trap`, `big`, `log`, `kv:KEY=VALUE`, `kvget:KEY`,
//! `config:KEY`, `count`, `token:TRANSPORT:TOKEN|K=V…` (a push-token update), `poll` (answered with the
//! pending operations); anything else is echoed back as info.
//! An operation whose payload is the JSON string `"unencodable"` cannot be encoded. With config `describe = "spin"`
//! even the load-time smoke test spins.

use drover_sdk::device_type::drover::plugin::types::*;
use drover_sdk::device_type::drover::plugin::{config, kv};
use drover_sdk::device_type::{Guest, logging};
use std::hint::black_box;

struct Testbed;

fn message(info: Vec<(String, String)>) -> DeviceMessage {
    DeviceMessage { results: vec![], check_in: None, telemetry: vec![], info, reply: Reply::None, session: None }
}

fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

impl Guest for Testbed {
    fn describe() -> DeviceTypeInfo {
        if config::get("describe").as_deref() == Some("spin") {
            spin();
        }
        DeviceTypeInfo {
            name: "testbed".into(),
            version: "0.1.0".into(),
            description: "misbehaves on request".into(),
            operations: vec![
                OperationCode {
                    code: "ECHO".into(),
                    kind: OperationKind::Command,
                    description: "echo".into(),
                    payload_schema: None,
                },
                // A command where Android's catalogue has a profile of the same code: an
                // activity over both types is refused (tests/tests/operations.rs).
                OperationCode {
                    code: "CAMERA".into(),
                    kind: OperationKind::Command,
                    description: "a command named as Android's camera profile".into(),
                    payload_schema: None,
                },
            ],
            delivery: vec![Delivery::Poll, Delivery::WakeUp],
            content_types: vec!["text/plain".into()],
            max_operations_per_message: Some(1),
        }
    }

    fn validate(code: String, _payload: Option<String>) -> Result<(), PluginError> {
        if code == "ECHO" || code == "CAMERA" { Ok(()) } else { Err(PluginError::unknown_operation(&code)) }
    }

    fn enroll(_message: Channel, body: Vec<u8>) -> Result<Enrollment, PluginError> {
        let id = String::from_utf8(body).map_err(|_| PluginError::malformed("not UTF-8"))?;
        if id == "trap" {
            panic!("testbed was told to trap while enrolling");
        }
        Ok(Enrollment {
            device_id: id,
            name: None,
            ownership: Ownership::Cope,
            owner: None,
            metadata: vec![],
            push: None,
        })
    }

    fn encode(_device: Device, operations: Vec<Operation>, _channel: ChannelKind) -> Result<Encoded, PluginError> {
        // An operation this plugin cannot encode (the poison path, tests/tests/platform.rs).
        if operations.iter().any(|o| o.payload.as_deref() == Some("\"unencodable\"")) {
            return Err(PluginError::invalid("testbed cannot encode an unencodable payload"));
        }
        let body = operations.iter().map(|o| o.code.as_str()).collect::<Vec<_>>().join(",").into_bytes();
        Ok(Encoded {
            output: Outbound::Http(HttpResponse { status: 200, content_type: None, headers: vec![], body }),
            delivered: operations.iter().map(|o| o.id).collect(),
            session: None,
        })
    }

    fn decode(_device: Device, _message: Channel, body: Vec<u8>) -> Result<DeviceMessage, PluginError> {
        let text = String::from_utf8_lossy(&body).to_string();
        match text.as_str() {
            "spin" => spin(),
            "alloc" => {
                let v = vec![1u8; 1 << 30];
                black_box(&v);
                Ok(message(vec![("len".into(), v.len().to_string())]))
            }
            "trap" => panic!("testbed was told to trap"),
            "poll" => {
                // Answer with the pending operations (the host calls `encode`).
                let mut m = message(vec![]);
                m.reply = Reply::PendingOperations;
                Ok(m)
            }
            "count" => {
                // A fresh instance per call starts this at 0 every time.
                static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Ok(message(vec![("count".into(), n.to_string())]))
            }
            "big" => Ok(message(vec![("big".into(), "x".repeat(100 << 20))])),
            "log" => {
                logging::info("hello from testbed");
                Ok(message(vec![]))
            }
            t if t.starts_with("kv:") => {
                let (k, v) = t[3..].split_once('=').ok_or_else(|| PluginError::invalid("kv:KEY=VALUE"))?;
                kv::set(k, v.as_bytes()).map_err(PluginError::invalid)?;
                let back = kv::get(k).unwrap_or_default();
                Ok(message(vec![(k.into(), String::from_utf8_lossy(&back).into())]))
            }
            t if t.starts_with("kvget:") => {
                let k = &t[6..];
                let value = kv::get(k).map_or_else(|| "<unset>".into(), |v| String::from_utf8_lossy(&v).into_owned());
                Ok(message(vec![(k.into(), value)]))
            }
            t if t.starts_with("token:") => {
                // `token:TRANSPORT:TOKEN|Key=Value|…`: a push-token update (TokenUpdate).
                let (transport, rest) = t[6..].split_once(':').ok_or_else(|| PluginError::invalid("token:T:TOKEN"))?;
                let mut parts = rest.split('|');
                let token = parts.next().unwrap_or_default().to_string();
                let extra = parts.filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
                let mut m = message(vec![]);
                m.check_in = Some(CheckIn::TokenUpdate(PushToken { transport: transport.into(), token, extra }));
                Ok(m)
            }
            t if t.starts_with("config:") => {
                let k = &t[7..];
                Ok(message(vec![(k.into(), config::get(k).unwrap_or_else(|| "<unset>".into()))]))
            }
            _ => Ok(message(vec![("echo".into(), text)])),
        }
    }
}

drover_sdk::export_device_type!(Testbed);
