DROP INDEX tasks_repo_created;
DROP INDEX tasks_repo_status;
DROP INDEX tasks_org_status;
CREATE INDEX tasks_org_status ON tasks (organization, status, created_at DESC);
CREATE INDEX tasks_repo_status ON tasks (repo_id, status, created_at DESC);
