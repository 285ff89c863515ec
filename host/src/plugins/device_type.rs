//! Typed calls into device-type plugins: what the rest of the host uses.
//!
//! Every call goes through [`Caller::call`](super::runtime::Caller) (fresh store, limits,
//! fault accounting). A plugin's own refusal of an input (`plugin-error`) is not a fault:
//! it is the plugin doing its job, and comes back as [`CallError::Rejected`].

use super::bindings::types::{
    Channel, ChannelKind, Device, DeviceMessage, DeviceTypeInfo, Encoded, Enrollment, HttpResponse, Operation,
    Outbound, PluginError, Reply,
};
use super::runtime::{Exports, LoadedPlugin, OutputSize, PluginFault};
use super::sources::Source;

/// Why a device-type call gave no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin refused the input (malformed, invalid, unknown operation …).
    #[error("{}", .0.message)]
    Rejected(PluginError),
    /// The plugin faulted (trap, CPU, memory, wall-clock or output limit).
    #[error(transparent)]
    Fault(#[from] PluginFault),
    /// The plugin is not a device type.
    #[error("plugin {0} is not a device type")]
    WrongKind(String),
}

/// A call's result with the plugin's own refusal and a fault told apart.
pub(super) fn flatten<T>(r: Result<Result<T, PluginError>, PluginFault>) -> Result<T, CallError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError::Rejected(e)),
        Err(f) => Err(CallError::Fault(f)),
    }
}

/// Call one export of a device type: `$pattern` picks the pre-instantiation `$pre` out of
/// the plugin's exports (`WrongKind` when it does not match), `$instantiate` makes the
/// instance `$b` in the call's fresh store.
macro_rules! exports_call {
    ($self:ident, $pattern:pat => $pre:ident, $instantiate:ident, $name:literal, $source:expr,
     |$b:ident, $store:ident| $call:expr) => {{
        let $pattern = &$self.exports else {
            return Err(CallError::WrongKind($self.label()));
        };
        let pre = $pre.clone();
        flatten(
            $self
                .caller
                .call($name, $source, move |$store| {
                    Box::pin(async move {
                        let $b = pre.$instantiate(&mut *$store).await?;
                        $call.await
                    })
                })
                .await,
        )
    }};
}

macro_rules! device_call {
    ($self:ident, $name:literal, $source:expr, |$b:ident, $store:ident| $call:expr) => {
        exports_call!($self, Exports::DeviceType(pre, _) => pre, instantiate_checked_at_load, $name, $source,
            |$b, $store| $call)
    };
}

impl LoadedPlugin {
    /// What `describe` said at load, for a device type.
    pub fn device_type_info(&self) -> Option<&DeviceTypeInfo> {
        match &self.described {
            super::runtime::Described::DeviceType(i) => Some(i),
            _ => None,
        }
    }

    /// Call `describe` again (the registry uses the answer cached at load).
    pub async fn describe_device_type(&self) -> Result<DeviceTypeInfo, CallError> {
        device_call!(self, "describe", Source::Admin, |b, store| async { b.call_describe(&mut *store).await.map(Ok) })
    }

    /// Check an operation code and payload an admin is adding.
    pub async fn validate(&self, code: &str, payload: Option<&str>) -> Result<(), CallError> {
        let (code, payload) = (code.to_string(), payload.map(str::to_string));
        device_call!(self, "validate", Source::Admin, |b, store| b.call_validate(
            &mut *store,
            &code,
            payload.as_deref()
        ))
    }

    /// Validate and translate an enrollment request from `source` (its peer, or the
    /// device when it already holds a credential).
    pub async fn enroll(&self, source: Source, message: Channel, body: Vec<u8>) -> Result<Enrollment, CallError> {
        device_call!(self, "enroll", source, |b, store| b.call_enroll(&mut *store, &message, &body))
    }

    /// Encode pending operations (oldest first) for a channel.
    pub async fn encode(
        &self,
        source: Source,
        device: Device,
        operations: Vec<Operation>,
        channel: ChannelKind,
    ) -> Result<Encoded, CallError> {
        device_call!(self, "encode", source, |b, store| b.call_encode(&mut *store, &device, &operations, channel))
    }

    /// Decode a device message; `source` is the device that sent it.
    pub async fn decode(
        &self,
        source: Source,
        device: Device,
        message: Channel,
        body: Vec<u8>,
    ) -> Result<DeviceMessage, CallError> {
        device_call!(self, "decode", source, |b, store| b.call_decode(&mut *store, &device, &message, &body))
    }
}

