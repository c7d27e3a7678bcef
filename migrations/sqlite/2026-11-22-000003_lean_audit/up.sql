-- Every request appends an audit record on the single writer's commit path, so each index on
-- the trail is paid for on every request. Break-glass events are rare: index only those. System
-- calls carry no user: index only records that name one. audit_patient holds nothing but its
-- key, so it is stored as that key (one B-tree instead of a table plus an index).
DROP INDEX audit_event_break_glass;
CREATE INDEX audit_event_break_glass ON audit_event (recorded) WHERE break_glass = TRUE;
DROP INDEX audit_event_user;
CREATE INDEX audit_event_user ON audit_event (user_id, recorded) WHERE user_id IS NOT NULL;

CREATE TABLE audit_patient_lean (
    audit_id TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    PRIMARY KEY (patient_key, recorded, audit_id)
) WITHOUT ROWID;
INSERT INTO audit_patient_lean (audit_id, patient_key, recorded)
    SELECT audit_id, patient_key, recorded FROM audit_patient;
-- Dropping a table runs no DELETE triggers; the rows live on in audit_patient_lean.
DROP TABLE audit_patient;
ALTER TABLE audit_patient_lean RENAME TO audit_patient;
CREATE TRIGGER audit_patient_no_update BEFORE UPDATE ON audit_patient
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_patient_no_delete BEFORE DELETE ON audit_patient
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
