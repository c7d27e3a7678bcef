-- The per-patient index of the audit trail (audit_patient) is ordered by patient, so each link
-- inserted on its own lands on a random page: measured, about a third of the cost of a read's
-- audit record and most of the disk writes under load. Links are first appended here, in
-- arrival order, and moved into audit_patient in large sorted merges (one page per patient
-- touched, not one per link). Searches by patient read both tables.
CREATE TABLE audit_patient_recent (
    seq INTEGER PRIMARY KEY,
    audit_id TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    recorded BIGINT NOT NULL
);
CREATE TRIGGER audit_patient_recent_no_update BEFORE UPDATE ON audit_patient_recent
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
-- A link leaves this table only once it is in audit_patient.
CREATE TRIGGER audit_patient_recent_moved_only BEFORE DELETE ON audit_patient_recent
WHEN NOT EXISTS (SELECT 1 FROM audit_patient
                 WHERE patient_key = OLD.patient_key AND recorded = OLD.recorded
                   AND audit_id = OLD.audit_id)
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
