-- Whether each task's agent runs confined (Landlock), and at which ABI; NULL
-- until its agent has been started since this migration.
ALTER TABLE task_runtime ADD COLUMN confined BOOLEAN;
ALTER TABLE task_runtime ADD COLUMN confine_abi INTEGER;
