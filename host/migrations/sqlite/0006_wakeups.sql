-- Wake-ups: devices whose push provider must be told to make them call in, one row per
-- device. `state`: scheduled (due at `due_at`), sent (the provider accepted the last one),
-- failed (a permanent failure or an invalid token; `last_error` says which). The same in
-- both backends.
CREATE TABLE wakeups (
    device BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    due_at BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_attempt_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX wakeups_due ON wakeups (state, due_at);

-- What an admin set for a plugin: config values handed to the plugin, the hosts a
-- transport may send to (within what its manifest declares), and redirects of provider
-- hosts to other base URLs (an egress gateway, a provider sandbox, a test server).
-- JSON texts. Kept by plugin name, so they outlive versions.
CREATE TABLE plugin_settings (
    plugin TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    granted_hosts TEXT NOT NULL,
    redirects TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
