-- Who registered a repository: the admin token or an organization's token. The
-- host policy for source URLs (repos.deny_private_hosts) applies, at every fetch,
-- to what an organization registered. Rows from before this change are taken as
-- an organization's: the policy applies to them (the operator lets a private
-- host through with repos.allowed_hosts).
ALTER TABLE repos ADD COLUMN registered_by TEXT NOT NULL DEFAULT 'organization'
    CHECK (registered_by IN ('admin', 'organization'));
