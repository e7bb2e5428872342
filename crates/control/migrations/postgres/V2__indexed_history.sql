-- The same step as migrations/sqlite/V2__indexed_history.sql. A database made by this
-- version has no rows before it, so there is nothing to fill.
ALTER TABLE events ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN severity BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN time BIGINT NOT NULL DEFAULT 0;
CREATE INDEX events_by_target ON events (target, id);
CREATE INDEX events_by_kind ON events (kind, id);
CREATE INDEX events_by_time ON events (time);

ALTER TABLE jobs ADD COLUMN ended BIGINT;
CREATE INDEX jobs_by_end ON jobs (ended) WHERE ended IS NOT NULL;
