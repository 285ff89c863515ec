//! What admins set for each plugin: config values, granted hosts, redirects, the TLS
//! client identity and extra CAs of its provider requests, and how the host obtains its
//! access tokens. Written through the API (any replica), kept in the database, followed
//! by every replica ([`follow`]), read by the wake-up sender and the runtime's config.

use crate::core::Core;
use crate::egress::certificates;
use crate::error::{Error, Result};
use crate::oauth::OAuth;
use crate::plugins::LoadedPlugin;
use crate::store::SettingsRow;
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

/// What an admin set for one plugin, as the sender uses it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Config values the plugin reads (`config.get`): API keys, project ids, topics.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Hosts a transport may send to: names or `*.domain` patterns, each within what its
    /// manifest declares.
    #[serde(default)]
    pub granted_hosts: Vec<String>,
    /// Provider host → base URL (`http(s)://host[:port]`) its requests go to instead:
    /// an egress gateway, a provider sandbox, a test server. Path and query are kept.
    #[serde(default)]
    pub redirects: BTreeMap<String, String>,
    /// The TLS client identity the host presents to this plugin's provider hosts: PEM
    /// certificate chain and private key (APNs takes MDM pushes only from the MDM push
    /// certificate). The plugin never sees it; the API shows only the certificates, and
    /// taking back what it shows keeps the stored key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_identity: Option<String>,
    /// Certificate authorities (PEM) that provider hosts, or what they are redirected to,
    /// are verified against besides the public roots: a gateway or sandbox with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<String>,
    /// What the host obtains access tokens with, renewing them as they expire; the plugin
    /// reads the current one as config value `access_token` (`oauth.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuth>,
}

impl PluginSettings {
    pub fn from_row(row: &SettingsRow) -> PluginSettings {
        PluginSettings {
            config: serde_json::from_str(&row.config).unwrap_or_default(),
            granted_hosts: serde_json::from_str(&row.granted_hosts).unwrap_or_default(),
            redirects: serde_json::from_str(&row.redirects).unwrap_or_default(),
            client_identity: row.client_identity.clone(),
            trusted_ca: row.trusted_ca.clone(),
            oauth: row.oauth.as_deref().and_then(|o| serde_json::from_str(o).ok()),
        }
    }

    /// These settings with private keys and secrets left out.
    pub fn shown(mut self) -> PluginSettings {
        self.client_identity = self.client_identity.as_deref().map(certificates);
        self.oauth = self.oauth.map(OAuth::shown);
        self
    }
}

/// What a tenant's admin sets for a plugin, for the tenant's devices: config values over
/// the server's (key by key), and its own TLS client identity and OAuth settings in place
/// of the server's (an MSP customer's MDM push certificate, its Firebase project). Where a
/// plugin may send (granted hosts, redirects, CAs) is the server's alone: a tenant cannot
/// point a provider at an address of its choosing.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPluginSettings {
    /// Config values the plugin reads (`config.get`) for this tenant's devices, over the
    /// server's.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The TLS client identity of this tenant's provider requests (PEM chain and key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_identity: Option<String>,
    /// How the host obtains access tokens for this tenant's provider requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuth>,
}

impl TenantPluginSettings {
    fn from_row(row: &crate::store::TenantSettingsRow) -> TenantPluginSettings {
        TenantPluginSettings {
            config: serde_json::from_str(&row.config).unwrap_or_default(),
            client_identity: row.client_identity.clone(),
            oauth: row.oauth.as_deref().and_then(|o| serde_json::from_str(o).ok()),
        }
    }

    /// `server`'s settings as a call for this tenant uses them.
    pub fn over(&self, server: PluginSettings) -> PluginSettings {
        let mut s = server;
        s.config.extend(self.config.clone());
        if self.client_identity.is_some() {
            s.client_identity.clone_from(&self.client_identity);
        }
        if self.oauth.is_some() {
            s.oauth.clone_from(&self.oauth);
        }
        s
    }
}

