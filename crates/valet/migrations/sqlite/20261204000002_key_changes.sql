-- A log of every change that affects verification, filled by triggers, so that a server
-- sees changes made by other processes on the same file (such as `valet keys revoke`).
-- op is I (insert), U (update) or D (delete); changed_at is Unix microseconds.
CREATE TABLE key_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id     TEXT    NOT NULL,
    op         TEXT    NOT NULL CHECK (op IN ('I', 'U', 'D')),
    changed_at INTEGER NOT NULL
);

CREATE TRIGGER api_keys_change_insert AFTER INSERT ON api_keys
BEGIN
    INSERT INTO key_changes (key_id, op, changed_at)
    VALUES (NEW.id, 'I', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
END;

-- last_used_at is left out: it changes often and never affects verification.
CREATE TRIGGER api_keys_change_update
AFTER UPDATE OF key_hash, name, owner, scopes, env, metadata, expires_at, revoked_at, successor_id
ON api_keys
BEGIN
    INSERT INTO key_changes (key_id, op, changed_at)
    VALUES (NEW.id, 'U', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
END;

CREATE TRIGGER api_keys_change_delete AFTER DELETE ON api_keys
BEGIN
    INSERT INTO key_changes (key_id, op, changed_at)
    VALUES (OLD.id, 'D', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
END;
