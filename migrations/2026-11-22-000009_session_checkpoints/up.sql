-- A session's view (its journal folded) as of one journal event, so a long
-- journal is not folded from its start each time: the view plus the journal
-- events after `checkpoint_event_id` is the whole view.
ALTER TABLE task_sessions ADD COLUMN checkpoint TEXT;
ALTER TABLE task_sessions ADD COLUMN checkpoint_event_id BIGINT NOT NULL DEFAULT 0;
