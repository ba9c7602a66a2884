-- Web Push subscriptions are devices too: the endpoint URL is the token, and the browser's
-- keys (`p256dh`, `auth`, base64url) and the payload format it asked for are kept with it.
ALTER TABLE devices DROP CONSTRAINT devices_platform_check;
ALTER TABLE devices ADD CONSTRAINT devices_platform_check
    CHECK (platform IN ('apns', 'fcm', 'webpush'));
ALTER TABLE devices ADD COLUMN p256dh TEXT;
ALTER TABLE devices ADD COLUMN auth_secret TEXT;
ALTER TABLE devices ADD COLUMN format TEXT NOT NULL DEFAULT 'legacy'
    CHECK (format IN ('legacy', 'jmap'));
