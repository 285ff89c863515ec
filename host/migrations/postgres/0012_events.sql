-- The durable event log (docs/events.md): one row per thing that happened, in `seq` order.
-- Its first rows are the audit trail: every admin-API call that changes something, or was
-- refused for its role, with the acting token's name and role (`type` = 'admin.action').
-- Same in the other dialect's folder.
CREATE TABLE events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    type TEXT NOT NULL,
    actor TEXT,
    role TEXT,
    action TEXT,
    target TEXT,
    outcome TEXT,
    status BIGINT,
    data TEXT
);
CREATE INDEX events_type_seq ON events (type, seq);
CREATE INDEX events_at ON events (at);

-- Admin tokens expire (optional) and are revoked by name, so a live name names one token:
-- keep the newest live token of each name, revoke older ones of the same name.
ALTER TABLE admin_tokens ADD COLUMN expires_at BIGINT;
UPDATE admin_tokens SET revoked_at = created_at
WHERE revoked_at IS NULL AND EXISTS (
    SELECT 1 FROM admin_tokens n
    WHERE n.name = admin_tokens.name AND n.revoked_at IS NULL
      AND (n.created_at > admin_tokens.created_at
           OR (n.created_at = admin_tokens.created_at AND n.token_hash > admin_tokens.token_hash)));
CREATE UNIQUE INDEX admin_tokens_live_name ON admin_tokens (name) WHERE revoked_at IS NULL;
