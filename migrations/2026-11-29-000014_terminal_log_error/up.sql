-- Why the task's terminal log cannot be written (a full disk), while it cannot;
-- NULL when it is fine. Output still reaches attachers meanwhile.
ALTER TABLE task_runtime ADD COLUMN log_error TEXT;
