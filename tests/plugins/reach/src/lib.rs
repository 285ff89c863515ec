//! Tries what the `filesystem` and `network` grants give it (tests/tests/platform.rs).
//! `decode`'s body says what: `read:PATH`, `write:PATH`, `list:PATH`, `dial:HOST:PORT`
//! (connect, send `ping`, read the answer), `listen` (bind port 0 and listen), `bind:PORT`.
//! The outcome is reported as info `result`: what was read, or `error: …`.

use drover_sdk::device_type::Guest;
use drover_sdk::device_type::drover::plugin::types::*;
use wasi::sockets::instance_network::instance_network;
use wasi::sockets::ip_name_lookup::resolve_addresses;
use wasi::sockets::network::{ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
use wasi::sockets::tcp_create_socket::create_tcp_socket;

struct Reach;

fn v4(address: (u8, u8, u8, u8), port: u16) -> IpSocketAddress {
    IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address })
}

fn lookup(host: &str) -> Result<(u8, u8, u8, u8), String> {
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        let [a, b, c, d] = ip.octets();
        return Ok((a, b, c, d));
    }
    let found = resolve_addresses(&instance_network(), host).map_err(|e| format!("lookup: {e:?}"))?;
    loop {
        match found.resolve_next_address() {
            Ok(Some(IpAddress::Ipv4(a))) => return Ok(a),
            Ok(Some(IpAddress::Ipv6(_))) => continue,
            Ok(None) => return Err(format!("lookup: no IPv4 address for {host}")),
            Err(ErrorCode::WouldBlock) => found.subscribe().block(),
            Err(e) => return Err(format!("lookup: {e:?}")),
        }
    }
}

fn dial(target: &str) -> Result<String, String> {
    let (host, port) = target.rsplit_once(':').ok_or("dial:HOST:PORT")?;
    let port: u16 = port.parse().map_err(|_| "dial: bad port")?;
    let address = lookup(host)?;
    let network = instance_network();
    let socket = create_tcp_socket(IpAddressFamily::Ipv4).map_err(|e| format!("socket: {e:?}"))?;
    socket.start_connect(&network, v4(address, port)).map_err(|e| format!("connect: {e:?}"))?;
    let (input, output) = loop {
        match socket.finish_connect() {
            Ok(streams) => break streams,
            Err(ErrorCode::WouldBlock) => socket.subscribe().block(),
            Err(e) => return Err(format!("connect: {e:?}")),
        }
    };
    output.blocking_write_and_flush(b"ping\n").map_err(|e| format!("write: {e:?}"))?;
    let answer = input.blocking_read(64).map_err(|e| format!("read: {e:?}"))?;
    Ok(String::from_utf8_lossy(&answer).trim().to_string())
}

fn listen(port: u16) -> Result<String, String> {
    let network = instance_network();
    let socket = create_tcp_socket(IpAddressFamily::Ipv4).map_err(|e| format!("socket: {e:?}"))?;
    socket.start_bind(&network, v4((0, 0, 0, 0), port)).map_err(|e| format!("bind: {e:?}"))?;
    socket.finish_bind().map_err(|e| format!("bind: {e:?}"))?;
    socket.start_listen().map_err(|e| format!("listen: {e:?}"))?;
    socket.finish_listen().map_err(|e| format!("listen: {e:?}"))?;
    Ok("listening".into())
}

fn attempt(what: &str) -> Result<String, String> {
    if let Some(path) = what.strip_prefix("read:") {
        std::fs::read_to_string(path).map_err(|e| format!("read: {e}"))
    } else if let Some(path) = what.strip_prefix("write:") {
        std::fs::write(path, "written by the plugin").map(|_| "written".into()).map_err(|e| format!("write: {e}"))
    } else if let Some(path) = what.strip_prefix("list:") {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .map_err(|e| format!("list: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names.join(","))
    } else if let Some(target) = what.strip_prefix("dial:") {
        dial(target)
    } else if what == "listen" {
        listen(0)
    } else if let Some(port) = what.strip_prefix("bind:") {
        listen(port.parse().map_err(|_| "bind: bad port")?)
    } else {
        Err(format!("unknown request {what:?}"))
    }
}

impl Guest for Reach {
    fn describe() -> DeviceTypeInfo {
        DeviceTypeInfo {
            name: "reach".into(),
            version: "0.1.0".into(),
            description: "tries what its grants give".into(),
            operations: vec![],
            delivery: vec![Delivery::Poll],
            content_types: vec!["text/plain".into()],
            max_operations_per_message: None,
        }
    }
    fn validate(code: String, _: Option<String>) -> Result<(), PluginError> {
        Err(PluginError::unknown_operation(&code))
    }
    fn enroll(_: Channel, body: Vec<u8>) -> Result<Enrollment, PluginError> {
        let id = String::from_utf8(body).map_err(|_| PluginError::malformed("not UTF-8"))?;
        Ok(Enrollment {
            device_id: id,
            name: None,
            ownership: Ownership::Cope,
            owner: None,
            metadata: vec![],
            push: None,
        })
    }
    fn encode(_: Device, _: Vec<Operation>, _: ChannelKind) -> Result<Encoded, PluginError> {
        Err(PluginError::unsupported("reach has no operations"))
    }
    fn decode(_: Device, _: Channel, body: Vec<u8>) -> Result<DeviceMessage, PluginError> {
        let what = String::from_utf8_lossy(&body);
        let result = attempt(what.trim()).unwrap_or_else(|e| format!("error: {e}"));
        Ok(DeviceMessage {
            results: vec![],
            check_in: None,
            telemetry: vec![],
            info: vec![("result".into(), result)],
            reply: Reply::None,
            session: None,
        })
    }
}

drover_sdk::export_device_type!(Reach);
