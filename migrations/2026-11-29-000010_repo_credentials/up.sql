-- A credential given in a repository's source URL (`https://user:secret@host/…`)
-- is kept here, never in `source`: git gets it through askpass, and the API never
-- returns it. Rows registered before this change that still hold a credential in
-- `source` are moved over at boot by their RepositoryActor (the userinfo must be
-- percent-decoded, which SQL cannot do).
ALTER TABLE repos ADD COLUMN credential_user TEXT;
ALTER TABLE repos ADD COLUMN credential_secret TEXT;
