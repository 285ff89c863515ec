-- Named users and scoped principals (issue 29, docs/security.md "Users and scoped roles").
-- Same in the other dialect's folder.
--
-- A user logs in with a password (argon2id, PHC string) and gets an admin token with an
-- expiry whose `user_name` names them: each request reads the user's role and scope again
-- through that column, so changing or disabling a user takes effect at the next request.
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    -- JSON (scope.rs); NULL: the whole fleet.
    scope TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    disabled_at BIGINT,
    -- Failed logins in a row, and the time before which no password is even checked.
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0
);

-- A token's scope (JSON; NULL: the whole fleet), and the user a login token stands for.
ALTER TABLE admin_tokens ADD COLUMN scope TEXT;
ALTER TABLE admin_tokens ADD COLUMN user_name TEXT;
CREATE INDEX admin_tokens_user ON admin_tokens (user_name) WHERE user_name IS NOT NULL;
