-- Operations handed out and not yet answered, by when they last changed: what the
-- answer-timeout sweep reads (Store::requeue_unanswered). Partial, so it stays the size
-- of what is in flight whatever the history. Same in the other dialect's folder.
CREATE INDEX operations_in_flight ON operations (updated_at) WHERE state = 'IN_PROGRESS';
