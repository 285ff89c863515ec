//! Webhook subscriptions, their cursor in the event log, their lease and their delivery
//! log (`webhooks.rs` delivers). The secret is sealed at rest like plugin settings.

use super::{Backend, Store, StoreError, now_ms, with_pool, with_write_pool};

const COLUMNS: &str = "id, name, url, secret, types, device_type, group_name, tag, enabled, disabled_reason, cursor,
                       failures, next_attempt_at, created_by, created_at, tenant";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: i64,
    pub name: String,
    pub url: String,
    /// Opened (the store seals it at rest).
    pub secret: String,
    /// JSON array of event-type prefixes; empty: every event.
    pub types: String,
    pub device_type: Option<String>,
    /// Only events about devices of this group.
    pub group_name: Option<String>,
    /// Only events about devices with this tag.
    pub tag: Option<String>,
    pub enabled: i64,
    pub disabled_reason: Option<String>,
    pub cursor: i64,
    pub failures: i64,
    pub next_attempt_at: i64,
    pub created_by: String,
    pub created_at: i64,
    /// The tenant whose it is (named `TENANT/NAME`, sent only events about the tenant's
    /// devices); `None`: the operators'.
    pub tenant: Option<String>,
}

/// A new subscription.
pub struct NewWebhook {
    pub name: String,
    pub url: String,
    pub secret: String,
    pub types: Vec<String>,
    pub device_type: Option<String>,
    pub group_name: Option<String>,
    pub tag: Option<String>,
    pub cursor: i64,
    pub created_by: String,
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryRow {
    pub id: i64,
    /// The event's sequence number.
    pub event: i64,
    /// 1 for the first try of this event.
    pub attempt: i64,
    /// The receiver's HTTP status; absent when none came (refused, timed out).
    pub status: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub at: i64,
}

fn place(name: &str) -> String {
    format!("webhook/{name}/secret")
}

impl Store {
    fn opened(&self, mut row: WebhookRow) -> Result<WebhookRow, StoreError> {
        row.secret = self.sealer.open(&place(&row.name), &row.secret)?;
        Ok(row)
    }

