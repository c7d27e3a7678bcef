-- The per-patient index of the audit trail (audit_patient) is ordered by patient, so each link
-- inserted on its own lands on a random page. Links are first appended here, in arrival order,
-- and moved into audit_patient in large sorted merges. Searches by patient read both tables.
CREATE TABLE audit_patient_recent (
    seq BIGSERIAL PRIMARY KEY,
    audit_id TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    recorded BIGINT NOT NULL
);
-- A link leaves this table only once it is in audit_patient; it is never changed.
CREATE FUNCTION audit_patient_recent_moved_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' OR NOT EXISTS (
        SELECT 1 FROM audit_patient
        WHERE patient_key = OLD.patient_key AND recorded = OLD.recorded
          AND audit_id = OLD.audit_id) THEN
        RAISE EXCEPTION 'the audit trail is append-only';
    END IF;
    RETURN OLD;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_patient_recent_append_only BEFORE UPDATE OR DELETE ON audit_patient_recent
    FOR EACH ROW EXECUTE FUNCTION audit_patient_recent_moved_only();
