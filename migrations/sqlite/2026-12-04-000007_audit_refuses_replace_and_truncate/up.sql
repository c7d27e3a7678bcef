-- INSERT OR REPLACE (REPLACE INTO, or an OR REPLACE conflict clause) removes the row it replaces
-- without running its DELETE triggers (unless recursive_triggers is on, which whoever tampers
-- need not set), so the append-only triggers never saw it: a record could be overwritten. Refuse
-- any insert whose key is already in the trail, before conflict resolution runs. The check is a
-- probe of the key's index, whose pages the insert itself reads.
CREATE TRIGGER audit_event_no_replace BEFORE INSERT ON audit_event
WHEN EXISTS (SELECT 1 FROM audit_event WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
-- Links waiting to be merged are keyed by their sequence number, which inserts never give.
CREATE TRIGGER audit_patient_recent_no_replace BEFORE INSERT ON audit_patient_recent
WHEN NEW.seq IS NOT NULL AND EXISTS (SELECT 1 FROM audit_patient_recent WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
-- audit_patient needs none: every column is its key, so a replacement is the same row (and the
-- merge relies on ON CONFLICT DO NOTHING there).
