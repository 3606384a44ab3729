-- Repositories and what the pollers observe of them.
-- Written only by the RepositoryActor.
CREATE TABLE repos (
    id             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    organization   TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    name           TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    source_kind    TEXT    NOT NULL CHECK (source_kind IN ('path', 'url')),
    mirror_path    TEXT    NOT NULL,
    default_branch TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    UNIQUE (organization, name),
    UNIQUE (organization, source)
);

CREATE TABLE branches (
    repo_id    INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    head_sha   TEXT    NOT NULL,
    ahead      INTEGER,
    behind     INTEGER,
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, name)
);

CREATE TABLE pull_requests (
    repo_id         INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    number          INTEGER NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('open', 'closed', 'merged')),
    draft           BOOLEAN NOT NULL DEFAULT 0,
    title           TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    head_ref        TEXT    NOT NULL,
    head_sha        TEXT    NOT NULL,
    base_ref        TEXT    NOT NULL,
    mergeable       BOOLEAN,
    ci_state        TEXT    CHECK (ci_state IN ('pending', 'success', 'failure')),
    review_decision TEXT    CHECK (review_decision IN ('approved', 'changes_requested', 'review_required')),
    updated_at      BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, number)
);
CREATE INDEX pull_requests_head ON pull_requests (repo_id, head_ref);
