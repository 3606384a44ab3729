CREATE TABLE provider_profiles_old (
    organization TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    provider     TEXT    NOT NULL CHECK (provider IN ('worktree', 'daytona')),
    config       TEXT    NOT NULL DEFAULT '{}',
    secrets      TEXT    NOT NULL DEFAULT '{}',
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (organization, provider)
);
INSERT INTO provider_profiles_old SELECT organization, provider, config, secrets, updated_at FROM provider_profiles WHERE provider != 'github';
DROP TABLE provider_profiles;
ALTER TABLE provider_profiles_old RENAME TO provider_profiles;
ALTER TABLE task_runtime DROP COLUMN ci_feedback_count;
ALTER TABLE branches DROP COLUMN dirty_files;
ALTER TABLE repos DROP COLUMN settings;
