ALTER TABLE task_sessions DROP COLUMN checkpoint_event_id;
ALTER TABLE task_sessions DROP COLUMN checkpoint;
