DROP TABLE outbox;
DROP TABLE subscription;