/// Follow what admins set on any replica: settings are written to the database by the
/// replica that took the PUT and read back here by every replica, every `every`. A plugin
/// whose stored settings differ from what this replica holds gets them, config included
/// (the next plugin call sees them).
pub async fn follow(state: Core, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let changes = state.store.changes().clone();
    loop {
        // Every tick, or at once when a replica announces a change (store/changes.rs).
        tokio::select! {
            _ = tick.tick() => {}
            _ = changes.wait(crate::store::Change::Settings) => {}
        }
        let rows = match state.store.plugin_settings().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("reading plugin settings failed (retried): {e}");
                continue;
            }
        };
        match state.store.tenant_plugin_settings().await {
            Ok(rows) => {
                let stored: BTreeMap<(String, String), TenantPluginSettings> = rows
                    .iter()
                    .map(|r| ((r.plugin.clone(), r.tenant.clone()), TenantPluginSettings::from_row(r)))
                    .collect();
                state.settings.set_tenants(stored);
            }
            Err(e) => tracing::warn!("reading tenants' plugin settings failed (retried): {e}"),
        }
        for row in rows {
            let stored = PluginSettings::from_row(&row);
            if state.settings.get(&row.plugin) != stored {
                tracing::info!(plugin = %row.plugin, "plugin settings changed on another replica: applied");
                // Settings before config, as the API does (see `attempt`).
                let (config, hosts) = (stored.config.clone(), stored.granted_hosts.clone());
                state.settings.set(&row.plugin, stored);
                state.registry.runtime().set_config(&row.plugin, config);
                state.registry.runtime().set_hosts(&row.plugin, hosts);
            }
        }
    }
}

/// Settings of every plugin, by name, and what tenants set over them, by plugin and
/// tenant; read on every wake-up, written by the API.
#[derive(Default)]
pub struct Settings {
    server: RwLock<BTreeMap<String, PluginSettings>>,
    tenants: RwLock<BTreeMap<(String, String), TenantPluginSettings>>,
}

impl Settings {
    /// The server's settings of `plugin`.
    pub fn get(&self, plugin: &str) -> PluginSettings {
        self.server.read().unwrap_or_else(|p| p.into_inner()).get(plugin).cloned().unwrap_or_default()
    }

    pub fn set(&self, plugin: &str, settings: PluginSettings) {
        self.server.write().unwrap_or_else(|p| p.into_inner()).insert(plugin.to_string(), settings);
    }

    /// What `tenant` set for `plugin`, if anything.
    pub fn tenant(&self, plugin: &str, tenant: &str) -> Option<TenantPluginSettings> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner()).get(&(plugin.to_string(), tenant.to_string())).cloned()
    }

    /// The settings a call for a device of `tenant` uses, and whether the tenant set any
    /// (then its clients and tokens are kept apart from the server's).
    pub fn for_tenant(&self, plugin: &str, tenant: &str) -> (PluginSettings, bool) {
        match self.tenant(plugin, tenant) {
            Some(t) => (t.over(self.get(plugin)), true),
            None => (self.get(plugin), false),
        }
    }

    /// Config values a call for `tenant` reads in place of the plugin's, when the tenant
    /// set any: the server's with the tenant's over them.
    pub fn tenant_config(&self, plugin: &str, tenant: &str) -> Option<std::sync::Arc<BTreeMap<String, String>>> {
        self.tenant(plugin, tenant).map(|t| std::sync::Arc::new(t.over(self.get(plugin)).config))
    }

    fn set_tenant(&self, plugin: &str, tenant: &str, settings: Option<TenantPluginSettings>) {
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        let key = (plugin.to_string(), tenant.to_string());
        match settings {
            Some(s) => map.insert(key, s),
            None => map.remove(&key),
        };
    }

    fn set_tenants(&self, all: BTreeMap<(String, String), TenantPluginSettings>) {
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        if *map != all {
            tracing::info!("tenants' plugin settings changed on another replica: applied");
            *map = all;
        }
    }

    /// At start: what is stored.
    pub fn load_tenants(&self, rows: &[crate::store::TenantSettingsRow]) {
        *self.tenants.write().unwrap_or_else(|p| p.into_inner()) =
            rows.iter().map(|r| ((r.plugin.clone(), r.tenant.clone()), TenantPluginSettings::from_row(r))).collect();
    }
}

