DROP INDEX audit_event_break_glass;
CREATE INDEX audit_event_break_glass ON audit_event (break_glass, recorded);
DROP INDEX audit_event_user;
CREATE INDEX audit_event_user ON audit_event (user_id, recorded);

CREATE TABLE audit_patient_rowid (
    audit_id TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    PRIMARY KEY (patient_key, recorded, audit_id)
);
INSERT INTO audit_patient_rowid (audit_id, patient_key, recorded)
    SELECT audit_id, patient_key, recorded FROM audit_patient;
DROP TABLE audit_patient;
ALTER TABLE audit_patient_rowid RENAME TO audit_patient;
CREATE TRIGGER audit_patient_no_update BEFORE UPDATE ON audit_patient
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_patient_no_delete BEFORE DELETE ON audit_patient
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
