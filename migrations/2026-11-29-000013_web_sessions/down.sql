DROP TABLE web_sessions;
DROP TABLE web_sign_in_codes;
