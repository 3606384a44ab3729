DROP TABLE notification_cursors;
DROP TABLE inbox_entries;
DROP TABLE notification_attempts;
DROP TABLE notification_deliveries;
DROP TABLE notification_webhooks;
