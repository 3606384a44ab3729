ALTER TABLE task_runtime DROP COLUMN confine_abi;
ALTER TABLE task_runtime DROP COLUMN confined;