/// Config keys whose values the API never shows back: those the plugin's manifest declares
/// secret (`secret_config`), and, for a plugin that declares none or forgets one, those
/// whose names look secret.
pub fn secret_key(plugin: &crate::plugins::LoadedPlugin, key: &str) -> bool {
    if plugin.manifest.secret_config.iter().any(|k| k == key) {
        return true;
    }
    let k = key.to_ascii_lowercase();
    ["token", "secret", "password", "key", "credential", "private", "pass", "auth"].iter().any(|s| k.contains(s))
}

fn loaded(state: &Core, name: &str) -> Result<std::sync::Arc<LoadedPlugin>> {
    state.registry.get(name).ok_or_else(|| Error::not_found(format!("no plugin `{name}` is loaded")))
}

/// What an admin set for plugin `name`, as shown back: secrets (declared in the plugin's
/// manifest as `secret_config`, or named like token, secret, password, key, credential)
/// as `***`, a client identity's certificates without its key.
pub fn shown(state: &Core, name: &str) -> Result<PluginSettings> {
    let plugin = loaded(state, name)?;
    let mut s = state.settings.get(name).shown();
    for (k, v) in s.config.iter_mut() {
        if secret_key(&plugin, k) {
            *v = "***".into();
        }
    }
    Ok(s)
}

/// What an admin writes back of what [`shown`] or [`shown_tenant`] showed keeps what is
/// stored: a `***` config value of a secret key, the identity shown as its certificates,
/// the OAuth secrets; then the OAuth settings must be of one kind or the other.
type Secrets<'a> = (&'a mut BTreeMap<String, String>, &'a mut Option<String>, &'a mut Option<OAuth>);
type Stored<'a> = (&'a BTreeMap<String, String>, &'a Option<String>, &'a Option<OAuth>);

fn keep_secrets(plugin: &LoadedPlugin, given: Secrets<'_>, stored: Stored<'_>) -> Result<()> {
    let ((config, identity, oauth), (kept_config, kept_identity, kept_oauth)) = (given, stored);
    for (k, v) in config.iter_mut() {
        if v == "***"
            && secret_key(plugin, k)
            && let Some(kept) = kept_config.get(k)
        {
            v.clone_from(kept);
        }
    }
    if let (Some(shown), Some(kept)) = (identity.as_ref(), kept_identity)
        && certificates(kept) == *shown
    {
        *identity = Some(kept.clone());
    }
    if let (Some(given), Some(kept)) = (oauth.as_mut(), kept_oauth) {
        given.keep_secrets(kept);
    }
    if let Some(oauth) = oauth {
        oauth.check().map_err(|e| Error::invalid("invalid", e))?;
    }
    Ok(())
}

/// Replace what an admin sets for plugin `name` (live: the next call sees it), each part
/// checked: granted hosts within the manifest's `outbound_hosts`, redirects only of
/// granted hosts to base URLs, TLS material and OAuth settings that parse. What [`shown`]
/// shows in place of a secret keeps the stored secret, so a read-modify-write changes
/// only what it changes.
pub async fn put(state: &Core, name: &str, mut settings: PluginSettings, actor: &str) -> Result<()> {
    let plugin = loaded(state, name)?;
    let stored = state.settings.get(name);
    keep_secrets(
        &plugin,
        (&mut settings.config, &mut settings.client_identity, &mut settings.oauth),
        (&stored.config, &stored.client_identity, &stored.oauth),
    )?;
    crate::egress::provider_client(&settings).map_err(|e| Error::invalid("invalid", e))?;
    let declared = &plugin.manifest.outbound_hosts;
    for h in &settings.granted_hosts {
        if !crate::plugins::transport::grant_within(declared, h) {
            return Err(Error::invalid(
                "invalid",
                format!(
                    "`granted_hosts`: `{h}` is not within what plugin {name} declares (outbound_hosts: {declared:?})"
                ),
            ));
        }
    }
    for (host, base) in &settings.redirects {
        if !settings.granted_hosts.iter().any(|g| crate::plugins::transport::host_matches(g, host)) {
            return Err(Error::invalid("invalid", format!("`redirects`: `{host}` is not a granted host")));
        }
        let ok = reqwest::Url::parse(base).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/" && u.query().is_none()
        });
        if !ok {
            return Err(Error::invalid(
                "invalid",
                format!("`redirects`: `{base}` for `{host}` must be a base URL like https://gateway.example:8443"),
            ));
        }
    }
    state
        .store
        .put_plugin_settings(&crate::store::SettingsRow {
            plugin: name.to_string(),
            config: serde_json::to_string(&settings.config).unwrap_or_default(),
            granted_hosts: serde_json::to_string(&settings.granted_hosts).unwrap_or_default(),
            redirects: serde_json::to_string(&settings.redirects).unwrap_or_default(),
            client_identity: settings.client_identity.clone(),
            trusted_ca: settings.trusted_ca.clone(),
            oauth: settings.oauth.as_ref().and_then(|o| serde_json::to_string(o).ok()),
            updated_at: crate::store::now_ms(),
        })
        .await?;
    // Settings first, then the plugin's config: a wake-up that minted a token under the
    // old settings checks them again after putting it in (wakeup.rs).
    let (config, hosts) = (settings.config.clone(), settings.granted_hosts.clone());
    state.settings.set(name, settings);
    state.registry.runtime().set_config(name, config);
    state.registry.runtime().set_hosts(name, hosts);
    tracing::info!(plugin = %name, actor, "plugin settings changed");
    Ok(())
}

