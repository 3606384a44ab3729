ALTER TABLE repos DROP COLUMN registered_by;
