-- A remote sandbox's power state (docs/providers.md, "Auto-stop"), written only
-- by the SandboxActor. `null` for providers without one (worktree).
--   run_state:       started, stopping, stopped (for idleness, or by Daytona
--                    itself) or starting (a transparent resume in progress).
--   auto_stopped_at: when it was last stopped while its task was active (unix
--                    ms); `null` while it runs.
--   stopped_by:      who stopped it: `kiln` (idle for auto_stop_minutes) or
--                    `daytona` (stopped outside Kiln).
ALTER TABLE sandbox_instances ADD COLUMN run_state TEXT
    CHECK (run_state IN ('started', 'stopping', 'stopped', 'starting'));
ALTER TABLE sandbox_instances ADD COLUMN auto_stopped_at BIGINT;
ALTER TABLE sandbox_instances ADD COLUMN stopped_by TEXT CHECK (stopped_by IN ('kiln', 'daytona'));
