-- Notifications out (docs/notifications.md): an organization's outbound
-- webhooks, their deliveries and each delivery's attempts, the inbox, and how
-- far each organization's history has been read for them. Every table is
-- written only by the NotifierActor.

-- A receiver. `secret` signs every delivery (HMAC-SHA256); the API shows it
-- once, at creation. `kinds` is a JSON array of notification kinds (empty: all).
-- Only events after `after_event` are delivered to it (none from before it existed).
CREATE TABLE notification_webhooks (
    id           TEXT    NOT NULL PRIMARY KEY,
    organization TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    url          TEXT    NOT NULL,
    format       TEXT    NOT NULL CHECK (format IN ('json', 'slack')),
    kinds        TEXT    NOT NULL DEFAULT '[]',
    secret       TEXT    NOT NULL,
    after_event  BIGINT  NOT NULL,
    created_at   BIGINT  NOT NULL,
    created_by   TEXT
);
CREATE INDEX notification_webhooks_org ON notification_webhooks (organization, created_at);

-- One notification for one webhook: the exact body, sent again as is on each
-- retry. `event_id` is NULL for a test delivery; otherwise one delivery per
-- webhook and event, also across restarts.
CREATE TABLE notification_deliveries (
    id              TEXT    NOT NULL PRIMARY KEY,
    organization    TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    webhook_id      TEXT    NOT NULL REFERENCES notification_webhooks(id) ON DELETE CASCADE,
    event_id        BIGINT,
    kind            TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    finished_at     BIGINT
);
CREATE UNIQUE INDEX notification_deliveries_once ON notification_deliveries (webhook_id, event_id);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_at);
CREATE INDEX notification_deliveries_log ON notification_deliveries (webhook_id, created_at);

-- Each try of a delivery: the receiver's status (NULL: no answer) or why not.
CREATE TABLE notification_attempts (
    delivery_id  TEXT    NOT NULL REFERENCES notification_deliveries(id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    at           BIGINT  NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    duration_ms  BIGINT  NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- The inbox: one entry per event that needs a person, keyed by the event's id.
-- Read marks are the organization's (`read_by`: the token that marked it, NULL
-- for the admin).
CREATE TABLE inbox_entries (
    id           BIGINT  NOT NULL PRIMARY KEY,
    organization TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    kind         TEXT    NOT NULL,
    repo         TEXT,
    task         TEXT,
    title        TEXT,
    data         TEXT    NOT NULL DEFAULT '{}',
    at           BIGINT  NOT NULL,
    read_at      BIGINT,
    read_by      TEXT
);
CREATE INDEX inbox_entries_org ON inbox_entries (organization, id);
CREATE INDEX inbox_entries_unread ON inbox_entries (organization, read_at);

-- The last event of each organization read for notifications.
CREATE TABLE notification_cursors (
    organization TEXT    NOT NULL PRIMARY KEY REFERENCES organizations(name) ON DELETE CASCADE,
    last_event   BIGINT  NOT NULL
);
