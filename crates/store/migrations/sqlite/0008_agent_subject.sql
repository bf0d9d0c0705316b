-- Agents enrolled with an OIDC client-credentials access token (SQLite).
-- `subject` is the token's issuer-qualified subject, `<iss>|<sub>` (see
-- certflow_core::agents::token_subject); NULL for agents enrolled with a join
-- token. Every request of such an agent must carry a valid token with this
-- subject, and enrolling again with it (identity expired) finds the same
-- agent. The unique index keeps it to one agent per subject, so two first
-- enrolments racing cannot create two; NULLs are distinct in it.
ALTER TABLE agents ADD COLUMN subject TEXT;
CREATE UNIQUE INDEX agents_subject ON agents (subject);
