-- Sessions keep no secret in the clear: migrations/sqlite/0013_session_secrets.sql
-- explains it. PostgreSQL's DROP COLUMN only hides the values, so the rows
-- are rewritten without them first (the old row versions go with VACUUM).
UPDATE sessions SET id_token = NULL, csrf_token = '';
ALTER TABLE sessions DROP COLUMN id_token, DROP COLUMN csrf_token,
    ADD COLUMN sealed_id_token TEXT;
