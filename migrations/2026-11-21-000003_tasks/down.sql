DROP TABLE sandbox_instances;
DROP TABLE task_sessions;
DROP TABLE task_runtime;
DROP TABLE tasks;
