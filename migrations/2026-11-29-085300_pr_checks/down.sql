ALTER TABLE pull_requests DROP COLUMN checks;
