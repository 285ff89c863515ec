-- Webhook subscriptions and their delivery log (docs/events.md). `cursor` is the last
-- event delivered (or skipped by the filters): delivery resumes after it, in order, after
-- a failure or a restart. `lease_until` lets one replica at a time deliver a subscription.
-- Same in the other dialect's folder.
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    types TEXT NOT NULL,
    device_type TEXT,
    enabled BIGINT NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    cursor BIGINT NOT NULL,
    failures BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook BIGINT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    status BIGINT,
    error TEXT,
    latency_ms BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook, id);
