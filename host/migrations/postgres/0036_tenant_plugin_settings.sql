-- What a tenant sets for a plugin (issue 29, docs/security.md "Tenants"). Same in the
-- other dialect's folder.
--
-- An MSP's customers each have their own MDM push certificate, Firebase project and
-- enrollment profile topic: a tenant's admin sets the plugin's config values, its TLS
-- client identity and its OAuth settings for the tenant's devices, over the server's
-- (`plugin_settings`). Where a plugin may send (granted hosts, redirects, CAs) stays the
-- server's. Secrets are sealed as the server's are, bound to the tenant and plugin.
CREATE TABLE tenant_plugin_settings (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    config TEXT NOT NULL,
    client_identity TEXT,
    oauth TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, plugin)
);
