ALTER TABLE sandbox_instances DROP COLUMN stopped_by;
ALTER TABLE sandbox_instances DROP COLUMN auto_stopped_at;
ALTER TABLE sandbox_instances DROP COLUMN run_state;
