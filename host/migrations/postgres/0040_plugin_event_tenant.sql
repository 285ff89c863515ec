-- A tenant's plugin's `plugin.changed` events are the tenant's (issue 29, docs/events.md):
-- the trigger that writes them from `plugin_events` (0013) now names the plugin's tenant
-- (`plugin_owners`, 0039), so they are in the tenant's event log and its webhook
-- subscriptions. A shared plugin's stay the operators'. Same in the other dialect's
-- folder.
CREATE OR REPLACE FUNCTION plugin_events_to_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (at, type, actor, target, data, tenant)
    VALUES (NEW.at, 'plugin.changed', NEW.actor, 'plugin/' || NEW.name,
            json_build_object('plugin', NEW.name, 'change', NEW.kind, 'version', NEW.version,
                              'sha256', NEW.sha256, 'reason', NEW.reason)::text,
            (SELECT tenant FROM plugin_owners WHERE name = NEW.name));
    RETURN NULL;
END $$;
