//! Reads a file through WASI without requesting the `filesystem` capability.

use drover_sdk::device_type::Guest;
use drover_sdk::device_type::drover::plugin::types::*;

struct FsReader;

impl Guest for FsReader {
    fn describe() -> DeviceTypeInfo {
        DeviceTypeInfo {
            name: "fs-reader".into(),
            version: "0.1.0".into(),
            description: String::new(),
            operations: vec![],
            delivery: vec![Delivery::Poll],
            content_types: vec![],
            max_operations_per_message: None,
        }
    }
    fn validate(_: String, _: Option<String>) -> Result<(), PluginError> {
        Ok(())
    }
    fn enroll(_: Channel, _: Vec<u8>) -> Result<Enrollment, PluginError> {
        Err(PluginError::unsupported("no"))
    }
    fn encode(_: Device, _: Vec<Operation>, _: ChannelKind) -> Result<Encoded, PluginError> {
        Err(PluginError::unsupported("no"))
    }
    fn decode(_: Device, _: Channel, _: Vec<u8>) -> Result<DeviceMessage, PluginError> {
        let secret = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Err(PluginError::invalid(secret))
    }
}

drover_sdk::export_device_type!(FsReader);
