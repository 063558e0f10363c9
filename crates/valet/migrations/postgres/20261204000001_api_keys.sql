-- API keys. Only the SHA-256 of each key string is stored, never the key or its secret.
CREATE TABLE api_keys (
    seq          BIGSERIAL   PRIMARY KEY,
    id           TEXT        NOT NULL UNIQUE,
    key_hash     BYTEA       NOT NULL CHECK (octet_length(key_hash) = 32),
    name         TEXT        NOT NULL,
    owner        TEXT,
    scopes       TEXT[]      NOT NULL,
    env          TEXT        NOT NULL CHECK (env IN ('live', 'test')),
    metadata     JSONB       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    successor_id TEXT        UNIQUE REFERENCES api_keys (id)
);

CREATE INDEX api_keys_owner_seq ON api_keys (owner, seq);

-- Every change that affects verification is broadcast to all nodes on the channel
-- `valet_key_changes`. The payload is "<op> <schema> <id> <unix microseconds>", where op is
-- I (insert), U (update) or D (delete). NOTIFY is delivered only when the transaction
-- commits, so nodes never see a change that was rolled back.
CREATE FUNCTION valet_notify_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed_id TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed_id := OLD.id;
    ELSE
        changed_id := NEW.id;
    END IF;
    PERFORM pg_notify(
        'valet_key_changes',
        left(TG_OP, 1) || ' ' || TG_TABLE_SCHEMA || ' ' || changed_id || ' ' ||
            (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_notify_insert
    AFTER INSERT ON api_keys
    FOR EACH ROW EXECUTE FUNCTION valet_notify_key_change();

-- last_used_at is left out: it changes often and never affects verification.
CREATE TRIGGER api_keys_notify_update
    AFTER UPDATE OF key_hash, name, owner, scopes, env, metadata, expires_at, revoked_at, successor_id
    ON api_keys
    FOR EACH ROW EXECUTE FUNCTION valet_notify_key_change();

CREATE TRIGGER api_keys_notify_delete
    AFTER DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION valet_notify_key_change();
