-- Conflict prediction: the conflicts the branch poller predicts between the
-- active tasks of a repository, and between each task and its base branch.
-- Written by the RepositoryActor only. A pair of tasks is one row, with the
-- smaller task id in `task_id`; `other` is the other task's id, or 'base'.
CREATE TABLE task_conflicts (
    repo_id    INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    task_id    TEXT    NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    other      TEXT    NOT NULL,
    -- JSON array of paths, sorted, at most 200.
    files      TEXT    NOT NULL,
    -- When this conflict was first predicted (unix ms); kept while it lasts.
    since      BIGINT  NOT NULL,
    -- When its files last changed.
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (repo_id, task_id, other)
);
