-- Counts the updates of each client, so that an update applies only to the version it
-- read and two concurrent updates cannot overwrite each other's fields.
ALTER TABLE oauth_clients ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