/// The enrollment exchange's types (`device-type-enrolling`).
pub use super::bindings::device_type_enrolling::exports::drover::plugin::enrollment_exchange::{
    Admission, EnrollContext, Issued as ExchangeIssued, Refusal, Step as EnrollStep,
};

/// Call one export of a device type's enrollment exchange; `WrongKind` when the plugin has
/// none (`enroll/…` is then not one of its paths). Enrollments are rare: the generated
/// instantiation (which checks the exports' types again) costs nothing that matters here.
macro_rules! exchange_call {
    ($self:ident, $name:literal, $source:expr, |$b:ident, $store:ident| $call:expr) => {
        exports_call!($self, Exports::DeviceType(_, Some(pre)) => pre, instantiate_async, $name, $source,
            |$b, $store| $call)
    };
}

impl LoadedPlugin {
    /// Whether this device type's enrollment is an exchange (`device-type-enrolling`).
    pub fn has_enroll_exchange(&self) -> bool {
        matches!(&self.exports, Exports::DeviceType(_, Some(_)))
    }

    /// Read one request of the enrollment exchange, from `source` (the peer). `config`:
    /// what `config.get` reads in place of the plugin's values (the settings of the tenant
    /// the request's enrollment token enrolls into); `None`: the plugin's.
    pub async fn enroll_step(
        &self,
        source: Source,
        context: EnrollContext,
        message: Channel,
        body: Vec<u8>,
        config: Option<std::sync::Arc<std::collections::BTreeMap<String, String>>>,
    ) -> Result<EnrollStep, CallError> {
        exchange_call!(self, "enroll-step", source, |b, store| {
            store.data_mut().config = config;
            b.drover_plugin_enrollment_exchange().call_enroll_step(&mut *store, &context, &message, &body)
        })
    }

    /// The answer to an admission: what the host issued, or why it refused.
    pub async fn enrolled(
        &self,
        source: Source,
        context: EnrollContext,
        message: Channel,
        body: Vec<u8>,
        outcome: Result<ExchangeIssued, Refusal>,
    ) -> Result<HttpResponse, CallError> {
        exchange_call!(self, "enrolled", source, |b, store| b.drover_plugin_enrollment_exchange().call_enrolled(
            &mut *store,
            &context,
            &message,
            &body,
            outcome.as_ref()
        ))
    }
}

impl OutputSize for EnrollStep {
    fn output_size(&self) -> usize {
        match self {
            EnrollStep::Reply(r) => r.body.len() + pairs(&r.headers),
            EnrollStep::Admit(a) => {
                a.enrollment.output_size()
                    + a.token.as_ref().map_or(0, String::len)
                    + a.csr.as_ref().map_or(0, Vec::len)
            }
        }
    }
}

impl OutputSize for HttpResponse {
    fn output_size(&self) -> usize {
        self.body.len() + pairs(&self.headers)
    }
}

impl From<super::bindings::types::OperationKind> for crate::ops::Kind {
    fn from(k: super::bindings::types::OperationKind) -> crate::ops::Kind {
        use super::bindings::types::OperationKind as K;
        match k {
            K::Command => crate::ops::Kind::Command,
            K::Profile => crate::ops::Kind::Profile,
            K::Policy => crate::ops::Kind::Policy,
        }
    }
}

impl From<crate::ops::Kind> for super::bindings::types::OperationKind {
    fn from(k: crate::ops::Kind) -> super::bindings::types::OperationKind {
        use super::bindings::types::OperationKind as K;
        match k {
            crate::ops::Kind::Command => K::Command,
            crate::ops::Kind::Profile => K::Profile,
            crate::ops::Kind::Policy => K::Policy,
        }
    }
}

/// The WIT name of an operation kind (`command`, `profile`, `policy`).
pub fn kind_name(k: super::bindings::types::OperationKind) -> &'static str {
    crate::ops::Kind::from(k).as_str()
}

/// The WIT name of a delivery mechanism.
pub fn delivery_name(d: super::bindings::types::Delivery) -> &'static str {
    use super::bindings::types::Delivery as D;
    match d {
        D::Poll => "poll",
        D::Push => "push",
        D::WakeUp => "wake-up",
        D::Coap => "coap",
    }
}

