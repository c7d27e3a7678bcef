DROP TABLE worker_lease;
DROP TABLE outbox;
DROP TABLE subscription;
