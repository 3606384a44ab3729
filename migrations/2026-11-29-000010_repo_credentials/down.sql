ALTER TABLE repos DROP COLUMN credential_secret;
ALTER TABLE repos DROP COLUMN credential_user;
