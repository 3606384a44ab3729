DROP TABLE pull_requests;
DROP TABLE branches;
DROP TABLE repos;
