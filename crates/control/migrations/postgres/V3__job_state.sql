-- The same step as migrations/sqlite/V3__job_state.sql.
ALTER TABLE jobs ADD COLUMN state TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_by_state ON jobs (state, id);
