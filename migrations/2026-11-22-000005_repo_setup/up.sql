-- A repository's setup step: commands run in the task's terminal before the
-- agent, and untracked files copied from the source checkout. JSON:
-- {"commands": ["npm ci"], "copy": [".env"]}.
ALTER TABLE repos ADD COLUMN setup TEXT NOT NULL DEFAULT '{"commands":[],"copy":[]}';
