DROP TABLE api_tokens;
DROP TABLE provider_profiles;
DROP TABLE organizations;
