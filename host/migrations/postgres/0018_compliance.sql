-- Compliance (docs/policies.md): each device's latest verdict on its policies' rules,
-- and the history of its changes. `blocked`: a `block` policy's rule failed, so the
-- device gets nothing but policy bundles until it complies (the queue reads skip its
-- other operations). Same in the other dialect's folder.
CREATE TABLE device_compliance (
    device BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    checks TEXT NOT NULL,
    since BIGINT NOT NULL,
    evaluated_at BIGINT NOT NULL,
    blocked BIGINT NOT NULL DEFAULT 0,
    -- The device's newest telemetry row when it was evaluated: a newer one makes it due.
    telemetry_mark BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE compliance_history (
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    state TEXT NOT NULL,
    checks TEXT NOT NULL
);
CREATE INDEX compliance_history_device ON compliance_history (device, at);
