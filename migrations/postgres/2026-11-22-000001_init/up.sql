CREATE TABLE resource (
    res_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    patient_key TEXT,
    writer_org TEXT NOT NULL,
    deleted BOOLEAN NOT NULL,
    last_updated BIGINT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (res_type, id)
);
CREATE INDEX resource_patient ON resource (patient_key, res_type);
CREATE INDEX resource_type_updated ON resource (res_type, last_updated, id);

CREATE TABLE resource_version (
    seq BIGSERIAL PRIMARY KEY,
    res_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    patient_key TEXT,
    writer_org TEXT NOT NULL,
    deleted BOOLEAN NOT NULL,
    last_updated BIGINT NOT NULL,
    method TEXT NOT NULL,
    content TEXT NOT NULL,
    UNIQUE (res_type, id, version_id)
);
CREATE INDEX resource_version_type_seq ON resource_version (res_type, seq);

CREATE TABLE search_token (
    res_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    system TEXT NOT NULL,
    code TEXT NOT NULL
);
CREATE INDEX search_token_value ON search_token (res_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (res_type, id);

CREATE TABLE search_string (
    res_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    value TEXT NOT NULL,
    raw TEXT NOT NULL
);
CREATE INDEX search_string_value ON search_string (res_type, param, value);
CREATE INDEX search_string_owner ON search_string (res_type, id);

CREATE TABLE search_date (
    res_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    low BIGINT NOT NULL,
    high BIGINT NOT NULL
);
CREATE INDEX search_date_value ON search_date (res_type, param, low, high);
CREATE INDEX search_date_owner ON search_date (res_type, id);

CREATE TABLE search_reference (
    res_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL
);
CREATE INDEX search_reference_value ON search_reference (res_type, param, target_id, target_type);
CREATE INDEX search_reference_owner ON search_reference (res_type, id);
CREATE INDEX search_reference_target ON search_reference (target_type, target_id);

CREATE TABLE search_quantity (
    res_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    system TEXT NOT NULL,
    code TEXT NOT NULL
);
CREATE INDEX search_quantity_value ON search_quantity (res_type, param, value);
CREATE INDEX search_quantity_owner ON search_quantity (res_type, id);

-- What the sharing rules need about each person, recomputed in the same transaction as any
-- write that changes it (Patient, Consent, CareTeam, or a new writing organisation).
CREATE TABLE patient_access (
    patient_key TEXT PRIMARY KEY,
    facts TEXT NOT NULL
);

-- Append-only: triggers below refuse UPDATE and DELETE.
CREATE TABLE audit_event (
    id TEXT PRIMARY KEY,
    recorded BIGINT NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT,
    org TEXT NOT NULL,
    role TEXT NOT NULL,
    purpose TEXT NOT NULL,
    outcome TEXT NOT NULL,
    break_glass BOOLEAN NOT NULL,
    content TEXT NOT NULL
);
CREATE INDEX audit_event_recorded ON audit_event (recorded);
CREATE INDEX audit_event_client ON audit_event (client_id, recorded);
CREATE INDEX audit_event_user ON audit_event (user_id, recorded);
CREATE INDEX audit_event_break_glass ON audit_event (break_glass, recorded);

CREATE TABLE audit_patient (
    audit_id TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    PRIMARY KEY (patient_key, recorded, audit_id)
);

CREATE TABLE client (
    client_id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    jwks TEXT,
    jwks_url TEXT,
    revoked BOOLEAN NOT NULL,
    created BIGINT NOT NULL
);

CREATE TABLE client_jti (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX client_jti_expires ON client_jti (expires);

CREATE TABLE server_key (
    kid TEXT PRIMARY KEY,
    private_pem TEXT NOT NULL,
    created BIGINT NOT NULL
);

CREATE FUNCTION audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_patient_append_only BEFORE UPDATE OR DELETE ON audit_patient
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();

-- Starts-with string search (LIKE 'abc%') uses an index whatever the database collation.
CREATE INDEX search_string_prefix ON search_string (res_type, param, value text_pattern_ops);
