-- Certificates issued to an enrollment before its device is known (issue 29,
-- docs/security.md "Certificates before identities"). Same in the other dialect's folder.
--
-- An Apple enrollment profile's SCEP payload gets its identity certificate before the
-- device says who it is: the certificate is kept here, bound to the enrollment token that
-- was its challenge, until the first check-in made with it names the device. Claiming
-- moves it into `device_certificates`/`device_credentials` and deletes the row; a row
-- past `claim_by` claims nothing and is swept.
CREATE TABLE pending_certificates (
    credential TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    device_type TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    claim_by BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX pending_certificates_by_claim_by ON pending_certificates (claim_by);
