DROP TABLE task_reactions;
