-- TRUNCATE runs no row triggers, so the append-only triggers never saw it: it emptied the trail.
-- A statement trigger refuses it on every audit table. (INSERT ... ON CONFLICT DO UPDATE is
-- already refused by the UPDATE triggers.) Operators also run the service as a role without
-- TRUNCATE, UPDATE or DELETE on these tables and that does not own them: see the README.
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_patient_no_truncate BEFORE TRUNCATE ON audit_patient
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_patient_recent_no_truncate BEFORE TRUNCATE ON audit_patient_recent
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
