//! The core: what every service works on, and nothing of any front. The HTTP API, the
//! device agent, MQTT, CoAP, the wake-up sender, tests (and next the console and the
//! admin CLI) all hold a [`Core`] and call the services with it (`operations`,
//! `enrollment`, `delivery`, `plugin_settings`); the services tell what happened on
//! [`Core::events`].
//!
//! docs/architecture.md draws the layers and who may import whom.

use crate::config::Config;
use crate::events::Events;
use crate::plugin_settings::{PluginSettings, Settings};
use crate::plugins::catalog::Catalog;
use crate::plugins::{Limits, LoadedPlugin, Registry, Runtime};
use crate::stats::DeliveryStats;
use crate::store::Store;
use anyhow::Context;
use std::sync::Arc;

/// Shared domain state: cheap to clone, one per server.
#[derive(Clone)]
pub struct Core {
    pub store: Store,
    pub registry: Arc<Registry>,
    /// Uploads, rollback, grants and the breaker, kept in the database.
    pub catalog: Arc<Catalog>,
    /// What admins set for plugins: config values, granted hosts, redirects.
    pub settings: Arc<Settings>,
    /// Delivery counts for `/metrics`.
    pub stats: Arc<DeliveryStats>,
    /// Domain events, for whoever reacts to them.
    pub events: Events,
    /// Devices may enroll themselves without an enrollment token.
    pub open_enrollment: bool,
    /// Bytes a tenant's uploads may take (`tenants::check_storage`); 0: no limit.
    pub tenant_storage: u64,
    /// How webhooks are delivered, and where they may go.
    pub webhooks: crate::webhooks::Policy,
    /// How a device's applicable policies combine.
    pub policy_mode: crate::policies::Mode,
    /// How often devices are asked for their policy's compliance; `None`: never.
    pub policy_monitor: Option<std::time::Duration>,
    /// One recomputation of effective policies at a time in this process.
    pub policy_lock: Arc<tokio::sync::Mutex<()>>,
    /// Where the bytes of artifacts are kept (`artifacts.rs`).
    pub artifacts: Arc<dyn crate::artifacts::ArtifactStorage>,
    /// The URL devices reach the HTTP listener at (download links), without a final `/`.
    pub public_url: String,
    /// Alert rules and the per-device state that judges telemetry against them.
    pub analytics: Arc<crate::analytics::Analytics>,
    /// Whether telemetry is rolled up per minute and hour as it is stored.
    pub rollups: bool,
    /// The CA that signs device certificates (`identity.rs`).
    pub device_ca: Arc<crate::identity::DeviceCa>,
    /// The SCEP RA, made or read on the first SCEP request (`scep.rs`).
    pub scep_ra: Arc<tokio::sync::OnceCell<crate::scep::Ra>>,
    /// Whether SCEP envelopes in single DES are opened (`--scep-allow-des`).
    pub scep_allow_des: bool,
    /// An OpenID Connect provider whose tokens stand for users (`oidc.rs`).
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
}

impl Core {
    /// Open the data directory and the store (sealing secrets with the configured key),
    /// make sure an admin token exists, start the plugin runtime and bring the catalog
    /// and plugin settings to what the database says. Binds nothing.
    pub async fn open(config: &Config) -> anyhow::Result<Core> {
        crate::files::private_dir(&config.data_dir)
            .with_context(|| format!("cannot create data directory {} (--data-dir)", config.data_dir.display()))?;
        let sealer = crate::secrets::Sealer::load(
            config.secret_key.as_deref(),
            &config.secret_key_file,
            config.previous_secret_key_file.as_deref(),
        )?;
        let store = Store::connect_with(&config.database_url, config.sqlite_synchronous)
            .await
            .with_context(|| {
                format!(
                    "cannot open the database (--database-url {})",
                    crate::secrets::redact_url(&config.database_url)
                )
            })?
            .with_sealer(sealer);
        crate::files::private_sqlite(&config.database_url)
            .context("cannot restrict the database files to mode 0600")?;
        match store.reseal_secrets().await.context("cannot seal the secrets stored in the database")? {
            0 => {}
            n => tracing::info!(plugins = n, "secrets in the database sealed with the current key"),
        }
        crate::auth::bootstrap_admin(&store, &config.data_dir, config.admin_token.clone()).await?;
        let runtime = Runtime::new(Limits::default(), Some(config.data_dir.join("cache").join("compiled")))?
            .with_hold_policy(config.hold_policy)
            .with_kv_store(store.clone())
            .with_plugin_files(config.data_dir.join("plugin-files"));
        let registry = Arc::new(Registry::new(Arc::new(runtime)));
        let events = Events::default();
        let catalog = Catalog::open(store.clone(), registry.clone(), config.fault_policy, events.clone())
            .await
            .context("cannot load the plugin catalog")?;
        let device_ca = crate::identity::DeviceCa::load(&store, config.device_ca.as_ref(), config.device_cert_days)
            .await
            .context("cannot load the device CA")?;
        let settings = Arc::new(Settings::default());
        for row in store.plugin_settings().await? {
            let s = PluginSettings::from_row(&row);
            registry.runtime().set_config(&row.plugin, s.config.clone());
            registry.runtime().set_hosts(&row.plugin, s.granted_hosts.clone());
            settings.set(&row.plugin, s);
        }
        settings.load_tenants(&store.tenant_plugin_settings().await?);
        Ok(Core {
            store,
            registry,
            catalog,
            settings,
            stats: Arc::default(),
            events,
            open_enrollment: config.open_enrollment,
            tenant_storage: config.tenant_storage,
            webhooks: config.webhooks.clone(),
            policy_mode: config.policy_mode,
            policy_monitor: config.policy_monitor,
            policy_lock: Arc::default(),
            artifacts: Arc::new(crate::artifacts::DirStorage::open(&config.data_dir).with_context(|| {
                format!("cannot create the artifact directory in {} (--data-dir)", config.data_dir.display())
            })?),
            public_url: config.public_url.clone().unwrap_or_else(|| format!("http://{}", config.http_addr)),
            analytics: Arc::default(),
            rollups: config.telemetry_rollups,
            device_ca: Arc::new(device_ca),
            scep_ra: Default::default(),
            scep_allow_des: config.scep_allow_des,
            oidc: match &config.oidc {
                Some(s) => Some(Arc::new(crate::oidc::Oidc::new(s.clone())?)),
                None => None,
            },
        })
    }

    /// The plugin serving `device_type`, by the one rule every front follows: a suspended
    /// plugin serves nothing, so nothing a device sends is half-applied and its
    /// operations stay queued for when the plugin serves again.
    pub fn device_type(&self, device_type: &str) -> crate::error::Result<Arc<LoadedPlugin>> {
        use crate::error::Error;
        if let Some(p) = self.registry.device_type(device_type) {
            return Ok(p);
        }
        match self.registry.suspension(device_type) {
            Some(why) => Err(Error::unavailable(
                "plugin_suspended",
                format!("the `{device_type}` plugin is suspended ({why}); try again later"),
            )),
            None => Err(Error::not_found(format!("no device type `{device_type}` is loaded"))),
        }
    }
}
