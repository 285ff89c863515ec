-- CoAP requests Drover sent and awaits the answer to (coap/exchange.rs; docs/delivery.md,
-- "Registrations are stored"): written through from each replica's memory, so an answer that
-- reaches a restarted replica, or another one, is still matched to its operation by its
-- token (hex). Only the address the request went to (`addr`, `secure` 1 over DTLS) may
-- answer it. `observe` 1 for an observation, whose notifications keep coming under the
-- token; other rows end with their answer, or are swept after the answer timeout.
-- Same in the other dialect's folder.
CREATE TABLE coap_exchanges (
    token TEXT PRIMARY KEY,
    device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    addr TEXT NOT NULL,
    secure BIGINT NOT NULL,
    path TEXT NOT NULL,
    operation_id BIGINT NOT NULL,
    observe BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX coap_exchanges_device ON coap_exchanges (device);
