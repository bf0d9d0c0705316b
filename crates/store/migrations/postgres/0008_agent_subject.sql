-- Agents enrolled with an OIDC client-credentials access token (PostgreSQL):
-- the same change as migrations/sqlite/0008_agent_subject.sql, which explains it.
ALTER TABLE agents ADD COLUMN subject TEXT COLLATE "C";
CREATE UNIQUE INDEX agents_subject ON agents (subject);
