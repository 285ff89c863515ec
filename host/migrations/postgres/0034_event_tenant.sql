-- Events of a tenant that are about no device (issue 29, docs/events.md). Same in the
-- other dialect's folder.
--
-- A tenant's caller reads, and a tenant's webhook subscription is sent, the events about
-- its devices; `tenant` adds the events about the tenant's own things that name no device
-- (its groups, its policies, its subscriptions). NULL: the operators', as every event
-- written before this is.
ALTER TABLE events ADD COLUMN tenant TEXT;
CREATE INDEX events_by_tenant ON events (tenant, seq);
