-- Delivery state of each Subscription resource (the resource itself lives in `resource`).
CREATE TABLE subscription (
    id TEXT PRIMARY KEY,
    owner_client TEXT NOT NULL,
    criteria_type TEXT NOT NULL,
    criteria TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload TEXT,
    status TEXT NOT NULL,
    error TEXT,
    updated BIGINT NOT NULL
);
CREATE INDEX subscription_active ON subscription (status, criteria_type);

-- Events to deliver, written in the same transaction as the change they announce.
CREATE TABLE outbox (
    seq BIGSERIAL PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    event TEXT NOT NULL,
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    created BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt BIGINT NOT NULL,
    delivered BOOLEAN NOT NULL,
    delivered_at BIGINT,
    outcome TEXT
);
CREATE INDEX outbox_pending ON outbox (delivered, subscription_id, seq);

-- One delivery worker per database at a time (keeps per-subscription order across instances).
CREATE TABLE worker_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires BIGINT NOT NULL
);