/// Many calls in one instance, with no isolation between them: for benchmarks that
/// separate the cost of the codec from the cost of a fresh instance, and for tools that
/// replay recorded payloads. The server never uses it.
pub struct ReusedInstance {
    store: wasmtime::Store<super::runtime::CallState>,
    bindings: super::bindings::device_type::DeviceType,
}

impl ReusedInstance {
    /// Instantiate `plugin` once. Calls get no CPU deadline (a benchmark's loop is long).
    pub async fn new(plugin: &LoadedPlugin) -> Result<ReusedInstance, CallError> {
        let Exports::DeviceType(pre, _) = &plugin.exports else {
            return Err(CallError::WrongKind(plugin.label()));
        };
        let mut store = plugin.caller.new_store();
        store.set_epoch_deadline(u64::MAX / 2);
        let bindings = pre.instantiate_async(&mut store).await.map_err(|e| fault(plugin, "instantiate", e))?;
        Ok(ReusedInstance { store, bindings })
    }

    pub async fn encode(
        &mut self,
        device: &Device,
        ops: &[Operation],
        channel: ChannelKind,
    ) -> wasmtime::Result<Result<Encoded, PluginError>> {
        self.bindings.call_encode(&mut self.store, device, ops, channel).await
    }

    pub async fn decode(
        &mut self,
        device: &Device,
        message: &Channel,
        body: &[u8],
    ) -> wasmtime::Result<Result<DeviceMessage, PluginError>> {
        self.bindings.call_decode(&mut self.store, device, message, body).await
    }
}

fn fault(plugin: &LoadedPlugin, function: &'static str, e: wasmtime::Error) -> CallError {
    CallError::Fault(PluginFault {
        plugin: plugin.manifest.name.clone(),
        version: plugin.manifest.version.clone(),
        function,
        fault: super::runtime::Fault::Trap(format!("{e:#}")),
    })
}

fn strings<'a>(it: impl IntoIterator<Item = &'a String>) -> usize {
    it.into_iter().map(String::len).sum()
}

fn pairs(p: &[(String, String)]) -> usize {
    p.iter().map(|(k, v)| k.len() + v.len()).sum()
}

fn outbound_size(o: &Outbound) -> usize {
    match o {
        Outbound::Http(r) => r.body.len() + pairs(&r.headers),
        Outbound::Mqtt(p) => p.iter().map(|m| m.topic_suffix.len() + m.payload.len()).sum(),
        Outbound::Coap(r) => r.iter().map(|c| c.path.len() + c.payload.len()).sum(),
    }
}

impl<T: OutputSize> OutputSize for Result<T, PluginError> {
    fn output_size(&self) -> usize {
        match self {
            Ok(v) => v.output_size(),
            Err(e) => e.message.len(),
        }
    }
}

impl OutputSize for () {
    fn output_size(&self) -> usize {
        0
    }
}

impl OutputSize for DeviceTypeInfo {
    fn output_size(&self) -> usize {
        self.name.len()
            + self.description.len()
            + strings(&self.content_types)
            + self
                .operations
                .iter()
                .map(|o| o.code.len() + o.description.len() + o.payload_schema.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

impl OutputSize for Enrollment {
    fn output_size(&self) -> usize {
        self.device_id.len() + self.name.as_ref().map_or(0, String::len) + pairs(&self.metadata)
    }
}

impl OutputSize for Encoded {
    fn output_size(&self) -> usize {
        outbound_size(&self.output) + self.delivered.len() * 8 + self.session.as_ref().map_or(0, Vec::len)
    }
}

impl OutputSize for DeviceMessage {
    fn output_size(&self) -> usize {
        let results: usize = self.results.iter().map(|r| 16 + r.response.as_ref().map_or(0, String::len)).sum();
        let telemetry: usize = self.telemetry.iter().map(|t| t.name.len() + 16).sum();
        let reply = match &self.reply {
            Reply::Immediate(o) => outbound_size(o),
            _ => 0,
        };
        results + telemetry + pairs(&self.info) + reply + self.session.as_ref().map_or(0, Vec::len)
    }
}

impl OutputSize for super::bindings::transport::drover::plugin::transport_types::TransportInfo {
    fn output_size(&self) -> usize {
        self.name.len() + self.description.len() + strings(&self.hosts)
    }
}

impl OutputSize for super::bindings::policy_rule::drover::plugin::policy_types::RuleInfo {
    fn output_size(&self) -> usize {
        self.name.len() + self.description.len() + self.params_schema.as_ref().map_or(0, String::len)
    }
}
