ALTER TABLE task_runtime DROP COLUMN log_error;
