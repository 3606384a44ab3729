DROP TABLE task_issues;
