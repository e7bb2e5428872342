-- Jobs get their state as a column, indexed, so that the running ones and a page of one state
-- are found without reading every body.
ALTER TABLE jobs ADD COLUMN state TEXT NOT NULL DEFAULT '';
UPDATE jobs SET state = coalesce(json_extract(body, '$.state'), '') WHERE json_valid(body);
CREATE INDEX jobs_by_state ON jobs (state, id);
