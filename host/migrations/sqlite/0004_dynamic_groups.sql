-- Dynamic groups: a group with a query (JSON, see store::DeviceQuery) has no stored
-- members; its devices are whichever match the query when it is used. Same in both backends.
ALTER TABLE device_groups ADD COLUMN query TEXT;
