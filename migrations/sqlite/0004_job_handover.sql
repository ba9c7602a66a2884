-- The delivery journal in the database, for nodes that share it: the attempt whose message
-- was about to be committed at the relay (its final `.`). A job whose lease ran out in that
-- attempt reached the relay before its node died, and is marked done, not sent again.
ALTER TABLE jobs ADD COLUMN sent_attempt BIGINT;
