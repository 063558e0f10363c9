-- Access tokens revoked before they expire, by token id (jti). A row can be deleted once
-- expires_at has passed, because the token is then rejected anyway.
CREATE TABLE revoked_tokens (
    jti        TEXT    PRIMARY KEY,
    client_id  TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
);

-- A revocation reaches other processes through key_changes, marked by the `t:` prefix.
CREATE TRIGGER revoked_tokens_change_insert AFTER INSERT ON revoked_tokens
BEGIN
    INSERT INTO key_changes (key_id, op, changed_at)
    VALUES ('t:' || NEW.jti, 'I', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
END;
