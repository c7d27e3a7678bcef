ALTER TABLE audit_event
    ALTER COLUMN id TYPE TEXT COLLATE "default",
    ALTER COLUMN client_id TYPE TEXT COLLATE "default",
    ALTER COLUMN user_id TYPE TEXT COLLATE "default";
ALTER TABLE audit_patient
    ALTER COLUMN audit_id TYPE TEXT COLLATE "default",
    ALTER COLUMN patient_key TYPE TEXT COLLATE "default";
ALTER TABLE audit_patient_recent
    ALTER COLUMN audit_id TYPE TEXT COLLATE "default",
    ALTER COLUMN patient_key TYPE TEXT COLLATE "default";
