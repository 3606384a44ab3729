-- The push lease: the remote branch Kiln last pushed a task to and the commit it
-- pushed there. After Kiln rewrites the branch (a sync that rebases), the next
-- push may replace exactly that commit (`--force-with-lease`) and nothing else.
ALTER TABLE task_runtime ADD COLUMN pushed_branch TEXT;
ALTER TABLE task_runtime ADD COLUMN pushed_sha TEXT;
