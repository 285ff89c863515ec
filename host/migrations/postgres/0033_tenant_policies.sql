-- Policies of a tenant (issue 29, docs/security.md "Tenants", docs/policies.md). Same in
-- the other dialect's folder.
--
-- A policy with a tenant is that tenant's: named `TENANT/NAME`, seen and managed by the
-- tenant's admins (and the operators), and applied to the tenant's devices only. The
-- operators' policies (NULL, as every policy made before tenants is) rank above every
-- tenant's, so a tenant cannot override what the server's operators set.
ALTER TABLE policies ADD COLUMN tenant TEXT;
