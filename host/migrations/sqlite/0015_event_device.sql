-- The device an event is about (its key), so readers can select the events of a group's or
-- a tag's devices (webhook filters); the triggers of 0013 now fill it. Webhooks may be
-- limited to a group or a tag. Same in the other dialect's folder.
ALTER TABLE events ADD COLUMN device BIGINT;
CREATE INDEX events_device ON events (device, seq);
ALTER TABLE webhooks ADD COLUMN group_name TEXT;
ALTER TABLE webhooks ADD COLUMN tag TEXT;

DROP TRIGGER transitions_to_events;
CREATE TRIGGER transitions_to_events AFTER INSERT ON transitions
BEGIN
    INSERT INTO events (at, type, actor, target, data, device)
    SELECT NEW.at, 'operation.changed', NEW.actor, 'operation/' || NEW.operation,
           json_object('operation', NEW.operation, 'activity', o.activity, 'code', o.code,
                       'device', o.device, 'device_type', d.device_type, 'device_id', d.device_id,
                       'from', NEW.from_state, 'to', NEW.to_state),
           o.device
    FROM operations o JOIN devices d ON d.id = o.device
    WHERE o.id = NEW.operation;
END;

DROP TRIGGER device_reachability_to_events;
CREATE TRIGGER device_reachability_to_events AFTER UPDATE OF status ON devices
WHEN OLD.status <> NEW.status
 AND OLD.status IN ('active', 'unreachable') AND NEW.status IN ('active', 'unreachable')
BEGIN
    INSERT INTO events (at, type, target, data, device)
    VALUES (CAST(unixepoch('subsec') * 1000 AS INTEGER), 'device.status_changed',
            'device/' || NEW.device_type || '/' || NEW.device_id,
            json_object('device', NEW.id, 'type', NEW.device_type, 'id', NEW.device_id, 'status', NEW.status),
            NEW.id);
END;
