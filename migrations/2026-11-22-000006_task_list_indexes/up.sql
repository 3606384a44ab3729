-- The task list orders by (created_at, id) newest first; with `id` in the
-- indexes a filtered page is read straight from the index, in order.
DROP INDEX tasks_org_status;
DROP INDEX tasks_repo_status;
CREATE INDEX tasks_org_status ON tasks (organization, status, created_at DESC, id DESC);
CREATE INDEX tasks_repo_status ON tasks (repo_id, status, created_at DESC, id DESC);
CREATE INDEX tasks_repo_created ON tasks (repo_id, created_at DESC, id DESC);
