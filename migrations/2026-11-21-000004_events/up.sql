-- The append-only history, written only by the HistoryActor. No foreign keys:
-- history outlives the rows it talks about.
CREATE TABLE events (
    id           INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    organization TEXT    NOT NULL,
    repo         TEXT,
    task         TEXT,
    kind         TEXT    NOT NULL,
    at           BIGINT  NOT NULL,
    data         TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX events_org ON events (organization, id);
CREATE INDEX events_org_task ON events (organization, task, id);
CREATE INDEX events_org_repo ON events (organization, repo, id);
CREATE INDEX events_org_kind ON events (organization, kind, id);
