-- Each user's live state (the modseqs web clients see), written behind the in-memory hub so
-- that event ids never go back across a restart. Values only ever rise.
CREATE TABLE user_states (
    user_id    TEXT   PRIMARY KEY,
    mail       BIGINT NOT NULL DEFAULT 0,
    calendar   BIGINT NOT NULL DEFAULT 0,
    contacts   BIGINT NOT NULL DEFAULT 0,
    delivered  BIGINT NOT NULL DEFAULT 0,
    -- The account's JMAP id scheme: 0 not known yet, 1 legacy, 2 compact.
    id_scheme  SMALLINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
