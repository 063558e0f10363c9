-- A change to a client reaches other processes through key_changes, marked by `c:`, so
-- their client caches drop it.
CREATE TRIGGER oauth_clients_change_update AFTER UPDATE ON oauth_clients
BEGIN
    INSERT INTO key_changes (key_id, op, changed_at)
    VALUES ('c:' || NEW.id, 'U', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
END;

CREATE TRIGGER oauth_clients_change_delete AFTER DELETE ON oauth_clients
BEGIN
    INSERT INTO key_changes (key_id, op, changed_at)
    VALUES ('c:' || OLD.id, 'D', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
END;
