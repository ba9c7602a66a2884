-- Devices registered for push, one row per platform token.
CREATE TABLE devices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT    NOT NULL,
    platform      TEXT    NOT NULL CHECK (platform IN ('apns', 'fcm')),
    token         TEXT    NOT NULL,
    app           TEXT    NOT NULL,
    environment   TEXT    NOT NULL CHECK (environment IN ('production', 'sandbox')),
    created_at    INTEGER NOT NULL,
    registered_at INTEGER NOT NULL,
    UNIQUE (platform, token)
);
CREATE INDEX devices_by_user ON devices (user_id);

-- Why a device went away (provider said the token is dead, or the user deleted it).
CREATE TABLE device_removals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   INTEGER NOT NULL,
    user_id     TEXT    NOT NULL,
    platform    TEXT    NOT NULL,
    token       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    removed_at  INTEGER NOT NULL
);
