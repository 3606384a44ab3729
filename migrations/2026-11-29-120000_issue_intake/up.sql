-- Issues in (docs/git.md, "Issues in"): the GitHub issue a task was made from.
-- The row is inserted in the same transaction as its task, and
-- (repo_id, issue_number) is unique: one issue makes at most one task, across
-- poll and webhook races and restarts, and there is no moment when the task
-- exists without its claim. Written only by the TaskActor.
--   comment_state: the comment on the issue that reports the task's PR:
--                  `none`, `pending` (claimed, maybe posted: look for its
--                  marker before posting again), `posted`, or `failed` (given up).
CREATE TABLE task_issues (
    task_id          TEXT    NOT NULL PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    repo_id          INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    issue_number     BIGINT  NOT NULL,
    url              TEXT    NOT NULL,
    title            TEXT    NOT NULL,
    comment_state    TEXT    NOT NULL DEFAULT 'none'
                             CHECK (comment_state IN ('none', 'pending', 'posted', 'failed')),
    comment_attempts INTEGER NOT NULL DEFAULT 0,
    comment_url      TEXT,
    created_at       BIGINT  NOT NULL,
    UNIQUE (repo_id, issue_number)
);
