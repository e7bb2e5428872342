-- The schema as it was before migrations were versioned: a database of that time already has
-- it, and takes this step as done.
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rpo_history (
    item TEXT NOT NULL,
    time INTEGER NOT NULL,
    rpo REAL,
    PRIMARY KEY (item, time)
);
CREATE TABLE IF NOT EXISTS orphans (name TEXT PRIMARY KEY, first_seen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS join_tokens (
    hash TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    used_by TEXT,
    used_at INTEGER
);
CREATE TABLE IF NOT EXISTS agents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    version TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    joined_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS agents_active_name ON agents (name) WHERE revoked_at IS NULL;
