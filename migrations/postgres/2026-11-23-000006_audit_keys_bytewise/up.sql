-- The audit trail's keys (UUIDs, client ids, SDS user ids, patient keys) are identifiers, never
-- text for people to read in order. Under a linguistic collation (including C.UTF-8 with the
-- libc provider) every B-tree comparison on them goes through strcoll, which measured as the
-- largest part of PostgreSQL's CPU per audit record: its index inserts, and the check that a
-- merged link is in the per-patient index. Byte order ("C") compares with memcmp. Ordering of
-- these ASCII identifiers is the same either way; every column compared with another here
-- changes together, so no comparison mixes collations.
ALTER TABLE audit_event
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN client_id TYPE TEXT COLLATE "C",
    ALTER COLUMN user_id TYPE TEXT COLLATE "C";
ALTER TABLE audit_patient
    ALTER COLUMN audit_id TYPE TEXT COLLATE "C",
    ALTER COLUMN patient_key TYPE TEXT COLLATE "C";
ALTER TABLE audit_patient_recent
    ALTER COLUMN audit_id TYPE TEXT COLLATE "C",
    ALTER COLUMN patient_key TYPE TEXT COLLATE "C";
