-- deliveries_subscription (PostgreSQL): see migrations/sqlite/0014_subscription_deliveries.sql.
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, state);
