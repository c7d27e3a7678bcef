DROP TABLE audit_patient_recent;
