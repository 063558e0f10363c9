-- OAuth 2.0 clients. A client's secrets are API keys whose client_id names it.
CREATE TABLE oauth_clients (
    seq                    BIGSERIAL   PRIMARY KEY,
    id                     TEXT        NOT NULL UNIQUE,
    name                   TEXT        NOT NULL,
    owner                  TEXT,
    scopes                 TEXT[]      NOT NULL,
    audiences              TEXT[]      NOT NULL,
    default_audience       TEXT,
    token_lifetime_seconds INTEGER     NOT NULL CHECK (token_lifetime_seconds > 0),
    created_at             TIMESTAMPTZ NOT NULL
);

ALTER TABLE api_keys ADD COLUMN client_id TEXT REFERENCES oauth_clients (id) ON DELETE SET NULL;
CREATE INDEX api_keys_client_id ON api_keys (client_id);

-- Keys that sign access tokens. private_key is PKCS#8 DER and never leaves the server.
CREATE TABLE signing_keys (
    kid         TEXT        PRIMARY KEY,
    algorithm   TEXT        NOT NULL CHECK (algorithm IN ('ES256', 'EdDSA')),
    private_key BYTEA       NOT NULL,
    public_jwk  JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    signs_from  TIMESTAMPTZ NOT NULL,
    retired_at  TIMESTAMPTZ
);
