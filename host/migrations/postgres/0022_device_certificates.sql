-- Device identity (issue 29, docs/security.md): the CA that signs device certificates, and
-- the certificates it issued. Each certificate is also a row of device_credentials, with
-- token_hash 'cert:' and the SHA-256 of its DER: the poll path, the broker's gate and
-- revocation treat it as any other credential of the device.
CREATE TABLE device_ca (
    id BIGINT PRIMARY KEY,
    cert_pem TEXT NOT NULL,
    -- The CA's private key, sealed with the server's secret key (secrets.rs).
    key_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE device_certificates (
    serial TEXT PRIMARY KEY,
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    credential TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    issued_at BIGINT NOT NULL
);
CREATE INDEX device_certificates_by_device ON device_certificates (device);
