-- Alert rules of a tenant (issue 29, docs/security.md "Tenants", docs/analytics.md). Same
-- in the other dialect's folder.
--
-- A rule with a tenant is that tenant's: named `TENANT/NAME`, seen and managed by the
-- tenant's callers (and the operators) only, and judging the tenant's devices only,
-- whatever it applies to. NULL, as for every rule made before tenants: the operators'.
ALTER TABLE alert_rules ADD COLUMN tenant TEXT;
