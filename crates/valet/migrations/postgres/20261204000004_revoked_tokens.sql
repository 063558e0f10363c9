-- Access tokens revoked before they expire, by token id (jti). A row can be deleted once
-- expires_at has passed, because the token is then rejected anyway.
CREATE TABLE revoked_tokens (
    jti        TEXT        PRIMARY KEY,
    client_id  TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ NOT NULL
);

-- A revocation reaches every node on the key change channel with op T:
-- "T <schema> <jti> <unix microseconds>".
CREATE FUNCTION valet_notify_token_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'valet_key_changes',
        'T ' || TG_TABLE_SCHEMA || ' ' || NEW.jti || ' ' ||
            (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER revoked_tokens_notify_insert
    AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION valet_notify_token_revoked();
