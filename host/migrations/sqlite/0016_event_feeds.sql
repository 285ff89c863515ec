-- Feeds that republish the event log elsewhere (the MQTT event topic, docs/events.md).
-- `cursor` is the last event the feed's receiver acknowledged; `holder` is the replica
-- publishing it until `lease_until`, so that one replica at a time publishes a feed and
-- another takes over when that one dies. Same in the other dialect's folder.
CREATE TABLE event_feeds (
    name TEXT PRIMARY KEY,
    cursor BIGINT NOT NULL,
    holder TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
