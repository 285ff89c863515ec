-- The plugin catalog (docs/plugin-platform.md). Kept equivalent to
-- ../postgres/0007_plugin_catalog.sql; only identity and blob types differ.

-- Every uploaded component, by content. Versions are immutable: one (name, version)
-- has one content. First-party components live in the binary and are not copied here.
CREATE TABLE plugin_components (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    publisher TEXT NOT NULL,
    component BLOB NOT NULL,
    size BIGINT NOT NULL,
    signed_by TEXT,
    uploaded_at BIGINT NOT NULL,
    uploaded_by TEXT NOT NULL,
    UNIQUE (name, version)
);

-- What happened to each plugin name, in order; replaying it gives what every replica
-- serves. kind: install (push a version), rollback / auto-rollback (pop back to the
-- one before), regrant (reload the current one with new grants), suspend, enable.
CREATE TABLE plugin_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    sha256 TEXT,
    version TEXT,
    reason TEXT,
    actor TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX plugin_events_name ON plugin_events (name, id);

-- Capabilities an admin granted a plugin name (JSON array), before or after it loads.
CREATE TABLE plugin_grants (
    plugin TEXT PRIMARY KEY,
    capabilities TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

-- Ed25519 keys whose signatures an admin trusts, each for one publisher name.
CREATE TABLE publisher_keys (
    key_id TEXT PRIMARY KEY,
    publisher TEXT NOT NULL,
    public_key TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    added_by TEXT NOT NULL
);

-- Server-wide settings an admin changes at run time (e.g. allow_unsigned_plugins).
CREATE TABLE server_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
