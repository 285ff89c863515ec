//! {{name}}: a Drover device type. Translate; the host owns state and flow.

use drover_sdk::device_type::Guest;
use drover_sdk::device_type::drover::plugin::types::*;

pub struct Plugin;

impl Guest for Plugin {
    fn describe() -> DeviceTypeInfo {
        DeviceTypeInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Describe the devices this plugin speaks for".into(),
            operations: vec![OperationCode {
                code: "REBOOT".into(),
                kind: OperationKind::Command,
                description: "Reboot the device".into(),
                payload_schema: None,
            }],
            delivery: vec![Delivery::Poll],
            content_types: vec!["application/json".into()],
            max_operations_per_message: None,
        }
    }

    fn validate(code: String, payload: Option<String>) -> Result<(), PluginError> {
        match code.as_str() {
            "REBOOT" if payload.is_none() => Ok(()),
            "REBOOT" => Err(PluginError::invalid("REBOOT takes no payload")),
            _ => Err(PluginError::unknown_operation(&code)),
        }
    }

    fn enroll(_message: Channel, body: Vec<u8>) -> Result<Enrollment, PluginError> {
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| PluginError::malformed(format!("enrollment: {e}")))?;
        let id = v["id"].as_str().ok_or_else(|| PluginError::invalid("`id` is required"))?;
        Ok(Enrollment {
            device_id: id.into(),
            name: None,
            ownership: Ownership::Cope,
            owner: None,
            metadata: vec![],
            push: None,
        })
    }

    fn encode(_device: Device, operations: Vec<Operation>, _channel: ChannelKind) -> Result<Encoded, PluginError> {
        let ops: Vec<_> =
            operations.iter().map(|o| serde_json::json!({"id": o.id, "code": o.code, "payload": o.payload})).collect();
        Ok(Encoded {
            output: Outbound::Http(HttpResponse {
                status: 200,
                content_type: Some("application/json".into()),
                headers: vec![],
                body: serde_json::to_vec(&ops).unwrap_or_default(),
            }),
            delivered: operations.iter().map(|o| o.id).collect(),
            session: None,
        })
    }

    fn decode(_device: Device, _message: Channel, body: Vec<u8>) -> Result<DeviceMessage, PluginError> {
        let v: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| PluginError::malformed(format!("results: {e}")))?;
        let mut results = Vec::new();
        for (i, r) in v.iter().enumerate() {
            let id = r["id"].as_u64().ok_or_else(|| PluginError::malformed(format!("result {i}: `id`")))?;
            let status = match r["status"].as_str() {
                Some("COMPLETED") => ResultStatus::Completed,
                Some("ERROR") => ResultStatus::Error,
                _ => ResultStatus::InProgress,
            };
            results.push(OperationResult { operation_id: id, status, response: r.get("response").map(|x| x.to_string()) });
        }
        Ok(DeviceMessage {
            results,
            check_in: None,
            telemetry: vec![],
            info: vec![],
            reply: Reply::PendingOperations,
            session: None,
        })
    }
}

#[cfg(target_arch = "wasm32")]
drover_sdk::export_device_type!(Plugin);

// Native tests: `cargo test` runs the plugin's logic on your machine, no server needed.
#[cfg(test)]
mod tests {
    use super::*;

    fn http(path: &str) -> Channel {
        Channel::Http(HttpRequest {
            method: HttpMethod::Post,
            path: path.into(),
            query: String::new(),
            content_type: Some("application/json".into()),
            headers: vec![],
        })
    }

    #[test]
    fn describes_itself() {
        let info = Plugin::describe();
        assert_eq!(info.name, "{{name}}");
        assert!(info.operations.iter().any(|o| o.code == "REBOOT"));
    }

    #[test]
    fn validates_operations() {
        assert!(Plugin::validate("REBOOT".into(), None).is_ok());
        assert!(Plugin::validate("REBOOT".into(), Some("{}".into())).is_err());
        assert!(Plugin::validate("FLY".into(), None).is_err());
    }

    #[test]
    fn enrolls_and_refuses_garbage() {
        let e = Plugin::enroll(http("enroll"), br#"{"id": "unit-1"}"#.to_vec()).unwrap();
        assert_eq!(e.device_id, "unit-1");
        assert!(Plugin::enroll(http("enroll"), b"not json".to_vec()).is_err());
    }

    #[test]
    fn decodes_results() {
        let device = Device { id: "unit-1".into(), metadata: vec![], session: vec![] };
        let m = Plugin::decode(device, http("poll"), br#"[{"id": 7, "status": "COMPLETED"}]"#.to_vec()).unwrap();
        assert_eq!(m.results.len(), 1);
        assert_eq!(m.results[0].operation_id, 7);
    }
}
