//! Typed calls into transport plugins, and the host-pattern rules for where their
//! provider requests may go.

use super::bindings::transport::drover::plugin::transport_types::{
    ProviderOutcome, ProviderRequest, PushMessage, TransportInfo,
};
use super::bindings::types::Header;
use super::device_type::{CallError, flatten};
use super::runtime::{Described, Exports, LoadedPlugin, OutputSize};
use super::sources::Source;

impl LoadedPlugin {
    /// What `describe` said at load, for a transport.
    pub fn transport_info(&self) -> Option<&TransportInfo> {
        match &self.described {
            Described::Transport(i) => Some(i),
            _ => None,
        }
    }

    /// Build the provider request that wakes one device. `config`: what the call's
    /// `config.get` reads in place of the plugin's values (the device's tenant's settings
    /// over the server's, with the access token the host obtained); `None`: the plugin's.
    pub async fn build_request(
        &self,
        message: PushMessage,
        config: Option<std::sync::Arc<std::collections::BTreeMap<String, String>>>,
    ) -> Result<ProviderRequest, CallError> {
        let Exports::Transport(pre) = &self.exports else {
            return Err(CallError::WrongKind(self.label()));
        };
        let pre = pre.clone();
        flatten(
            self.caller
                .call("build-request", Source::Admin, move |store| {
                    Box::pin(async move {
                        store.data_mut().config = config;
                        pre.instantiate_async(&mut *store).await?.call_build_request(&mut *store, &message).await
                    })
                })
                .await,
        )
    }

    /// What the provider's answer means.
    pub async fn classify(
        &self,
        status: u16,
        headers: Vec<Header>,
        body: Vec<u8>,
    ) -> Result<ProviderOutcome, CallError> {
        let Exports::Transport(pre) = &self.exports else {
            return Err(CallError::WrongKind(self.label()));
        };
        let pre = pre.clone();
        self.caller
            .call("classify", Source::Admin, move |store| {
                Box::pin(async move {
                    pre.instantiate_async(&mut *store).await?.call_classify(&mut *store, status, &headers, &body).await
                })
            })
            .await
            .map_err(CallError::Fault)
    }
}

/// Whether `host` matches a host pattern: an exact name, `*.example.com` (any name
/// below example.com, not example.com itself), or `*` (any host).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) if suffix.starts_with('.') => host.ends_with(suffix) && host.len() > suffix.len(),
        _ => pattern == host,
    }
}

/// Whether a granted pattern stays within what a manifest declares: every host it can
/// match is matched by a declared pattern.
pub fn grant_within(declared: &[String], granted: &str) -> bool {
    declared.iter().any(|d| {
        d == "*"
            || d.eq_ignore_ascii_case(granted)
            || (d.starts_with("*.") && granted.starts_with("*.") && host_matches(d, &granted[2..]))
            || (!granted.starts_with('*') && host_matches(d, granted))
    })
}

impl OutputSize for ProviderRequest {
    fn output_size(&self) -> usize {
        self.url.len() + self.body.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

impl OutputSize for ProviderOutcome {
    fn output_size(&self) -> usize {
        match self {
            ProviderOutcome::InvalidToken(s) | ProviderOutcome::Failed(s) => s.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(host_matches("fcm.googleapis.com", "FCM.googleapis.com"));
        assert!(!host_matches("fcm.googleapis.com", "evil-fcm.googleapis.com"));
        assert!(host_matches("*.notify.windows.com", "db5p.notify.windows.com"));
        assert!(!host_matches("*.notify.windows.com", "notify.windows.com"));
        assert!(!host_matches("*.notify.windows.com", "notify.windows.com.evil.example"));
        assert!(host_matches("*", "anything.example"));
    }

    #[test]
    fn grants_stay_within_the_manifest() {
        let wns = vec!["*.notify.windows.com".to_string()];
        assert!(grant_within(&wns, "*.notify.windows.com"));
        assert!(grant_within(&wns, "db5p.notify.windows.com"));
        assert!(grant_within(&wns, "*.eu.notify.windows.com"));
        assert!(!grant_within(&wns, "*"));
        assert!(!grant_within(&wns, "example.com"));
        let any = vec!["*".to_string()];
        assert!(grant_within(&any, "hooks.example.com") && grant_within(&any, "*"));
    }
}
