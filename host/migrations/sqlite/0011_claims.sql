-- Who may claim a pre-registered identity (docs/security.md, "Enrollment"). An identity an
-- admin imported is claimed with an enrollment token, unless the import said devices may
-- claim their own (`self_enroll`); a token made for one import (`import_batch`) claims
-- only that import's identities. Same in the other dialect's folder.
ALTER TABLE devices ADD COLUMN self_enroll BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN import_batch TEXT;
ALTER TABLE enrollment_tokens ADD COLUMN import_batch TEXT;
