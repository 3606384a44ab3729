-- The git lifecycle: per-repository settings (GitHub slug, automation), the
-- dirty-file count the branch poller sees, the CI-feedback count per task, and
-- `github` as an integration profile (its token and webhook secret).
ALTER TABLE repos ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
ALTER TABLE branches ADD COLUMN dirty_files INTEGER;
ALTER TABLE task_runtime ADD COLUMN ci_feedback_count INTEGER NOT NULL DEFAULT 0;

CREATE TABLE provider_profiles_new (
    organization TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    provider     TEXT    NOT NULL CHECK (provider IN ('worktree', 'daytona', 'github')),
    config       TEXT    NOT NULL DEFAULT '{}',
    secrets      TEXT    NOT NULL DEFAULT '{}',
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (organization, provider)
);
INSERT INTO provider_profiles_new SELECT organization, provider, config, secrets, updated_at FROM provider_profiles;
DROP TABLE provider_profiles;
ALTER TABLE provider_profiles_new RENAME TO provider_profiles;
