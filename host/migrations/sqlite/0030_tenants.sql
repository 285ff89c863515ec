-- Tenants (issue 29, docs/security.md "Tenants"). Same in the other dialect's folder.
--
-- A tenant owns devices (and through them their operations, telemetry, certificates,
-- keys and compliance). An admin token or user with a tenant reaches only that
-- tenant's devices; one without (NULL: every token and user made before tenants) is one
-- of the server's operators and reaches every tenant, as before. Devices enrolled
-- before tenants, or without an enrollment token of a tenant, are in `default`.
CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
INSERT INTO tenants (name, description, created_at) VALUES ('default', 'The tenant devices are in unless put in another', 0);

ALTER TABLE devices ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX devices_by_tenant ON devices (tenant, id);
ALTER TABLE admin_tokens ADD COLUMN tenant TEXT;
ALTER TABLE users ADD COLUMN tenant TEXT;
ALTER TABLE enrollment_tokens ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
