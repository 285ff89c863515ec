-- The TTL sweep reads only operations that have a TTL. Same in ../sqlite/.
CREATE INDEX operations_expiring ON operations (expires_at) WHERE expires_at IS NOT NULL;
