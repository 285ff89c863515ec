-- A device's queue (PENDING and NOTNOW, oldest first) is read by every poll and push.
-- On operations_queue (device, state, id) that read is two ranges, one per state, which
-- the database merges with a sort; this index holds only queued operations, in id order,
-- so the read is one range and no sort, and it does not grow with a device's history.
-- Same in ../postgres/.
CREATE INDEX operations_queued ON operations (device, id) WHERE state IN ('PENDING', 'NOTNOW');
