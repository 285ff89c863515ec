-- Events the database writes itself, in the transaction of the row that causes them
-- (docs/events.md): every operation transition, whatever code path records it (delivery,
-- a device's result, expiry, cancellation, superseding); a device going unreachable or
-- active again (housekeeping sets many at once; a poll brings one back); every plugin
-- catalog change. Enrollment, removal and restore are written by the services instead,
-- which know the channel and the actor. Same in the other dialect's folder.
CREATE TRIGGER transitions_to_events AFTER INSERT ON transitions
BEGIN
    INSERT INTO events (at, type, actor, target, data)
    SELECT NEW.at, 'operation.changed', NEW.actor, 'operation/' || NEW.operation,
           json_object('operation', NEW.operation, 'activity', o.activity, 'code', o.code,
                       'device', o.device, 'device_type', d.device_type, 'device_id', d.device_id,
                       'from', NEW.from_state, 'to', NEW.to_state)
    FROM operations o JOIN devices d ON d.id = o.device
    WHERE o.id = NEW.operation;
END;

CREATE TRIGGER device_reachability_to_events AFTER UPDATE OF status ON devices
WHEN OLD.status <> NEW.status
 AND OLD.status IN ('active', 'unreachable') AND NEW.status IN ('active', 'unreachable')
BEGIN
    INSERT INTO events (at, type, target, data)
    VALUES (CAST(unixepoch('subsec') * 1000 AS INTEGER), 'device.status_changed',
            'device/' || NEW.device_type || '/' || NEW.device_id,
            json_object('device', NEW.id, 'type', NEW.device_type, 'id', NEW.device_id, 'status', NEW.status));
END;

CREATE TRIGGER plugin_events_to_events AFTER INSERT ON plugin_events
BEGIN
    INSERT INTO events (at, type, actor, target, data)
    VALUES (NEW.at, 'plugin.changed', NEW.actor, 'plugin/' || NEW.name,
            json_object('plugin', NEW.name, 'change', NEW.kind, 'version', NEW.version,
                        'sha256', NEW.sha256, 'reason', NEW.reason));
END;
