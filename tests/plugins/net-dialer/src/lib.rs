//! Opens a socket through WASI without requesting the `network` capability.

use drover_sdk::device_type::Guest;
use drover_sdk::device_type::drover::plugin::types::*;

struct NetDialer;

impl Guest for NetDialer {
    fn describe() -> DeviceTypeInfo {
        DeviceTypeInfo {
            name: "net-dialer".into(),
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
        use wasi::sockets::network::IpAddressFamily;
        let socket = wasi::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4);
        Err(PluginError::invalid(format!("{}", socket.is_ok())))
    }
}

drover_sdk::export_device_type!(NetDialer);
