-- A tenant's plugin's `plugin.changed` events are the tenant's (issue 29, docs/events.md):
-- the trigger that writes them from `plugin_events` (0013) now names the plugin's tenant
-- (`plugin_owners`, 0039), so they are in the tenant's event log and its webhook
-- subscriptions. A shared plugin's stay the operators'. Same in the other dialect's
-- folder.
DROP TRIGGER plugin_events_to_events;
CREATE TRIGGER plugin_events_to_events AFTER INSERT ON plugin_events
BEGIN
    INSERT INTO events (at, type, actor, target, data, tenant)
    VALUES (NEW.at, 'plugin.changed', NEW.actor, 'plugin/' || NEW.name,
            json_object('plugin', NEW.name, 'change', NEW.kind, 'version', NEW.version,
                        'sha256', NEW.sha256, 'reason', NEW.reason),
            (SELECT tenant FROM plugin_owners WHERE name = NEW.name));
END;
