-- The per-patient index of the audit trail (audit_patient) is ordered by patient, so each link
-- inserted on its own lands on a random page. Links are first appended here, in arrival order,
-- and moved into audit_patient in large sorted merges. Searches by patient read both tables.
CREATE TABLE audit_patient_recent (
    seq BIGSERIAL PRIMARY KEY,
    audit_id TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    recorded BIGINT NOT NULL
);
CREATE TRIGGER audit_patient_recent_no_update BEFORE UPDATE ON audit_patient_recent
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
-- A link leaves this table only once it is in audit_patient: checked once per DELETE statement
-- over all the rows it removed (a merge removes thousands).
CREATE FUNCTION audit_patient_recent_moved_only() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM gone g WHERE NOT EXISTS (
        SELECT 1 FROM audit_patient a
        WHERE a.patient_key = g.patient_key AND a.recorded = g.recorded
          AND a.audit_id = g.audit_id)) THEN
        RAISE EXCEPTION 'the audit trail is append-only';
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_patient_recent_moved_only AFTER DELETE ON audit_patient_recent
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION audit_patient_recent_moved_only();
