DROP TABLE audit_patient_recent;
DROP FUNCTION audit_patient_recent_moved_only();
