-- The latest checks of a pull request's head, as the PR poller saw them: a JSON
-- array of {kind, name, status, conclusion, url} from the check runs and the
-- combined status, by name, the first 100. NULL until the poller has looked.
ALTER TABLE pull_requests ADD COLUMN checks TEXT;
