-- API keys. Only the SHA-256 of each key string is stored, never the key or its secret.
-- Timestamps are whole microseconds since the Unix epoch, UTC.
CREATE TABLE api_keys (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    key_hash     BLOB    NOT NULL CHECK (length(key_hash) = 32),
    name         TEXT    NOT NULL,
    owner        TEXT,
    scopes       TEXT    NOT NULL,
    env          TEXT    NOT NULL CHECK (env IN ('live', 'test')),
    metadata     TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    successor_id TEXT    UNIQUE REFERENCES api_keys (id)
);

CREATE INDEX api_keys_owner_seq ON api_keys (owner, seq);
