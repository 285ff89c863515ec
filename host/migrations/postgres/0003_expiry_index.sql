-- The TTL sweep reads only operations that have a TTL. Same in ../sqlite/.
CREATE INDEX operations_expiring ON operations (expires_at) WHERE expires_at IS NOT NULL;
-- Superseding (REPEATED) looks up a code's pending operations by device.
CREATE INDEX operations_pending_code ON operations (code, device) WHERE state = 'PENDING';
