-- Telemetry: every reported value, and the latest value of each name per device.
-- `value` is the JSON scalar as reported; `number` holds numbers (and booleans as 0/1)
-- for range queries. Same in the other backend but for identity and float types.
CREATE TABLE telemetry (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    at BIGINT NOT NULL,
    value TEXT NOT NULL,
    number REAL
);
CREATE INDEX telemetry_by_device ON telemetry (device, id);
CREATE INDEX telemetry_by_name ON telemetry (device, name, id);
CREATE INDEX telemetry_by_time ON telemetry (at);

CREATE TABLE telemetry_latest (
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    at BIGINT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device, name)
);
