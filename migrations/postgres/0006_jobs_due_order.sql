-- Claims take the oldest due jobs in (run_at, id) order, and jobs queued together share their
-- run_at: with (state, run_at) alone, each claim read and sorted every due job (2.4 ms with
-- 5,000 queued). With the id in the index, a claim reads the few it takes, in order (0.4 ms).
-- SQLite needs no such change: its indexes end in the rowid, which is the id.
CREATE INDEX jobs_due_order ON jobs (state, run_at, id);
DROP INDEX jobs_due;
