-- Organizations are the tenants; everything else hangs off one.
-- Written only by the OrganizationActor (with provider_profiles and api_tokens).
CREATE TABLE organizations (
    name         TEXT    NOT NULL PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 63),
    display_name TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);

CREATE TABLE provider_profiles (
    organization TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    provider     TEXT    NOT NULL CHECK (provider IN ('worktree', 'daytona')),
    config       TEXT    NOT NULL DEFAULT '{}',
    secrets      TEXT    NOT NULL DEFAULT '{}',
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (organization, provider)
);

CREATE TABLE api_tokens (
    id           TEXT    NOT NULL PRIMARY KEY,
    organization TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    created_at   BIGINT  NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX api_tokens_organization ON api_tokens (organization, created_at);
