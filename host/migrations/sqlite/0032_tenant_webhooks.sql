-- Webhooks of a tenant (issue 29, docs/security.md "Tenants"). Same in the other dialect's folder.
--
-- A subscription with a tenant is that tenant's: named `TENANT/NAME`, seen and managed by
-- the tenant's admins (and the operators), and sent only the events about the tenant's
-- devices. NULL: the operators', as every subscription made before tenants is.
ALTER TABLE webhooks ADD COLUMN tenant TEXT;
