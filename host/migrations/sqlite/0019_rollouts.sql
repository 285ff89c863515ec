-- Rollouts (docs/rollouts.md). Same in the other dialect's folder.
--
-- An operation may carry its own payload, which wins over its activity's: a rollout's
-- update is one activity per batch of devices, and each device's payload names its own
-- download credential.
ALTER TABLE operations ADD COLUMN payload TEXT;

-- Uploaded images: the bytes live in the artifact storage (the data directory), keyed by
-- sha256; this is what Drover knows of them.
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    device_types TEXT NOT NULL,
    models TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    signed_by TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (name, version)
);

-- Per-device, expiring download credentials: the hash of the token in the URL a device is
-- sent. Removing the device or the artifact removes them.
CREATE TABLE artifact_grants (
    token_hash TEXT PRIMARY KEY,
    artifact BIGINT NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
CREATE INDEX artifact_grants_expiry ON artifact_grants (expires_at);

-- A rollout's state machine lives here, so a restart or another replica continues it:
-- the replica holding the lease drives it.
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    artifact BIGINT NOT NULL REFERENCES artifacts(id),
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    phase BIGINT NOT NULL,
    phase_started_at BIGINT NOT NULL,
    -- When the current phase first met its advance condition (its soak counts from here).
    phase_ready_at BIGINT,
    reason TEXT,
    rollback TEXT NOT NULL DEFAULT 'none',
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    done_at BIGINT,
    lease_holder TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);

-- Every targeted device, in the phase it was drawn into, with where its update is.
CREATE TABLE rollout_devices (
    rollout BIGINT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    phase BIGINT NOT NULL,
    position BIGINT NOT NULL,
    state TEXT NOT NULL,
    progress BIGINT,
    from_version TEXT,
    operation BIGINT,
    rollback_artifact BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    reason TEXT,
    PRIMARY KEY (rollout, device)
);
CREATE INDEX rollout_devices_state ON rollout_devices (rollout, state, phase, position);
CREATE INDEX rollout_devices_operation ON rollout_devices (operation);
