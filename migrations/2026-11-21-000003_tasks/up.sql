-- Tasks, their runtime and ACP sessions: written only by the TaskActor.
-- Sandbox instances: written only by the SandboxActor.
CREATE TABLE tasks (
    id             TEXT    NOT NULL PRIMARY KEY,
    organization   TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    repo_id        INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    title          TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    base_branch    TEXT    NOT NULL,
    branch         TEXT    NOT NULL,
    agent          TEXT    NOT NULL,
    provider       TEXT    NOT NULL CHECK (provider IN ('worktree', 'daytona')),
    status         TEXT    NOT NULL CHECK (status IN ('queued', 'provisioning', 'running', 'idle',
                                                      'stalled', 'interrupted', 'failed', 'archived', 'killed')),
    status_reason  TEXT,
    awaiting_input BOOLEAN NOT NULL DEFAULT 0,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    UNIQUE (repo_id, branch)
);
CREATE INDEX tasks_org_created ON tasks (organization, created_at DESC, id DESC);
CREATE INDEX tasks_org_status ON tasks (organization, status, created_at DESC);
CREATE INDEX tasks_repo_status ON tasks (repo_id, status, created_at DESC);

CREATE TABLE task_runtime (
    task_id        TEXT    NOT NULL PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    pid            INTEGER,
    exit_code      INTEGER,
    started_at     BIGINT,
    last_output_at BIGINT,
    updated_at     BIGINT  NOT NULL
);

CREATE TABLE task_sessions (
    id                TEXT    NOT NULL PRIMARY KEY,
    task_id           TEXT    NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    agent             TEXT    NOT NULL,
    acp_server_id     TEXT    NOT NULL,
    remote_session_id TEXT,
    status            TEXT    NOT NULL CHECK (status IN ('starting', 'ready', 'prompting', 'closed', 'lost')),
    last_remote_seq   BIGINT  NOT NULL DEFAULT 0,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL
);
CREATE INDEX task_sessions_task ON task_sessions (task_id, created_at);

CREATE TABLE sandbox_instances (
    id           TEXT    NOT NULL PRIMARY KEY,
    organization TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    task_id      TEXT    NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    provider     TEXT    NOT NULL CHECK (provider IN ('worktree', 'daytona')),
    state        TEXT    NOT NULL CHECK (state IN ('creating', 'ready', 'lost', 'destroying', 'destroyed', 'failed')),
    path         TEXT,
    remote_id    TEXT,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);
CREATE INDEX sandbox_instances_task ON sandbox_instances (task_id, created_at);
