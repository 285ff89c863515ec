-- Policies (docs/policies.md): a policy is a name with numbered revisions; an edit adds a
-- revision and `revision` points at the current one, so history stays readable and an
-- old revision can be restored. `device_policies` is each device's effective policy: the
-- digest of the profile features it was sent, the policies that made them, and the
-- POLICY_BUNDLE operation that carries them. Same in the other dialect's folder.
CREATE TABLE policies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    revision BIGINT NOT NULL,
    active BIGINT NOT NULL DEFAULT 1,
    priority BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE policy_revisions (
    policy BIGINT NOT NULL REFERENCES policies(id) ON DELETE CASCADE,
    revision BIGINT NOT NULL,
    spec TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (policy, revision)
);

CREATE TABLE device_policies (
    device BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    policies TEXT NOT NULL,
    operation BIGINT,
    assigned_at BIGINT NOT NULL
);
