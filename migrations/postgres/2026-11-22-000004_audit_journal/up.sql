-- Read requests' audit records are first appended to the audit journal (an fsync'd log beside
-- the database) and then copied here in large batches. This row says how far the copy has got:
-- every journal record with a sequence number up to `applied` is in audit_event, and is never
-- copied twice because the copy and this update commit together.
CREATE TABLE audit_journal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    applied BIGINT NOT NULL
);
INSERT INTO audit_journal (id, applied) VALUES (1, 0);
