//! Wake-ups and plugin settings.
//!
//! A wake-up row says "this device's push provider must be told to make it call in". It
//! is written in the database, not kept in memory, so a restart (or another replica)
//! carries on with the same schedule and backoff. See docs/delivery.md.

use super::{Backend, Store, StoreError, now_ms, with_pool, with_write_pool};
use serde::Serialize;

/// A device's wake-up state, as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct WakeupRow {
    /// `scheduled`, `sent`, `deferred` (woken a moment ago and not called in since: woken
    /// again at `due_at` unless it calls in first) or `failed`.
    pub state: String,
    /// When the next attempt is due (scheduled and deferred only), ms since the Unix epoch.
    pub due_at: Option<i64>,
    /// Attempts since it was last scheduled.
    pub attempts: i32,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<i64>,
}

/// A wake-up claimed for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueWakeup {
    pub device: i64,
    /// Attempts before this one.
    pub attempts: i32,
}

/// What an admin set for a plugin (JSON texts as stored).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SettingsRow {
    pub plugin: String,
    pub config: String,
    pub granted_hosts: String,
    pub redirects: String,
    /// PEM: certificate chain and private key (never shown to the plugin).
    pub client_identity: Option<String>,
    /// PEM: certificate authorities trusted besides the public roots.
    pub trusted_ca: Option<String>,
    /// JSON: how the host obtains access tokens (`oauth.rs`).
    pub oauth: Option<String>,
    pub updated_at: i64,
}

/// What a tenant set for a plugin (`plugin_settings::TenantPluginSettings`), as stored:
/// JSON config, PEM identity, JSON OAuth settings, opened.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TenantSettingsRow {
    pub tenant: String,
    pub plugin: String,
    pub config: String,
    pub client_identity: Option<String>,
    pub oauth: Option<String>,
    pub updated_at: i64,
}

/// The upsert both scheduling statements share: a device already scheduled keeps its due
/// time (and so its backoff); one that failed is scheduled afresh, and so is one that was
/// sent, unless it was woken less than [`WAKE_AGAIN_MS`] ago and has not called in since.
/// That device is about to call in and will get everything pending then, so a second push
/// now would only spend the provider's quota (and Apple throttles MDM pushes): its row is
/// `deferred` until [`WAKE_AGAIN_MS`] after the last push, and then woken again in case
/// that push was lost (providers promise no delivery), unless it called in meanwhile
/// (nothing pending: the sender drops the row). A deferred row is looked at again by the
/// next activity, so a device that has called in since is woken at once.
///
/// "Not called in since" errs towards waking: `last_seen_at` moves only when it is
/// `LAST_SEEN_RESOLUTION_MS` (30 s) old, so a device seen up to that long before
/// its last wake-up counts as maybe called in since.
fn schedule_conflict() -> String {
    let wait = format!(
        "wakeups.state IN ('sent', 'deferred') AND wakeups.last_attempt_at > excluded.due_at - {again}
         AND COALESCE((SELECT s.last_seen_at FROM devices s WHERE s.id = wakeups.device), 0)
             < wakeups.last_attempt_at - {seen}",
        again = WAKE_AGAIN_MS,
        seen = super::LAST_SEEN_RESOLUTION_MS,
    );
    format!(
        "ON CONFLICT (device) DO UPDATE SET
             state = CASE WHEN {wait} THEN 'deferred' ELSE 'scheduled' END,
             due_at = CASE WHEN {wait} THEN wakeups.last_attempt_at + {again} ELSE excluded.due_at END,
             attempts = 0, last_error = NULL
         WHERE wakeups.state <> 'scheduled'",
        again = WAKE_AGAIN_MS,
    )
}

/// A device woken this recently that has not called in since is not woken again yet.
pub const WAKE_AGAIN_MS: i64 = 60_000;

