-- What notifyd needed from the central database: language, SMS number and credit per user.
CREATE TABLE users (
    user_id    TEXT    PRIMARY KEY,
    language   TEXT    NOT NULL DEFAULT 'en',
    sms_number TEXT,
    sms_credit BIGINT  NOT NULL DEFAULT 0 CHECK (sms_credit >= 0)
);

-- The durable queue of the blocking path. Times are milliseconds since the Unix epoch.
CREATE TABLE jobs (
    id              BIGSERIAL PRIMARY KEY,
    user_id         TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'dead')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    run_at          BIGINT  NOT NULL,
    lease_until     BIGINT,
    last_error      TEXT,
    idempotency_key TEXT    NOT NULL UNIQUE,
    sms_charged     BIGINT  NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL,
    finished_at     BIGINT
);
CREATE INDEX jobs_due ON jobs (state, run_at);
