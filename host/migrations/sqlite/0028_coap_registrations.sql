-- LwM2M registrations (coap/registration.rs; docs/lwm2m.md, "Registrations"): written
-- through from each replica's memory, so a registration survives a restart and any
-- replica can answer a device's update or de-registration, and the replica that adds an
-- activity finds the registered devices to send it to. `addr` is the socket address the
-- device registered or last updated from; `secure` 1 when that was over DTLS; the
-- registration ends `lifetime_secs` after `updated_at` (ms) unless updated.
-- Same in the other dialect's folder.
CREATE TABLE coap_registrations (
    id TEXT PRIMARY KEY,
    device BIGINT NOT NULL UNIQUE REFERENCES devices(id) ON DELETE CASCADE,
    device_type TEXT NOT NULL,
    device_id TEXT NOT NULL,
    addr TEXT NOT NULL,
    secure BIGINT NOT NULL,
    lifetime_secs BIGINT NOT NULL,
    binding TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
