-- Devices registered for push, one row per platform token.
CREATE TABLE devices (
    id            BIGSERIAL PRIMARY KEY,
    user_id       TEXT   NOT NULL,
    platform      TEXT   NOT NULL CHECK (platform IN ('apns', 'fcm')),
    token         TEXT   NOT NULL,
    app           TEXT   NOT NULL,
    environment   TEXT   NOT NULL CHECK (environment IN ('production', 'sandbox')),
    created_at    BIGINT NOT NULL,
    registered_at BIGINT NOT NULL,
    UNIQUE (platform, token)
);
CREATE INDEX devices_by_user ON devices (user_id);

-- Why a device went away (provider said the token is dead, or the user deleted it).
CREATE TABLE device_removals (
    id          BIGSERIAL PRIMARY KEY,
    device_id   BIGINT NOT NULL,
    user_id     TEXT   NOT NULL,
    platform    TEXT   NOT NULL,
    token       TEXT   NOT NULL,
    reason      TEXT   NOT NULL,
    removed_at  BIGINT NOT NULL
);
