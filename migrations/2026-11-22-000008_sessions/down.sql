DROP INDEX events_session;
ALTER TABLE events DROP COLUMN session;
ALTER TABLE task_sessions DROP COLUMN last_error;
ALTER TABLE task_sessions DROP COLUMN load_session;
ALTER TABLE task_sessions DROP COLUMN remote_epoch;
ALTER TABLE task_sessions DROP COLUMN awaiting_input;
ALTER TABLE task_sessions DROP COLUMN stop_reason;
ALTER TABLE task_sessions DROP COLUMN model;
ALTER TABLE task_sessions DROP COLUMN mode;