/// What `tenant` set for plugin `name`, as shown back (secrets `***`, the identity's
/// certificates only); `None`: nothing (its devices get the server's settings).
pub fn shown_tenant(state: &Core, name: &str, tenant: &str) -> Result<Option<TenantPluginSettings>> {
    let plugin = loaded(state, name)?;
    Ok(state.settings.tenant(name, tenant).map(|mut s| {
        for (k, v) in s.config.iter_mut() {
            if secret_key(&plugin, k) {
                *v = "***".into();
            }
        }
        s.client_identity = s.client_identity.as_deref().map(certificates);
        s.oauth = s.oauth.map(OAuth::shown);
        s
    }))
}

/// Replace what `tenant` sets for plugin `name` (live: the next call for its devices sees
/// it), each part checked as the server's are; what [`shown_tenant`] shows in place of a
/// secret keeps the stored one.
pub async fn put_tenant(
    state: &Core,
    name: &str,
    tenant: &str,
    mut settings: TenantPluginSettings,
    actor: &str,
) -> Result<()> {
    let plugin = loaded(state, name)?;
    let stored = state.settings.tenant(name, tenant).unwrap_or_default();
    keep_secrets(
        &plugin,
        (&mut settings.config, &mut settings.client_identity, &mut settings.oauth),
        (&stored.config, &stored.client_identity, &stored.oauth),
    )?;
    // The identity must make a client, with the server's CAs, as the server's must.
    crate::egress::provider_client(&settings.over(state.settings.get(name)))
        .map_err(|e| Error::invalid("invalid", e))?;
    state
        .store
        .put_tenant_plugin_settings(&crate::store::TenantSettingsRow {
            tenant: tenant.to_string(),
            plugin: name.to_string(),
            config: serde_json::to_string(&settings.config).unwrap_or_default(),
            client_identity: settings.client_identity.clone(),
            oauth: settings.oauth.as_ref().and_then(|o| serde_json::to_string(o).ok()),
            updated_at: crate::store::now_ms(),
        })
        .await?;
    state.settings.set_tenant(name, tenant, Some(settings));
    tracing::info!(plugin = %name, tenant, actor, "tenant's plugin settings changed");
    Ok(())
}

/// Forget what `tenant` set for plugin `name`; `false`: it had set nothing.
pub async fn delete_tenant(state: &Core, name: &str, tenant: &str, actor: &str) -> Result<bool> {
    loaded(state, name)?;
    let deleted = state.store.delete_tenant_plugin_settings(tenant, name).await?;
    state.settings.set_tenant(name, tenant, None);
    if deleted {
        tracing::info!(plugin = %name, tenant, actor, "tenant's plugin settings removed");
    }
    Ok(deleted)
}