    pub async fn insert_webhook(&self, w: &NewWebhook) -> Result<WebhookRow, StoreError> {
        let types = serde_json::to_string(&w.types).unwrap_or_else(|_| "[]".into());
        let secret = self.sealer.seal(&place(&w.name), &w.secret);
        let now = now_ms();
        let sql = format!(
            "INSERT INTO webhooks (name, url, secret, types, device_type, cursor, next_attempt_at, created_by, created_at,
                                   group_name, tag, tenant)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, $9, $10, $11) RETURNING {COLUMNS}"
        );
        let r: Result<WebhookRow, sqlx::Error> = with_write_pool!(self, pool => sqlx::query_as(super::trusted(&sql))
            .bind(&w.name).bind(&w.url).bind(&secret).bind(&types).bind(&w.device_type).bind(w.cursor).bind(now)
            .bind(&w.created_by).bind(&w.group_name).bind(&w.tag).bind(&w.tenant).fetch_one(pool).await);
        self.opened(r.map_err(|e| StoreError::conflict_or(e, || format!("webhook `{}`", w.name)))?)
    }

    /// Every subscription, or a tenant's only.
    pub async fn webhooks(&self, tenant: Option<&str>) -> Result<Vec<WebhookRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM webhooks WHERE CAST($1 AS TEXT) IS NULL OR tenant = $1 ORDER BY name");
        let rows: Vec<WebhookRow> =
            with_pool!(self, pool => sqlx::query_as(super::trusted(&sql)).bind(tenant).fetch_all(pool).await?);
        rows.into_iter().map(|r| self.opened(r)).collect()
    }

    pub async fn webhook(&self, name: &str) -> Result<Option<WebhookRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM webhooks WHERE name = $1");
        let row: Option<WebhookRow> =
            with_pool!(self, pool => sqlx::query_as(super::trusted(&sql)).bind(name).fetch_optional(pool).await?);
        row.map(|r| self.opened(r)).transpose()
    }

    pub async fn delete_webhook(&self, name: &str) -> Result<bool, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query("DELETE FROM webhooks WHERE name = $1")
            .bind(name).execute(pool).await?.rows_affected())
            == 1)
    }

    /// Enabled subscriptions whose next attempt is due and that no replica holds.
    pub async fn due_webhooks(&self, now: i64) -> Result<Vec<WebhookRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhooks WHERE enabled = 1 AND next_attempt_at <= $1
               AND (lease_until IS NULL OR lease_until < $1) ORDER BY id"
        );
        let rows: Vec<WebhookRow> =
            with_pool!(self, pool => sqlx::query_as(super::trusted(&sql)).bind(now).fetch_all(pool).await?);
        rows.into_iter().map(|r| self.opened(r)).collect()
    }

    /// Take the subscription for `until` (ms): false when another replica holds it.
    pub async fn lease_webhook(&self, id: i64, until: i64) -> Result<bool, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query(
                "UPDATE webhooks SET lease_until = $1 WHERE id = $2 AND (lease_until IS NULL OR lease_until < $3)")
            .bind(until).bind(id).bind(now_ms()).execute(pool).await?.rows_affected())
            == 1)
    }

    /// Extend a lease this replica holds.
    pub async fn renew_webhook(&self, id: i64, until: i64) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query("UPDATE webhooks SET lease_until = $1 WHERE id = $2")
            .bind(until).bind(id).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    pub async fn release_webhook(&self, id: i64) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query("UPDATE webhooks SET lease_until = NULL WHERE id = $1")
            .bind(id).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Everything up to `cursor` is delivered (or not for this subscription). `delivered`:
    /// an event went through, so the run of failures ends.
    pub async fn advance_webhook(&self, id: i64, cursor: i64, delivered: bool) -> Result<(), StoreError> {
        with_write_pool!(self, pool => sqlx::query(
                "UPDATE webhooks SET cursor = $1, failures = CASE WHEN $2 = 1 THEN 0 ELSE failures END
                 WHERE id = $3 AND cursor < $1")
            .bind(cursor).bind(i64::from(delivered)).bind(id).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// A failed attempt: the next one at `next_attempt_at`, or the subscription disabled
    /// with `disable` (its reason). Returns the run of failures.
    pub async fn webhook_failed(
        &self,
        id: i64,
        next_attempt_at: i64,
        disable: Option<&str>,
    ) -> Result<i64, StoreError> {
        let (failures,): (i64,) = with_write_pool!(self, pool => sqlx::query_as(
                "UPDATE webhooks SET failures = failures + 1, next_attempt_at = $1,
                        enabled = CASE WHEN $2 IS NULL THEN enabled ELSE 0 END,
                        disabled_reason = COALESCE($2, disabled_reason)
                 WHERE id = $3 RETURNING failures")
            .bind(next_attempt_at).bind(disable).bind(id).fetch_one(pool).await?);
        Ok(failures)
    }

    /// Enable again (after it was disabled): the next attempt at once, the run of
    /// failures forgotten. False when there is no such subscription.
    pub async fn enable_webhook(&self, name: &str) -> Result<bool, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query(
                "UPDATE webhooks SET enabled = 1, disabled_reason = NULL, failures = 0, next_attempt_at = $1
                 WHERE name = $2")
            .bind(now_ms()).bind(name).execute(pool).await?.rows_affected())
            == 1)
    }

    /// Deliver again everything after `cursor`.
    pub async fn rewind_webhook(&self, name: &str, cursor: i64) -> Result<bool, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query(
                "UPDATE webhooks SET cursor = $1, next_attempt_at = $2 WHERE name = $3")
            .bind(cursor).bind(now_ms()).bind(name).execute(pool).await?.rows_affected())
            == 1)
    }

    /// Append attempts to a subscription's delivery log, in one statement.
    pub async fn record_deliveries(&self, webhook: i64, rows: &[DeliveryRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(100) {
            let sql = format!(
                "INSERT INTO webhook_deliveries (webhook, event, attempt, status, error, latency_ms, at) VALUES {}",
                super::values_placeholders(chunk.len(), 7, 1)
            );
            with_write_pool!(self, pool => {
                let mut q = sqlx::query(super::trusted(&sql));
                for d in chunk {
                    q = q.bind(webhook).bind(d.event).bind(d.attempt).bind(d.status).bind(&d.error)
                        .bind(d.latency_ms).bind(d.at);
                }
                q.execute(pool).await.map(|_| ())?
            });
        }
        Ok(())
    }

    /// How many attempts were made at delivering `event` to `webhook` so far.
    pub async fn delivery_attempts(&self, webhook: i64, event: i64) -> Result<i64, StoreError> {
        let (n,): (i64,) = with_pool!(self, pool => sqlx::query_as(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook = $1 AND event = $2")
            .bind(webhook).bind(event).fetch_one(pool).await?);
        Ok(n)
    }

    /// The delivery log of a subscription, oldest first, after `after` (a delivery id).
    pub async fn deliveries(&self, webhook: i64, after: i64, limit: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        Ok(with_pool!(self, pool => sqlx::query_as(
                "SELECT id, event, attempt, status, error, latency_ms, at FROM webhook_deliveries
                 WHERE webhook = $1 AND id > $2 ORDER BY id LIMIT $3")
            .bind(webhook).bind(after).bind(limit).fetch_all(pool).await?))
    }

    /// Forget delivery records older than `before` (ms).
    pub async fn prune_deliveries(&self, before: i64) -> Result<u64, StoreError> {
        Ok(with_write_pool!(self, pool => sqlx::query("DELETE FROM webhook_deliveries WHERE at < $1")
            .bind(before).execute(pool).await?.rows_affected()))
    }
}
