-- Deleting a subscription cancels its pending deliveries (state 'cancelled'):
-- find them by subscription without scanning every delivery.
--
-- The webhook secret inside subscriptions.channel and deliveries.channel is
-- now sealed ({"secret":{"sealed":"<envelope>"}}); SQL cannot seal (the
-- master key is not in the database), so the server seals rows still in
-- clear when it starts (Services::seal_webhook_secrets).
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, state);
