-- Artifacts and rollouts of a tenant (issue 29, docs/security.md "Tenants",
-- docs/rollouts.md). Same in the other dialect's folder.
--
-- An artifact with a tenant is that tenant's: named `TENANT/NAME`, seen, used and removed
-- by the tenant's admins (and the operators) only. A rollout belongs to its artifact's
-- tenant: it is named `TENANT/NAME`, reaches the tenant's devices only, and rolls a device
-- back only to another of the tenant's artifacts. NULL, as for everything made before
-- tenants: the operators'.
ALTER TABLE artifacts ADD COLUMN tenant TEXT;
ALTER TABLE rollouts ADD COLUMN tenant TEXT;
