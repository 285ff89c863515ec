//! Egress: what the host sends to the outside on a plugin's behalf (wake-up provider
//! requests, OAuth token exchanges) goes only to hosts the plugin's manifest declares and
//! an admin granted, over clients built from the plugin's TLS settings, with bounded
//! times and answers.

use crate::plugin_settings::PluginSettings;
use crate::plugins::LoadedPlugin;
use crate::plugins::transport::host_matches;
use std::collections::BTreeMap;
use std::time::Duration;

/// Provider answers are read up to this size (they are short JSON or empty).
const MAX_ANSWER: usize = 64 << 10;

/// The HTTP client for provider requests: no redirects followed (a redirect could leave
/// the granted hosts), bounded times, and the plugin's TLS settings when it has any.
/// Errors name the setting at fault.
pub fn provider_client(settings: &PluginSettings) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &settings.client_identity {
        let identity = reqwest::Identity::from_pem(pem.as_bytes())
            .map_err(|e| format!("`client_identity`: {e} (expected PEM: the certificate chain and its private key)"))?;
        builder = builder.identity(identity);
    }
    if let Some(pem) = &settings.trusted_ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("`trusted_ca`: {e} (expected PEM certificates)"))?;
        if certs.is_empty() {
            return Err("`trusted_ca`: no PEM certificate in it".into());
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    // Building checks the identity: a key that does not belong to the certificate fails here.
    builder.build().map_err(|e| {
        let what = if settings.client_identity.is_some() { "client_identity" } else { "trusted_ca" };
        format!("`{what}`: {}", error_chain(&e))
    })
}

/// The `CERTIFICATE` blocks of a PEM text, without anything else (a private key).
pub fn certificates(pem: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = String::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else { break };
        out.push_str(&rest[start..start + len + END.len()]);
        out.push('\n');
        rest = &rest[start + len + END.len()..];
    }
    out
}

/// Provider clients of plugins with TLS settings of their own, built when first needed
/// and again when the settings change (keeping a client keeps its connections: APNs
/// wants one HTTP/2 connection reused, not a handshake per push).
#[derive(Default)]
pub struct Clients(std::sync::Mutex<BTreeMap<String, (PluginSettings, reqwest::Client)>>);

impl Clients {
    pub fn get(&self, default: &reqwest::Client, plugin: &str, s: &PluginSettings) -> Result<reqwest::Client, String> {
        if s.client_identity.is_none() && s.trusted_ca.is_none() {
            return Ok(default.clone());
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_for, client)) = map.get(plugin)
            && built_for.client_identity == s.client_identity
            && built_for.trusted_ca == s.trusted_ca
        {
            return Ok(client.clone());
        }
        let client = provider_client(s)?;
        map.insert(plugin.to_string(), (s.clone(), client.clone()));
        Ok(client)
    }
}

/// An error and its causes, `: `-separated (reqwest's own message omits the cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A provider's (or token endpoint's) answer, up to [`MAX_ANSWER`] bytes.
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER - body.len())]);
        if body.len() >= MAX_ANSWER {
            break;
        }
    }
    body
}

/// The URL to send a plugin's request to: its host must be declared by the manifest and
/// granted by an admin; an admin's redirect for that host then applies.
pub fn allowed_url(plugin: &LoadedPlugin, settings: &PluginSettings, url: &str) -> Result<reqwest::Url, String> {
    let name = &plugin.manifest.name;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{name} built an invalid URL `{url}`: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(format!("{name} built a `{}` URL; only http(s) is sent", parsed.scheme()));
    }
    let host = parsed.host_str().unwrap_or_default().to_string();
    if !plugin.manifest.outbound_hosts.iter().any(|p| host_matches(p, &host)) {
        return Err(format!(
            "{name} asked to send to `{host}`, which its manifest does not declare (outbound_hosts: {:?})",
            plugin.manifest.outbound_hosts
        ));
    }
    if !settings.granted_hosts.iter().any(|p| host_matches(p, &host)) {
        return Err(format!(
            "host `{host}` is not granted to plugin {name}: an admin grants it with PUT /api/v1/plugins/{name}/settings (granted_hosts)"
        ));
    }
    match settings.redirects.get(&host) {
        None => Ok(parsed),
        Some(base) => {
            let mut target =
                reqwest::Url::parse(base).map_err(|e| format!("redirect for `{host}` is not a URL: {e}"))?;
            target.set_path(parsed.path());
            target.set_query(parsed.query());
            Ok(target)
        }
    }
}
