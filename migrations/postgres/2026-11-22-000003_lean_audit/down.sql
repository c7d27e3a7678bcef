DROP INDEX audit_event_break_glass;
CREATE INDEX audit_event_break_glass ON audit_event (break_glass, recorded);
DROP INDEX audit_event_user;
CREATE INDEX audit_event_user ON audit_event (user_id, recorded);
