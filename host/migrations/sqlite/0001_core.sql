-- Devices, groups, tags, credentials, activities, operations, transitions.
-- Kept equivalent to ../postgres/0001_core.sql; only identity and blob types differ.
-- Times are integer milliseconds since the Unix epoch.

CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_type TEXT NOT NULL,
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT,
    ownership TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    push_token TEXT,
    session BLOB NOT NULL DEFAULT X'',
    enrolled_at BIGINT NOT NULL,
    last_seen_at BIGINT,
    UNIQUE (device_type, device_id)
);

CREATE TABLE device_tags (
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (device, tag)
);
CREATE INDEX device_tags_by_tag ON device_tags (tag, device);

CREATE TABLE device_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_id BIGINT NOT NULL REFERENCES device_groups(id) ON DELETE CASCADE,
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, device)
);

CREATE TABLE device_credentials (
    token_hash TEXT PRIMARY KEY,
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX device_credentials_by_device ON device_credentials (device);

CREATE TABLE admin_tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE activities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    max_attempts BIGINT NOT NULL
);

CREATE TABLE operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    activity BIGINT NOT NULL REFERENCES activities(id),
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    code TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    max_attempts BIGINT NOT NULL,
    response TEXT
);
-- A device's queue in adding order: the hot read of every poll.
CREATE INDEX operations_queue ON operations (device, state, id);
CREATE INDEX operations_by_activity ON operations (activity, state);

CREATE TABLE transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    operation BIGINT NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    actor TEXT NOT NULL,
    at BIGINT NOT NULL,
    response TEXT
);
CREATE INDEX transitions_by_operation ON transitions (operation, id);
CREATE INDEX transitions_by_time ON transitions (at);
