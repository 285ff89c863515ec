//! Its manifest says `device-type`, but it implements the `transport` world.

use drover_sdk::transport::Guest;
use drover_sdk::transport::drover::plugin::transport_types::*;
use drover_sdk::transport::drover::plugin::types::{Header, PluginError};

struct WrongWorld;

impl Guest for WrongWorld {
    fn describe() -> TransportInfo {
        TransportInfo { name: "wrong-world".into(), version: "0.1.0".into(), description: String::new(), hosts: vec![] }
    }
    fn build_request(_: PushMessage) -> Result<ProviderRequest, PluginError> {
        Err(PluginError::unsupported("no"))
    }
    fn classify(_: u16, _: Vec<Header>, _: Vec<u8>) -> ProviderOutcome {
        ProviderOutcome::Delivered
    }
}

drover_sdk::export_transport!(WrongWorld);
