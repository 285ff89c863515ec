-- Devices online for push on an external broker (docs/delivery.md, "Replicas"): a row
-- while the device's last word on its `status` topic was `online`. Any replica may hear
-- that word (the shared subscription gives each message to one of them), and any replica
-- may publish to any device, so whichever replica adds an activity reads here which of
-- its devices to push to. The embedded broker keeps presence in its process instead.
-- Same in the other dialect's folder.
CREATE TABLE push_presence (
    device BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    since BIGINT NOT NULL
);
