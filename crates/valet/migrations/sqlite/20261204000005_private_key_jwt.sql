-- Public keys of clients that authenticate with private_key_jwt (RFC 7523), as a JWK set.
ALTER TABLE oauth_clients ADD COLUMN jwks TEXT;

-- Client assertion ids already used, kept until the assertion expires, so none is
-- accepted twice.
CREATE TABLE used_assertions (
    client_id  TEXT    NOT NULL,
    jti        TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);
