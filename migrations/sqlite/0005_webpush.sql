-- Web Push subscriptions are devices too: the endpoint URL is the token, and the browser's
-- keys (`p256dh`, `auth`, base64url) and the payload format it asked for are kept with it.
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt.
CREATE TABLE devices_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT    NOT NULL,
    platform      TEXT    NOT NULL CHECK (platform IN ('apns', 'fcm', 'webpush')),
    token         TEXT    NOT NULL,
    app           TEXT    NOT NULL,
    environment   TEXT    NOT NULL CHECK (environment IN ('production', 'sandbox')),
    created_at    INTEGER NOT NULL,
    registered_at INTEGER NOT NULL,
    p256dh        TEXT,
    auth_secret   TEXT,
    format        TEXT    NOT NULL DEFAULT 'legacy' CHECK (format IN ('legacy', 'jmap')),
    UNIQUE (platform, token)
);
INSERT INTO devices_new (id, user_id, platform, token, app, environment, created_at, registered_at)
    SELECT id, user_id, platform, token, app, environment, created_at, registered_at FROM devices;
DROP TABLE devices;
ALTER TABLE devices_new RENAME TO devices;
CREATE INDEX devices_by_user ON devices (user_id);
