-- Every request appends an audit record on the commit path, so each index on the trail is paid
-- for on every request. Break-glass events are rare: index only those. System calls carry no
-- user: index only records that name one.
DROP INDEX audit_event_break_glass;
CREATE INDEX audit_event_break_glass ON audit_event (recorded) WHERE break_glass;
DROP INDEX audit_event_user;
CREATE INDEX audit_event_user ON audit_event (user_id, recorded) WHERE user_id IS NOT NULL;
