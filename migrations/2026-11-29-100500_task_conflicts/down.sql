DROP TABLE task_conflicts;
