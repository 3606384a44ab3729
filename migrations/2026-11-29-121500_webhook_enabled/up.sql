-- A webhook can be switched off without losing it (PATCH …/webhooks/{id}):
-- while off, no delivery is made for it and its pending ones wait.
ALTER TABLE notification_webhooks ADD COLUMN enabled BOOLEAN NOT NULL DEFAULT 1
    CHECK (enabled IN (0, 1));
