-- Telemetry analytics (docs/analytics.md). Same in the other dialect's folder but for
-- identity and float types.
--
-- Rollups: per device, metric, level ('minute' or 'hour') and bucket (the bucket's start,
-- ms since the epoch), the aggregates of the numeric points measured in it. Written in
-- the transaction that stores the points, so they always match them; kept longer than
-- raw points (a retention per level).
CREATE TABLE telemetry_rollups (
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    level TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    count BIGINT NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    last REAL NOT NULL,
    last_at BIGINT NOT NULL,
    PRIMARY KEY (device, name, level, bucket)
);
-- Retention deletes by level and age.
CREATE INDEX telemetry_rollups_by_time ON telemetry_rollups (level, bucket);

-- Alert rules: geo-fences, speed limits, thresholds, anomaly detectors and what they
-- ignore. `spec` is the rule as the API takes it (JSON); `kind` and `name` are kept
-- apart for listing.
CREATE TABLE alert_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    enabled BIGINT NOT NULL DEFAULT 1,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Alerts: one row per time a rule's condition held for a device, open until it ends.
-- `rule` is not a foreign key: a removed rule's alerts stay as history (resolved).
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule BIGINT NOT NULL,
    rule_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    state TEXT NOT NULL,
    opened_at BIGINT NOT NULL,
    resolved_at BIGINT,
    value REAL,
    detail TEXT NOT NULL,
    resolution TEXT
);
-- At most one open alert per rule, device and metric, whichever replica saw it first.
CREATE UNIQUE INDEX alerts_one_open ON alerts (rule, device, metric) WHERE state = 'open';
CREATE INDEX alerts_by_state ON alerts (state, id);
CREATE INDEX alerts_by_device ON alerts (device, id);
