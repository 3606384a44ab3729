-- ACP sessions: what the TaskActor needs to resume and restore a session, and a
-- `session` column on events so a session's journal reads by index.
ALTER TABLE task_sessions ADD COLUMN mode TEXT;
ALTER TABLE task_sessions ADD COLUMN model TEXT;
-- The stopReason of the last finished turn.
ALTER TABLE task_sessions ADD COLUMN stop_reason TEXT;
-- A session/request_permission is waiting for an answer.
ALTER TABLE task_sessions ADD COLUMN awaiting_input BOOLEAN NOT NULL DEFAULT 0;
-- The ACP instance's createdAtMs: a different one means the remote sequence restarted.
ALTER TABLE task_sessions ADD COLUMN remote_epoch BIGINT;
-- The agent answered initialize with agentCapabilities.loadSession = true.
ALTER TABLE task_sessions ADD COLUMN load_session BOOLEAN NOT NULL DEFAULT 0;
-- Why the session was lost or closed, in words.
ALTER TABLE task_sessions ADD COLUMN last_error TEXT;

ALTER TABLE events ADD COLUMN session TEXT;
CREATE INDEX events_session ON events (session, id) WHERE session IS NOT NULL;
