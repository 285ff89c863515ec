-- One-time (or n-time) enrollment tokens made by an admin. Kept equivalent to
-- ../postgres/0002_enrollment_tokens.sql.
CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    device_type TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    uses_left BIGINT NOT NULL
);
