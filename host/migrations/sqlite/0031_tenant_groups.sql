-- Groups of a tenant (issue 29, docs/security.md "Tenants"). Same in the other dialect's folder.
--
-- A group with a tenant is that tenant's: named `TENANT/NAME`, seen and used by the
-- tenant's callers (and the operators), holding only the tenant's devices (a static
-- group's members are checked when added; a dynamic group's query is narrowed to the
-- tenant when it is used). NULL: a group of the server's operators, as every group made
-- before tenants is.
ALTER TABLE device_groups ADD COLUMN tenant TEXT;
CREATE INDEX device_groups_by_tenant ON device_groups (tenant, name);
