-- Where a console login returns after the provider's callback: a path under
-- /console/ (checked by the server before it is stored; NULL: the dashboard).
ALTER TABLE login_states ADD COLUMN return_to TEXT;
