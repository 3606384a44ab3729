ALTER TABLE task_runtime DROP COLUMN pushed_sha;
ALTER TABLE task_runtime DROP COLUMN pushed_branch;
