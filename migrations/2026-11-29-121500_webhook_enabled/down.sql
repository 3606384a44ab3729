ALTER TABLE notification_webhooks DROP COLUMN enabled;