impl Store {
    /// Schedule a wake-up, due now, for every device of `activity` that has a pending
    /// operation and a push token. Returns how many rows were written.
    pub async fn schedule_activity_wakeups(&self, activity: i64) -> Result<u64, StoreError> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO wakeups (device, state, due_at, attempts, created_at)
             SELECT DISTINCT o.device, 'scheduled', $1, 0, $1 FROM operations o JOIN devices d ON d.id = o.device
             WHERE o.activity = $2 AND o.state = 'PENDING' AND d.push_token IS NOT NULL AND d.status <> 'removed'
             {conflict}",
            conflict = schedule_conflict()
        );
        with_write_pool!(self, pool => {
            Ok(sqlx::query(super::trusted(&sql)).bind(now).bind(activity).execute(pool).await?.rows_affected())
        })
    }

    /// Schedule a wake-up for every device with pending operations and a push token
    /// (at start: an activity stored just before a crash still gets its wake-ups).
    pub async fn schedule_pending_wakeups(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO wakeups (device, state, due_at, attempts, created_at)
             SELECT d.id, 'scheduled', $1, 0, $1 FROM devices d
             WHERE d.push_token IS NOT NULL AND d.status <> 'removed'
               AND EXISTS (SELECT 1 FROM operations o WHERE o.device = d.id AND o.state = 'PENDING')
             {conflict}",
            conflict = schedule_conflict()
        );
        with_write_pool!(self, pool => {
            Ok(sqlx::query(super::trusted(&sql)).bind(now).execute(pool).await?.rows_affected())
        })
    }

    /// Claim up to `limit` due wake-ups (deferred ones whose time has come too): their due
    /// time moves `lease_ms` ahead, so a sender that dies mid-way leaves them to be tried
    /// again, not lost.
    pub async fn claim_wakeups(&self, limit: i64, lease_ms: i64) -> Result<Vec<DueWakeup>, StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            Ok(sqlx::query_as::<_, DueWakeup>(
                "UPDATE wakeups SET state = 'scheduled', due_at = $1
                 WHERE state IN ('scheduled', 'deferred') AND due_at <= $2 AND device IN
                     (SELECT device FROM wakeups WHERE state IN ('scheduled', 'deferred') AND due_at <= $2
                      ORDER BY due_at LIMIT $3)
                 RETURNING device, attempts")
                .bind(now + lease_ms).bind(now).bind(limit).fetch_all(pool).await?)
        })
    }

    /// When the earliest scheduled wake-up is due, if any.
    pub async fn next_wakeup_due(&self) -> Result<Option<i64>, StoreError> {
        with_pool!(self, pool => {
            let (due,): (Option<i64>,) =
                sqlx::query_as("SELECT MIN(due_at) FROM wakeups WHERE state IN ('scheduled', 'deferred')").fetch_one(pool).await?;
            Ok(due)
        })
    }

    /// Record an attempt: `state` is `sent`, `failed` or `scheduled` (a retry due at `due_at`).
    pub async fn wakeup_attempted(
        &self,
        device: i64,
        state: &str,
        due_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        with_write_pool!(self, pool => {
            sqlx::query(
                "UPDATE wakeups SET state = $1, due_at = $2, last_error = $3, last_attempt_at = $4, attempts = attempts + 1
                 WHERE device = $5")
                .bind(state).bind(due_at).bind(error).bind(now).bind(device).execute(pool).await?;
        });
        Ok(())
    }

    /// Forget a device's wake-up (nothing is left to wake it for).
    pub async fn drop_wakeup(&self, device: i64) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            sqlx::query("DELETE FROM wakeups WHERE device = $1").bind(device).execute(pool).await?;
        });
        Ok(())
    }

    pub async fn wakeup(&self, device: i64) -> Result<Option<WakeupRow>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query_as::<_, WakeupRow>(
                "SELECT state, due_at, attempts, last_error, last_attempt_at FROM wakeups WHERE device = $1")
                .bind(device).fetch_optional(pool).await?)
        })
    }

    /// Replace a device's push token (`None`: it has none, or the provider said it is dead).
    pub async fn set_push_token(&self, device: i64, token: Option<&str>) -> Result<(), StoreError> {
        with_write_pool!(self, pool => {
            sqlx::query("UPDATE devices SET push_token = $1 WHERE id = $2").bind(token).bind(device).execute(pool).await?;
        });
        Ok(())
    }

    /// What admins set for plugins, its secrets opened (`secrets.rs`).
    pub async fn plugin_settings(&self) -> Result<Vec<SettingsRow>, StoreError> {
        self.plugin_settings_sealed().await?.into_iter().map(|r| self.open_settings(r)).collect()
    }

    async fn plugin_settings_sealed(&self) -> Result<Vec<SettingsRow>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query_as::<_, SettingsRow>(
                "SELECT plugin, config, granted_hosts, redirects, client_identity, trusted_ca, oauth, updated_at
                 FROM plugin_settings ORDER BY plugin")
                .fetch_all(pool).await?)
        })
    }

    /// Store what an admin set for a plugin, its secrets sealed: the config values, the
    /// TLS client identity (it holds a private key) and the OAuth settings (a service
    /// account's private key, a client secret). Hosts, redirects and CAs are not secret.
    pub async fn put_plugin_settings(&self, row: &SettingsRow) -> Result<(), StoreError> {
        let sealer = &self.sealer;
        let place = |field: &str| format!("{}/{field}", row.plugin);
        let config = sealer.seal(&place("config"), &row.config);
        let client_identity = row.client_identity.as_deref().map(|v| sealer.seal(&place("client_identity"), v));
        let oauth = row.oauth.as_deref().map(|v| sealer.seal(&place("oauth"), v));
        with_write_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO plugin_settings
                     (plugin, config, granted_hosts, redirects, client_identity, trusted_ca, oauth, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (plugin) DO UPDATE SET config = excluded.config, granted_hosts = excluded.granted_hosts,
                     redirects = excluded.redirects, client_identity = excluded.client_identity,
                     trusted_ca = excluded.trusted_ca, oauth = excluded.oauth, updated_at = excluded.updated_at")
                .bind(&row.plugin).bind(&config).bind(&row.granted_hosts).bind(&row.redirects)
                .bind(&client_identity).bind(&row.trusted_ca).bind(&oauth).bind(row.updated_at)
                .execute(pool).await?;
        });
        self.announce(super::Change::Settings).await;
        Ok(())
    }

    fn open_settings(&self, mut row: SettingsRow) -> Result<SettingsRow, StoreError> {
        let sealer = &self.sealer;
        let place = |field: &str| format!("{}/{field}", row.plugin);
        row.config = sealer.open(&place("config"), &row.config)?;
        if let Some(v) = &row.client_identity {
            row.client_identity = Some(sealer.open(&place("client_identity"), v)?);
        }
        if let Some(v) = &row.oauth {
            row.oauth = Some(sealer.open(&place("oauth"), v)?);
        }
        Ok(row)
    }

    /// What every tenant set for every plugin, secrets opened.
    pub async fn tenant_plugin_settings(&self) -> Result<Vec<TenantSettingsRow>, StoreError> {
        self.tenant_plugin_settings_sealed().await?.into_iter().map(|r| self.open_tenant_settings(r)).collect()
    }

    async fn tenant_plugin_settings_sealed(&self) -> Result<Vec<TenantSettingsRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as::<_, TenantSettingsRow>(
                "SELECT tenant, plugin, config, client_identity, oauth, updated_at
                 FROM tenant_plugin_settings ORDER BY tenant, plugin")
            .fetch_all(pool).await?))
    }

    /// Where a tenant's secrets for a plugin are sealed: apart from the server's
    /// (`{plugin}/…`) and from every other tenant's, so a sealed value copied to another
    /// row does not open.
    fn tenant_place(row: &TenantSettingsRow, field: &str) -> String {
        format!("tenant:{}/{}/{field}", row.tenant, row.plugin)
    }

    fn open_tenant_settings(&self, mut row: TenantSettingsRow) -> Result<TenantSettingsRow, StoreError> {
        row.config = self.sealer.open(&Self::tenant_place(&row, "config"), &row.config)?;
        if let Some(v) = &row.client_identity {
            row.client_identity = Some(self.sealer.open(&Self::tenant_place(&row, "client_identity"), v)?);
        }
        if let Some(v) = &row.oauth {
            row.oauth = Some(self.sealer.open(&Self::tenant_place(&row, "oauth"), v)?);
        }
        Ok(row)
    }

    /// Store what a tenant set for a plugin, every part sealed (its config values are as
    /// secret as its certificate's key: a tenant's API keys).
    pub async fn put_tenant_plugin_settings(&self, row: &TenantSettingsRow) -> Result<(), StoreError> {
        let config = self.sealer.seal(&Self::tenant_place(row, "config"), &row.config);
        let identity =
            row.client_identity.as_deref().map(|v| self.sealer.seal(&Self::tenant_place(row, "client_identity"), v));
        let oauth = row.oauth.as_deref().map(|v| self.sealer.seal(&Self::tenant_place(row, "oauth"), v));
        with_write_pool!(self, pool => sqlx::query(
                "INSERT INTO tenant_plugin_settings (tenant, plugin, config, client_identity, oauth, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (tenant, plugin) DO UPDATE SET config = excluded.config,
                     client_identity = excluded.client_identity, oauth = excluded.oauth,
                     updated_at = excluded.updated_at")
            .bind(&row.tenant).bind(&row.plugin).bind(&config).bind(&identity).bind(&oauth).bind(row.updated_at)
            .execute(pool).await.map(|_| ())?);
        self.announce(super::Change::Settings).await;
        Ok(())
    }

    /// Forget what a tenant set for a plugin: its devices get the server's settings.
    /// `false`: it had set nothing.
    pub async fn delete_tenant_plugin_settings(&self, tenant: &str, plugin: &str) -> Result<bool, StoreError> {
        let n = with_write_pool!(self, pool => sqlx::query(
                "DELETE FROM tenant_plugin_settings WHERE tenant = $1 AND plugin = $2")
            .bind(tenant).bind(plugin).execute(pool).await?.rows_affected());
        self.announce(super::Change::Settings).await;
        Ok(n > 0)
    }

    /// Seal again, with the current key, every secret stored in the clear (before sealing
    /// existed) or with a previous key (a rotation). Returns how many plugins' settings
    /// (the server's and the tenants').
    pub async fn reseal_secrets(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for row in self.tenant_plugin_settings_sealed().await? {
            let stale = !self.sealer.is_current(&row.config)
                || row.client_identity.as_deref().is_some_and(|v| !self.sealer.is_current(v))
                || row.oauth.as_deref().is_some_and(|v| !self.sealer.is_current(v));
            if stale {
                let open = self.open_tenant_settings(row)?;
                self.put_tenant_plugin_settings(&open).await?;
                n += 1;
            }
        }
        for row in self.plugin_settings_sealed().await? {
            let stale = !self.sealer.is_current(&row.config)
                || row.client_identity.as_deref().is_some_and(|v| !self.sealer.is_current(v))
                || row.oauth.as_deref().is_some_and(|v| !self.sealer.is_current(v));
            if stale {
                let open = self.open_settings(row)?;
                self.put_plugin_settings(&open).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}
