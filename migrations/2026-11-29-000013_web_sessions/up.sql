-- The dashboard's browser sign-in (docs/dashboard.md). Both tables are written
-- only by the OrganizationActor, which owns the tokens they stand for.
--
-- A sign-in code is made by an authenticated caller (`kiln dashboard`) and
-- exchanged once, within 60 seconds, for a web session. Only its SHA-256 is stored.
-- `token_id` is the organization token it signs in as; NULL means the admin.
CREATE TABLE web_sign_in_codes (
    code_hash    TEXT    NOT NULL PRIMARY KEY,
    organization TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    token_id     TEXT    REFERENCES api_tokens(id) ON DELETE CASCADE,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL
);
CREATE INDEX web_sign_in_codes_expiry ON web_sign_in_codes (organization, expires_at);

-- A signed-in browser. The cookie holds a random id; the row holds its SHA-256.
-- The session acts as its token (NULL: the admin) and dies with it: revoking the
-- token deletes its sessions, and so does the session's own expiry.
CREATE TABLE web_sessions (
    id_hash      TEXT    NOT NULL PRIMARY KEY,
    organization TEXT    NOT NULL REFERENCES organizations(name) ON DELETE CASCADE,
    token_id     TEXT    REFERENCES api_tokens(id) ON DELETE CASCADE,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL
);
CREATE INDEX web_sessions_token ON web_sessions (token_id);
CREATE INDEX web_sessions_expiry ON web_sessions (organization, expires_at);
