-- LwM2M over DTLS with pre-shared keys (issue 29, docs/security.md "LwM2M over DTLS"):
-- one key per device, provisioned by an admin. Each is also a row of device_credentials
-- (token_hash 'psk:' and random hex), so revoking a device's credentials revokes its key
-- as it revokes its tokens and certificates.
CREATE TABLE device_psk (
    -- The PSK identity the device sends in its handshake (by default its endpoint name).
    identity TEXT PRIMARY KEY,
    device BIGINT NOT NULL UNIQUE REFERENCES devices(id) ON DELETE CASCADE,
    credential TEXT NOT NULL,
    -- The key, hex, sealed with the server's secret key (secrets.rs).
    key_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
