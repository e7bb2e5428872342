-- Events and jobs get the columns they are found and pruned by, indexed, filled from the
-- bodies already stored. Times are nanoseconds since the Unix epoch; severity is 0 (info),
-- 1 (warning) or 2 (critical).
ALTER TABLE events ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN severity INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN time INTEGER NOT NULL DEFAULT 0;
UPDATE events SET
    target = coalesce(json_extract(body, '$.target'), ''),
    kind = coalesce(json_extract(body, '$.kind'), ''),
    severity = CASE json_extract(body, '$.severity')
        WHEN 'critical' THEN 2 WHEN 'warning' THEN 1 ELSE 0 END,
    time = coalesce(CAST(unixepoch(json_extract(body, '$.time'), 'subsec') * 1000 AS INTEGER), 0)
        * 1000000
WHERE json_valid(body);
CREATE INDEX events_by_target ON events (target, id);
CREATE INDEX events_by_kind ON events (kind, id);
CREATE INDEX events_by_time ON events (time);

ALTER TABLE jobs ADD COLUMN ended INTEGER;
UPDATE jobs SET ended = CAST(unixepoch(json_extract(body, '$.updated'), 'subsec') * 1000 AS INTEGER)
    * 1000000
WHERE json_valid(body) AND json_extract(body, '$.state') IN ('succeeded', 'failed');
CREATE INDEX jobs_by_end ON jobs (ended) WHERE ended IS NOT NULL;
