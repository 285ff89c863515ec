-- Plugins of a tenant (issue 29, docs/security.md "Tenants", docs/plugin-platform.md). Same
-- in the other dialect's folder.
--
-- A plugin name a tenant's admin first uploaded is that tenant's: only its admins (and the
-- operators) add versions to it, roll it back or suspend it; only its devices enroll as
-- that device type; no other tenant sees it. A name without a row here is shared: a
-- first-party plugin, or one the server's operators uploaded for every tenant.
CREATE TABLE plugin_owners (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    claimed_at BIGINT NOT NULL
);
