-- Console sessions (docs/console.md). Same in the other dialect's folder.
--
-- A session stands for the admin token that logged in: each request looks the token up
-- again, so revoking or expiring the token ends its sessions. Only hashes are stored:
-- the cookie's value and the token's; `csrf` is the per-session form token.
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- The console's overview counts operations by state.
CREATE INDEX operations_by_state ON operations (state);
