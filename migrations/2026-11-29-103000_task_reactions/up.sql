-- Reactions (docs/git.md, "Reactions"): what Kiln did on its own about a task's
-- pull request or agent, one row per cause it reacted to, so a cause fires once
-- even across restarts. Written only by the TaskActor.
--   cause_key: what makes the cause distinct (`<check>@<sha>`, `review:<id>`,
--   `comment:<id>`, `conflict@<sha>`, `ready@<sha>`, `silent@<ms>`, `escalated`).
--   attempt:   the firing it belonged to (1, 2, …, per task and cause); the keys
--              one firing covered share it.
CREATE TABLE task_reactions (
    task_id   TEXT    NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    cause     TEXT    NOT NULL CHECK (cause IN ('ci_failed', 'changes_requested', 'bot_comments',
                                               'merge_conflict', 'agent_stuck', 'approved_and_green')),
    cause_key TEXT    NOT NULL,
    attempt   INTEGER NOT NULL,
    outcome   TEXT    NOT NULL CHECK (outcome IN ('pending', 'delivered', 'synced', 'merged', 'notified',
                                                 'escalated', 'failed')),
    fired_at  BIGINT  NOT NULL,
    PRIMARY KEY (task_id, cause, cause_key)
);
