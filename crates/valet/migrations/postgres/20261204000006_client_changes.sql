-- A change to a client reaches every node on the key change channel with op C:
-- "C <schema> <client id> <unix microseconds>", so their client caches drop it.
CREATE FUNCTION valet_notify_client_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'valet_key_changes',
        'C ' || TG_TABLE_SCHEMA || ' ' || OLD.id || ' ' ||
            (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER oauth_clients_notify_change
    AFTER UPDATE OR DELETE ON oauth_clients
    FOR EACH ROW EXECUTE FUNCTION valet_notify_client_change();
