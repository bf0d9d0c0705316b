-- Sessions keep no secret in the clear (issue 22). The CSRF token is now
-- derived from the session id (HMAC), which only the browser holds, so the
-- column goes. The provider's ID token (for id_token_hint at logout) is kept
-- only sealed under a key derived from the same id; tokens stored in the
-- clear before are blanked first (sessions made before this migration log
-- out without a hint), then the column goes. SQLite rewrites the table on
-- DROP COLUMN; freed pages may keep old bytes until the file is vacuumed.
UPDATE sessions SET id_token = NULL, csrf_token = '';
ALTER TABLE sessions DROP COLUMN id_token;
ALTER TABLE sessions DROP COLUMN csrf_token;
-- base64url(nonce || AES-256-GCM ciphertext), see certflow-server session.rs.
ALTER TABLE sessions ADD COLUMN sealed_id_token TEXT;
